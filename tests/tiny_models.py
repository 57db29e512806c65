"""Tiny model folders for the runtime and app tests, laid out by the contract in `runtime.model_folder`.

Keras' own LiteRT exporter writes the model file, as in the pipeline, so the tests run against the
same kind of file the exporter produces; file names and card keys come from the contract.
Keras is imported inside the functions: collecting the tests stays free of TensorFlow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from runtime.model_folder import CARD_FILE, LABELS_FILE, MODEL_FILE, ModelCard

INPUT_SIZE = (32, 32)


def tiny_cam_model(classes: int):
    """Rescaling -> Conv2D feature map -> GAP -> Dense logits -> softmax, plus the Dense head
    applied at every location of the feature map: the class activation maps."""
    import keras

    inputs = keras.Input((*INPUT_SIZE, 3))
    features = keras.layers.Conv2D(8, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    head = keras.layers.Dense(classes, name="logits", kernel_initializer=keras.initializers.RandomNormal(stddev=3.0))
    logits = head(keras.layers.GlobalAveragePooling2D()(features))
    probabilities = keras.layers.Softmax(name="probabilities")(logits)
    return keras.Model(inputs, {"probabilities": probabilities, "class_maps": head(features)})


def model_card(labels: list[str], backbone: str, top1: float) -> dict:
    """The JSON of a model card for a tiny model, with some provenance as the exporter adds it."""
    metrics = {"top1": top1, "top5": 1.0, "macro_f1": top1 - 0.02}
    card = ModelCard(backbone=backbone, input_size=list(INPUT_SIZE), classes=labels, quantization="float32",
                     metrics=metrics, litert_metrics=metrics)
    return card.to_json(dataset_fingerprint="sha256:0123456789abcdef", versions={"keras": "3"},
                        created="2026-01-01")


def write_model_folder(folder: Path, labels: list[str], card: dict, seed: int) -> Path:
    """A model folder holding a tiny CAM model (weights drawn from `seed`), `labels` and `card`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    folder.mkdir(parents=True)
    keras.utils.set_random_seed(seed)
    tiny_cam_model(len(labels)).export(str(folder / MODEL_FILE), format="litert", verbose=False)
    (folder / LABELS_FILE).write_text(json.dumps(labels))
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2))
    return folder
