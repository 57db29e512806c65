"""Stage 8a: the ensemble row: the compared backbones' probabilities averaged, measured like one backbone.

Backbones trained on the same data still err on different images, so the average of their
probabilities can beat each of them; the comparison table says whether it does, and at what
cost. The row is computed from what every member kept, without running a model again:

- test: the members' test probabilities (`TEST_PREDICTIONS`, written by the evaluate step),
  averaged: top-1, top-5 and macro-F1;
- calibration: a temperature fitted on the members' averaged validation probabilities (from the
  validation logits of their trust step, `trust.Predictions`), as `training.calibration` fits one
  for a single model: ECE of the test split before and after it;
- held-out species: in each leave-species-out fold, the fold heads' probabilities averaged over
  members (the folds hold out the same species for every backbone of a run: they share the seed),
  calibrated on the fold's known images and scored by calibrated max-softmax (a backbone serves
  max-softmax+kNN, but the members' features live in different spaces): AUROC and FPR@95TPR,
  averaged over the folds, and a "not sure" threshold, the median over folds of the one
  answering 95% of the fold's known images;
- field set: the members' answers to the field photos averaged (each member with its own second
  look, as the app answers); the unknown score is the ensemble's calibrated max-softmax of the
  better look, as a backbone's is of its better look (`runtime.answer.photo_score`): the members'
  whole-photo probabilities averaged, and their crops' averaged, whichever scores higher; at the
  ensemble's threshold;
- cost: parameters, size, training times and latency are the members' sums: on a CPU the members
  run one after the other. Members trained at different image sizes each see their own size.

The ensemble is never the best row: export needs a single model. A member without the files above
(trained by an older version) leaves the ensemble out, with a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training import calibration, field, trust, unknown
from training.evaluate import TEST_PREDICTIONS, metrics
from training.folder import ImageFolder
from training.report import FIELD_COLUMNS

SUMMED = ("params_total", "params_trainable", "size_mb", "phase1_s", "phase2_s", "train_s", "latency_ms")


@dataclass(frozen=True)
class Member:
    """One compared backbone: its table row and what it predicted."""

    row: dict
    test: np.ndarray  # test probabilities
    predictions: trust.Predictions  # validation and fold logits
    field_answers: field.Answers | None  # with a field set


def members(run_dir: Path, rows: list[dict], field_answers: dict[str, field.Answers]) -> list[Member] | None:
    """The members of the run's ensemble, or None (and a note why) when there is none to make:
    fewer than two backbones, or one trained before its predictions were kept."""
    if len(rows) < 2:
        return None
    folders = [run_dir / row["backbone"] for row in rows]
    missing = [str(folder / name) for folder in folders for name in (TEST_PREDICTIONS, trust.PREDICTIONS_FILE)
               if not (folder / name).is_file()]
    if missing:
        print(f"\nNo ensemble row: {', '.join(missing)} missing (trained by an older version; delete the folder "
              "and run again to retrain it)")
        return None
    found = []
    for row, folder in zip(rows, folders):
        with np.load(folder / TEST_PREDICTIONS) as saved:
            test = saved["probabilities"]
        found.append(Member(row, test, trust.Predictions.read(folder / trust.PREDICTIONS_FILE),
                            field_answers.get(row["backbone"])))
    return found


def ensemble_row(members: list[Member], dataset: ImageFolder, field_set: field.FieldSet | None) -> dict:
    """The ensemble's row of the comparison table: the columns of a backbone's (see the module doc)."""
    test_labels, valid_labels = (np.array([sample.label for sample in dataset.splits[s]]) for s in ("test", "valid"))
    test = np.mean([member.test for member in members], axis=0)
    valid = np.mean([calibration.scaled_probabilities(m.predictions.valid_logits) for m in members], axis=0)
    temperature = calibration.fit_temperature(trust.log_probabilities(valid), valid_labels)
    scores = metrics(test_labels, test, dataset.classes)
    rows = [member.row for member in members]
    species_out, threshold = held_out_species(members)
    return {
        "backbone": "ensemble of " + " + ".join(row["backbone"] for row in rows), "ensemble": True,
        "top1": scores["top1"], "top5": scores["top5"], "macro_f1": scores["macro_f1"],
        **trust.calibration_on_test(test, test_labels, temperature),
        **species_out,
        **field_columns(members, field_set, temperature, threshold),
        **{key: sum(row[key] for row in rows) for key in SUMMED},
        "stand_in_weights": any(row["stand_in_weights"] for row in rows),
    }


def held_out_species(members: list[Member]) -> tuple[dict[str, float | None], float | None]:
    """AUROC and FPR@95TPR of the ensemble's served score on held-out species, averaged over the
    folds, and its "not sure" threshold, the median over folds of the one answering 95% of the
    fold's known images, as `unknown.summarise` does for one backbone; None below three classes
    (no folds)."""
    measured = []
    for fold in zip(*(member.predictions.folds for member in members)):  # one `FoldLogits` per member
        probabilities = np.mean([calibration.scaled_probabilities(member.logits) for member in fold], axis=0)
        labels = fold[0].known_labels
        known = len(labels)
        temperature = calibration.fit_temperature(trust.log_probabilities(probabilities[:known]), labels)
        scores = trust.max_softmax(probabilities, temperature)
        measured.append((unknown.auroc(scores[:known], scores[known:]), unknown.fpr_at_tpr(scores[:known], scores[known:]),
                         unknown.threshold_at_tpr(scores[:known])))
    if not measured:
        return {"unknown_auroc": None, "unknown_fpr95": None}, None
    auroc, fpr95, _ = np.mean(measured, axis=0)
    return ({"unknown_auroc": float(auroc), "unknown_fpr95": float(fpr95)},
            float(np.median([threshold for *_, threshold in measured])))


def field_columns(members: list[Member], field_set: field.FieldSet | None, temperature: float,
                  threshold: float | None) -> dict[str, float | None]:
    """The field columns of the members' averaged field answers (None without a field set)."""
    if field_set is None:
        return dict.fromkeys(FIELD_COLUMNS)
    probabilities = np.mean([member.field_answers.probabilities for member in members], axis=0)
    looks = np.mean([member.field_answers.looks for member in members], axis=0)  # (photos, passes, classes)
    scores = trust.max_softmax(looks.reshape(-1, looks.shape[-1]), temperature).reshape(looks.shape[:2]).max(axis=1)
    return field.measure(field_set, probabilities, scores, threshold)
