"""Fixtures for the app tests: a model root laid out exactly as the exporter lays one out.

`build_model_root` is the one place that makes models. It builds two tiny Keras CNNs with a
CAM head and exports them with Keras' own LiteRT exporter, so the app is tested against the
same kind of file the pipeline produces. To test against the real pipeline instead, make it
call the pipeline's exporter and return that root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app.inference import Classifier, find_models
from runtime import imaging

APP_SCRIPT = Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"
LABELS = ["admiral", "monarch", "morpho", "peacock", "swallowtail", "zebra longwing"]
INPUT_SIZE = (32, 32)

# Two models whose cards disagree on accuracy, so that the app's default (best test top-1) is
# not simply the first folder.
MODELS = {"tiny_a": {"seed": 1, "top1": 0.80}, "tiny_b": {"seed": 2, "top1": 0.90}}


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model root with two model folders, sample photos and a comparison table."""
    return build_model_root(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="session")
def model_folder(model_root: Path) -> Path:
    """One model folder of the root, found without the app's own `find_models`."""
    return min(model_root.rglob("model.tflite")).parent


@pytest.fixture(scope="session")
def default_model(model_root: Path) -> Classifier:
    """The model the app serves unless told otherwise: the best test top-1 of the model cards."""
    classifiers = [Classifier(folder) for folder in find_models(model_root)]
    return max(classifiers, key=lambda classifier: classifier.card["litert_metrics"]["top1"])


@pytest.fixture
def app(model_root: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The web app serving the fixture's model root, not yet run."""
    monkeypatch.setenv("MODEL_DIR", str(model_root))
    return AppTest.from_file(str(APP_SCRIPT), default_timeout=60)


@pytest.fixture(scope="session")
def expected_heading() -> Callable[[Classifier, str, bytes], str]:
    """The heading the page must show for a photo: the top class and its probability."""

    def heading(classifier: Classifier, name: str, data: bytes) -> str:
        label, probability = classifier.predict(imaging.load_pixels(data, classifier.input_size, name)).top_k(1)[0]
        return f"{label} ({probability:.1%})"

    return heading


def build_model_root(root: Path) -> Path:
    """Export the tiny models into `root`, with labels, cards, samples and comparison files."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    rows = []
    for name, spec in MODELS.items():
        folder = root / name
        folder.mkdir()
        keras.utils.set_random_seed(spec["seed"])
        tiny_cam_model(len(LABELS)).export(str(folder / "model.tflite"), format="litert", verbose=False)
        (folder / "labels.json").write_text(json.dumps(LABELS))
        card = model_card(f"tiny_cnn_{name[-1]}", spec["top1"], keras.__version__)
        (folder / "model_card.json").write_text(json.dumps(card, indent=2))
        rows.append({"backbone": card["backbone"], **card["litert_metrics"], "params_total": 1000, "size_mb": 0.01,
                     "latency_ms": 0.1, "best": name == "tiny_b"})
    (root / "comparison.json").write_text(json.dumps(rows, indent=2))
    (root / "comparison.md").write_text(
        "| backbone | top1 |\n| --- | --- |\n" + "".join(f"| {r['backbone']} | {r['top1']} |\n" for r in rows)
    )
    write_samples(root / "samples")
    return root


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


def model_card(backbone: str, top1: float, keras_version: str) -> dict:
    """A model card with every key the contract requires."""
    metrics = {"top1": top1, "top5": 1.0, "macro_f1": top1 - 0.02}
    return {
        "backbone": backbone,
        "input_size": list(INPUT_SIZE),
        "classes": LABELS,
        "quantization": "float32",
        "metrics": metrics,
        "litert_metrics": metrics,
        "dataset_fingerprint": "sha256:0123456789abcdef",
        "versions": {"keras": keras_version},
        "created": "2026-01-01",
    }


def write_samples(folder: Path) -> None:
    """Three sample photos named after their class, as the exporter writes them."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for label in LABELS[:3]:
        pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{label}.jpg", quality=90)
