"""Stage 7b: the field set: photos like the ones visitors will take, measured and never trained on.

A dataset's own test split is usually cut from the same source as its training images (for
butterflies50, web images cropped tight around the butterfly), which flatters a model. A field
set says how it does where it will be used:

    field_data/<folder>/*.jpg     a folder of class folders, e.g. leeds-field's images/
    field_map                     a JSON object: each folder's training class name, or null for
                                  a species the training data lacks (an *unknown* species)

Both settings or neither. They are checked before any work, in two places: the folders and the
file when the config loads (`check_settings`), and the class names once the dataset is scanned
(`read`), since only the scan knows the classes. Every problem is a `ConfigError` naming the
setting, the file and what is wrong.

What `compare` measures on it is what the app would answer (`answers`): each photo classified
whole and again at the crop around its evidence (`runtime.second_look`, the app's and `predict`'s
one implementation), logits averaged, the better look scored as the app scores it. From those answers
(`measure`): top-1 on the known species' photos; how the served unknown score tells the unknown
species' photos from the known ones (AUROC, FPR@95TPR); and at the model card's "not sure"
threshold, the share of known photos answered, the share of those answers that are right, and
the share of unknown photos answered "not sure". The field set never chooses anything:
thresholds and temperatures come from the training data alone.

TensorFlow-free (the model comes in as a callable): bench/field.py reads leeds-field through
`read` too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime import answer, second_look
from training.config import ConfigError
from training.folder import Sample, check_file, list_images

UNKNOWN = -1  # the label of a photo of a species the training data lacks
# What `Answers` hold and how they were scored: the answers a run keeps (`training.runner`) are named after
# it, so that a version that keeps or scores them otherwise measures them again. 2: photos scored on their
# better look (`runtime.answer.photo_score`), each pass's probabilities kept.
ANSWERS_FORMAT = 2


@dataclass(frozen=True)
class FieldSet:
    """The usable photos of a field set, labelled through its mapping (`UNKNOWN` for null)."""

    folder: Path
    mapping: dict[str, str | None]
    photos: list[Sample]
    skipped: list[str]  # "path: why", undecodable

    @property
    def labels(self) -> np.ndarray:
        return np.array([photo.label for photo in self.photos])

    def fingerprint(self) -> str:
        """A content hash of the photos, in order: what a backbone's cached field predictions are keyed by."""
        digest = hashlib.sha256()
        for photo in self.photos:
            digest.update(f"{photo.path.relative_to(self.folder)}/{photo.md5}\n".encode())
        return digest.hexdigest()[:16]

    def summary(self) -> str:
        """What the set holds, in a phrase: where, how many photos of known and of unknown species."""
        labels = self.labels
        known = sum(name is not None for name in self.mapping.values())
        return (f"{self.folder}: {int(np.sum(labels != UNKNOWN))} photos of {known} known species, "
                f"{int(np.sum(labels == UNKNOWN))} of {len(self.mapping) - known} unknown ones")

    def report(self) -> str:
        """For the run's log: the summary and the files skipped."""
        return "\n".join([f"Field set {self.summary()} (measured, never trained on)",
                          *(f"  skipped (cannot decode): {problem}" for problem in self.skipped)])


def read_mapping(field_map: str | Path) -> dict[str, str | None]:
    """The mapping file: a JSON object of folder names to class names or null."""
    try:
        mapping = json.loads(Path(field_map).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"field_map {field_map}: cannot read it ({error.strerror})", "field_map") from None
    except ValueError as error:
        raise ConfigError(f"field_map {field_map}: not valid JSON ({error})", "field_map") from None
    if not isinstance(mapping, dict) or not all(isinstance(v, str | None) for v in mapping.values()):
        raise ConfigError(f"field_map {field_map}: expected a JSON object mapping each folder of field_data to a "
                          'training class name, or to null for a species the model does not know, e.g. {"001_x": "MONARCH"}',
                          "field_map")
    return mapping


def check_folders(field_data: str | Path, field_map: str | Path, mapping: dict[str, str | None]) -> None:
    """Refuse a field_data that is no folder, and a mapping that names a folder field_data lacks,
    leaves one of its folders out (its photos would silently go unmeasured), or names no known
    species (no top-1 to measure)."""
    if not Path(field_data).is_dir():
        raise ConfigError(f"field_data {field_data}: no such folder", "field_data")
    folders = sorted(p.name for p in Path(field_data).iterdir() if p.is_dir() and not p.name.startswith("."))
    if missing := sorted(set(mapping) - set(folders)):
        raise ConfigError(f"field_map {field_map}: names folder(s) {', '.join(map(repr, missing))} that "
                          f"{field_data} does not have", "field_map")
    if unmapped := sorted(set(folders) - set(mapping)):
        raise ConfigError(f"field_map {field_map}: does not map folder(s) {', '.join(map(repr, unmapped))} of "
                          f"{field_data} (map each to a class, or to null for a species the model does not know)", "field_map")
    if all(name is None for name in mapping.values()):
        raise ConfigError(f"field_map {field_map}: maps no folder to a training class; field top-1 needs at least "
                          "one known species", "field_map")


def check_classes(field_map: str | Path, mapping: dict[str, str | None], classes: list[str]) -> None:
    """Refuse a mapping to a class the training data does not have (a typo would read as unknown)."""
    for folder, name in sorted(mapping.items()):
        if name is not None and name not in classes:
            raise ConfigError(f"field_map {field_map}: {folder} maps to {name!r}, which is not a class of the training "
                              "data", "field_map")


def check_settings(field_data: str | None, field_map: str | None) -> None:
    """Everything about a field set that does not need the dataset's classes (`load_config`)."""
    if (field_data is None) != (field_map is None):
        given, missing = ("field_data", "field_map") if field_map is None else ("field_map", "field_data")
        raise ConfigError(f"{given} needs {missing}: a field set is a folder of class folders (--field-data) "
                          "and a JSON file mapping each to a training class or null (--field-map)", missing)
    if field_data is not None:
        check_folders(field_data, field_map, read_mapping(field_map))


def read(field_data: str | Path, field_map: str | Path, classes: list[str]) -> FieldSet:
    """The field set's photos, labelled by `classes` (the training data's), each file decoded once to
    check it (as `training.folder.scan` does): undecodable ones are skipped and named."""
    mapping = read_mapping(field_map)
    check_classes(field_map, mapping, classes)
    check_folders(field_data, field_map, mapping)
    listed = list_images(Path(field_data), [])
    paths = [path for folder in sorted(mapping) for path in listed[folder]]
    with ThreadPoolExecutor() as pool:
        checked = dict(zip(paths, pool.map(check_file, paths)))
    photos, skipped = [], []
    for folder, name in sorted(mapping.items()):
        label = UNKNOWN if name is None else classes.index(name)
        usable = [path for path in listed[folder] if not checked[path][1]]
        skipped += [checked[path][1] for path in listed[folder] if checked[path][1]]
        if not usable:
            raise ConfigError(f"field_data {field_data}: folder {folder!r} has no usable image", "field_data")
        photos += [Sample(path, label, checked[path][0]) for path in usable]
    return FieldSet(Path(field_data), mapping, photos, skipped)


@dataclass(frozen=True)
class Answers:
    """A model's answers to a field set's photos, as the app gives them (`answers`). Probabilities
    are untempered: an ensemble averages its members' before its own temperature."""

    probabilities: np.ndarray  # (photos, classes): softmax of the passes' averaged logits, what the app shows
    looks: np.ndarray  # (photos, 2, classes): softmax of each pass's logits, the whole photo's then the crop's
    scores: np.ndarray | None  # (photos,): the served unknown score of each photo's better look; None without a card


def answers(looks: Iterable[second_look.Look], unknown: dict | None = None, bank: np.ndarray | None = None) -> Answers:
    """The answers the app would give the field photos seen in `looks` (each decoded as the app
    decodes an upload and looked at twice, `second_look`): probabilities of the passes' averaged
    logits (`answer.logits`), of each pass (a photo whose crop was not taken: the whole photo's
    twice) and, given the card's `unknown` settings (and `bank`, if its score needs one), the
    unknown score of each photo's better look (`answer.photo_score`)."""
    probabilities, passes, scores = [], [], []
    for look in looks:
        probabilities.append(answer.softmax(answer.logits(*look.passes)))
        passes.append([answer.softmax(answer.logits(look.full)), answer.softmax(answer.logits(look.passes[-1]))])
        if unknown is not None:
            scores.append(answer.photo_score(look.passes, unknown, bank))
    return Answers(np.array(probabilities, dtype=np.float32), np.array(passes, dtype=np.float32),
                   np.array(scores) if unknown is not None else None)


def at_threshold(answered: np.ndarray, right: np.ndarray, known: np.ndarray) -> dict[str, float | None]:
    """What visitors would see, per photo `answered` (score at or above the threshold), `right`
    (top class is the photo's) and `known` (a species the model has): the share of known photos
    answered, of those answers right (None when none is), and of unknown photos answered "not
    sure" (None without unknown photos)."""
    answered_known = answered & known
    return {"field_answered": float(np.mean(answered[known])),
            "field_right": float(np.mean(right[answered_known])) if answered_known.any() else None,
            "field_not_sure": float(np.mean(~answered[~known])) if (~known).any() else None}


def measure(field_set: FieldSet, probabilities: np.ndarray, scores: np.ndarray | None,
            threshold: float | None = None) -> dict[str, float | None]:
    """Field top-1 on the known species' photos; given `scores` (the served unknown score of every
    photo, higher meaning known), how well the unknown species' photos are told apart from the
    known ones (AUROC, the share of them answered when 95% of known ones are); given the card's
    `threshold` too, what a visitor would see (`at_threshold`). None where the set or the run
    cannot say."""
    from training import unknown  # scikit-learn: only to measure, not to check options

    labels = field_set.labels
    known = labels != UNKNOWN
    right = probabilities.argmax(axis=1) == labels
    columns = {"field_top1": float(np.mean(right[known])), "field_unknown_auroc": None, "field_unknown_fpr95": None,
               **(dict.fromkeys(("field_answered", "field_right", "field_not_sure")) if scores is None or threshold is None
                  else at_threshold(scores >= threshold, right, known))}
    if scores is None or known.all():
        return columns
    return {**columns, "field_unknown_auroc": unknown.auroc(scores[known], scores[~known]),
            "field_unknown_fpr95": unknown.fpr_at_tpr(scores[known], scores[~known])}
