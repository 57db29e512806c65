"""Tiny model folders for the runtime and app tests, laid out by the contract in `runtime.model_folder`.

The pipeline's own converter (`training.model.to_litert`) writes the model file, so the tests run
against the same kind of file the exporter produces; file names and card keys come from the contract.
Keras is imported inside the functions: collecting the tests stays free of TensorFlow.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from runtime.model_folder import CARD_FILE, CONFUSION_FILE, LABELS_FILE, METRICS_FILE, MODEL_FILE, ModelCard

INPUT_SIZE = (32, 32)
# A temperature as the exporter would fit it; a threshold of 0 answers every photo (a test that
# needs "not sure" answers measures its own threshold on its photos).
UNKNOWN = {"score": "max_softmax", "temperature": 1.5, "threshold": 0.0}


def tiny_cam_model(classes: int):
    """Rescaling -> Conv2D feature map -> GAP -> Dense logits -> softmax, plus the Dense head
    applied at every location of the feature map (the class activation maps) and the pooled
    features, as the pipeline exports a classifier."""
    import keras

    inputs = keras.Input((*INPUT_SIZE, 3))
    features = keras.layers.Conv2D(8, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    head = keras.layers.Dense(classes, name="logits", kernel_initializer=keras.initializers.RandomNormal(stddev=3.0))
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    probabilities = keras.layers.Softmax(name="probabilities")(head(pooled))
    return keras.Model(inputs, {"probabilities": probabilities, "class_maps": head(features), "features": pooled})


def model_card(labels: list[str], backbone: str, top1: float, unknown: dict = UNKNOWN) -> dict:
    """The JSON of a model card for a tiny model, with some provenance as the exporter adds it."""
    metrics = {"top1": top1, "top5": 1.0, "macro_f1": top1 - 0.02}
    card = ModelCard(backbone=backbone, input_size=list(INPUT_SIZE), classes=labels, quantization="float32",
                     metrics=metrics, litert_metrics=metrics, unknown=dict(unknown), subject="butterfly species")
    return card.to_json(dataset_fingerprint="sha256:0123456789abcdef", versions={"keras": "3"},
                        created="2026-01-01")


def write_model_folder(folder: Path, labels: list[str], card: dict, seed: int) -> Path:
    """A model folder holding a tiny CAM model (weights drawn from `seed`), `labels` and `card`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from training.model import to_litert

    folder.mkdir(parents=True)
    keras.utils.set_random_seed(seed)
    to_litert(tiny_cam_model(len(labels)), folder / MODEL_FILE)
    (folder / LABELS_FILE).write_text(json.dumps(labels))
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2))
    return folder


def write_test_results(folder: Path, labels: list[str], seed: int) -> np.ndarray:
    """The optional per-class files of a model folder, as training writes them for a backbone:
    `metrics.json` (per-class precision, recall, support under "test") and `confusion_matrix.csv`
    (rows: true class), from a random but consistent confusion matrix, which is returned."""
    rng = np.random.default_rng(seed)
    matrix = rng.integers(0, 3, size=(len(labels), len(labels))) + np.diag(rng.integers(5, 20, size=len(labels)))
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    per_class = {
        name: {"precision": float(matrix[i, i] / predicted[i]), "recall": float(matrix[i, i] / support[i]),
               "support": int(support[i])}
        for i, name in enumerate(labels)
    }
    top1 = float(np.trace(matrix) / matrix.sum())
    (folder / METRICS_FILE).write_text(json.dumps({"test": {"top1": top1, "per_class": per_class}}, indent=2))
    with (folder / CONFUSION_FILE).open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["true \\ predicted", *labels])
        writer.writerows([name, *map(int, row)] for name, row in zip(labels, matrix))
    return matrix
