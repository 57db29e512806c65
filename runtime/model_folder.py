"""The model folder: what `python -m training export` writes and the app serves, stated once.

    <model folder>/
        model.tflite      one float32 input [1, H, W, 3] of raw RGB values 0..255 (the preprocessing
                          is inside the model) and outputs found by name: `probabilities` [1, N],
                          `class_maps` [1, h, w, N], the classifier head applied at every location
                          of the feature map (class activation maps), and `features` [1, C], the
                          pooled features the head reads (needed by a card whose unknown score
                          reads the feature bank)
        labels.json       the N class names, in output order
        feature_bank.npy  for such a card: (n, C) unit-length training features, float16, that
                          the unknown score compares a photo's features with (`runtime.answer.knn`)
        model_card.json   how the model was made and how well it did on the test split (`ModelCard`)
        metrics.json      optional: the training run's metrics.json of this backbone, whose "test"
                          entry holds per-class precision, recall and support (`per_class`)
        confusion_matrix.csv  optional: the test split's confusion matrix as training writes it
                          (first column "true \\ predicted", then one column per class)

A *model root* holds model folders (the root itself and/or its direct subfolders) and `samples/`,
photos named after their true class for the app's sample picker.

The exporter builds the card with `ModelCard` and writes the files under these names; the app
opens a folder with `load`, which refuses files that disagree with each other at load time
rather than on the first visitor. A training backbone folder (`model.keras` beside labels.json)
keeps its class names in the same labels file: `read_labels` reads both.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.answer import NEEDS_BANK, SCORES
from runtime.litert import LiteRTModel, ModelError

MODEL_FILE = "model.tflite"
LABELS_FILE = "labels.json"
CARD_FILE = "model_card.json"
METRICS_FILE = "metrics.json"  # optional, for the app's About page
CONFUSION_FILE = "confusion_matrix.csv"  # optional, for the app's About page
SAMPLES_FOLDER = "samples"
BANK_FILE = "feature_bank.npy"
OUTPUTS = ("probabilities", "class_maps")  # the output names of model.tflite's signature that every card needs...
FEATURES = "features"  # ...and the one a card needs whose unknown score reads the feature bank


@dataclass(frozen=True)
class ModelCard:
    """The keys of model_card.json that the app relies on (`CARD_KEYS`).

    The exporter writes where the model came from beside them (`to_json(**provenance)`: test
    images, dataset fingerprint, file size, source folder, versions, date), for people to read.
    """

    backbone: str  # the backbone's id, e.g. "mobilenetv2_0.35"
    input_size: list[int]  # [height, width] of the model's input
    classes: list[str]  # the class names in output order: the same list as labels.json
    quantization: str  # how the weights are stored: "float32", "float16" or "int8"
    metrics: dict[str, float]  # top1, top5 and macro_f1 of the Keras model on the test split
    litert_metrics: dict[str, float]  # the same, measured with this model.tflite on the same images
    # When to answer "not sure" (`runtime.answer`): {"score": one of answer.SCORES, "temperature": T
    # fitted on the validation split, "threshold": t chosen on species held out of training, and
    # for a score that reads the feature bank "k" and "ranks"}; the answer names a class only when
    # the photo's score reaches t.
    unknown: dict[str, Any]
    subject: str  # what the classes are, for the app's texts: e.g. "butterfly species"

    def to_json(self, **provenance: Any) -> dict[str, Any]:
        """The card as model_card.json holds it: one flat object, these keys first."""
        return {**dataclasses.asdict(self), **provenance}


CARD_KEYS = tuple(field.name for field in dataclasses.fields(ModelCard))


@dataclass(frozen=True)
class ModelFolder:
    """A model folder whose files were read and found to agree with each other."""

    labels: list[str]
    card: dict[str, Any]  # all of model_card.json, provenance included
    model: LiteRTModel
    bank: np.ndarray | None  # the feature bank as float32 unit rows, for a card whose score needs it


def load(folder: Path, num_threads: int | None = 2) -> ModelFolder:
    """Read a model folder and check it, or raise a ModelError naming the file and the problem."""
    labels = read_labels(folder)
    card = read_json(folder / CARD_FILE, dict)
    needs_bank = isinstance(card.get("unknown"), dict) and card["unknown"].get("score") in NEEDS_BANK
    model = LiteRTModel(folder / MODEL_FILE, (*OUTPUTS, FEATURES) if needs_bank else OUTPUTS, num_threads)
    check_consistent(folder, labels, card, model)
    bank = read_bank(folder, model.output_shapes[FEATURES][-1], card["unknown"]["k"]) if needs_bank else None
    return ModelFolder(labels, card, model, bank)


def read_bank(folder: Path, channels: int, k: int, settings: str = CARD_FILE) -> np.ndarray:
    """The feature bank as float32 (the app multiplies by it on every photo), checked against the
    model and the card's k (`settings`: the file whose unknown score reads it, for the message)."""
    path = folder / BANK_FILE
    try:
        bank = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ModelError(f"{folder}: {BANK_FILE} is missing; {settings}'s unknown score needs it") from None
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot be read as a NumPy array ({error})") from None
    if bank.ndim != 2 or bank.shape[1] != channels or len(bank) < k:
        raise ModelError(f"{path}: expected (images, {channels}) features with at least k = {k} images, "
                         f"found shape {list(bank.shape)}")
    return bank.astype(np.float32)


def read_labels(folder: Path) -> list[str]:
    """The class names in output order, of a model folder or of a training backbone folder."""
    return read_json(folder / LABELS_FILE, list)


def read_json(path: Path, kind: type) -> Any:
    """Read a JSON file of the expected kind (list or dict), or say clearly what is wrong with it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path.parent}: {path.name} is missing") from None
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot be read as JSON ({error})") from None
    if not isinstance(value, kind):
        raise ModelError(f"{path}: expected a JSON {kind.__name__}, found a {type(value).__name__}")
    return value


def check_consistent(folder: Path, labels: list[str], card: dict[str, Any], model: LiteRTModel) -> None:
    """Raise a ModelError listing every way the labels, the card and the model disagree."""
    probabilities, class_maps = (model.output_shapes[name] for name in OUTPUTS)
    classes = probabilities[-1]
    problems = []
    if len(labels) != classes:
        problems.append(f"{LABELS_FILE} has {len(labels)} labels but the model has {classes} outputs")
    if len(class_maps) != 3 or class_maps[-1] != classes:
        problems.append(f"class_maps has shape {list(class_maps)}, expected [h, w, {classes}]")
    if missing := [key for key in CARD_KEYS if key not in card]:
        problems.append(f"{CARD_FILE} lacks {', '.join(missing)}")
    elif problem := unknown_problem(card["unknown"]):
        problems.append(f"{CARD_FILE}: {problem}")
    elif list(card["classes"]) != labels:
        problems.append(f"the classes in {CARD_FILE} differ from {LABELS_FILE}")
    elif tuple(card["input_size"]) != model.input_size:
        problems.append(f"{CARD_FILE} says input size {card['input_size']}, the model {list(model.input_size)}")
    if problems:
        raise ModelError(f"{folder}: " + "; ".join(problems))


def unknown_problem(unknown: Any) -> str | None:
    """What is wrong with a card's `unknown` entry, or None: checked at load, not on the first photo."""
    if not isinstance(unknown, dict) or unknown.get("score") not in SCORES:
        return f"unknown must be {{\"score\": one of {', '.join(SCORES)}, \"temperature\": T, \"threshold\": t}}"
    numbers = {key: unknown.get(key) for key in ("temperature", "threshold")}
    if not all(isinstance(value, int | float) and not isinstance(value, bool) for value in numbers.values()):
        return f"unknown needs numbers for temperature and threshold, found {numbers}"
    if numbers["temperature"] <= 0:
        return f"unknown temperature must be positive, found {numbers['temperature']}"
    if unknown["score"] in NEEDS_BANK:
        k, ranks = unknown.get("k"), unknown.get("ranks")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            return f"unknown score {unknown['score']} needs a whole number k >= 1, found {k!r}"
        if not isinstance(ranks, dict) or not all(_quantiles(ranks.get(name)) for name in ("max_softmax", "knn")):
            return (f"unknown score {unknown['score']} needs ranks: {{\"max_softmax\": [...], \"knn\": [...]}}, "
                    "each an increasing list of at least two numbers")
    return None


def _quantiles(values: Any) -> bool:
    """Whether `values` can be quantiles: a non-decreasing list of at least two numbers."""
    return (isinstance(values, list) and len(values) >= 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            and all(a <= b for a, b in zip(values, values[1:])))
