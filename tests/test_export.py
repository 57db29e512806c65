"""Export to LiteRT, and train/serve parity: the app's code on the exported file agrees with the
training data path on the Keras model."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from shapes import run_cli

from app.inference import Classifier
from runtime import imaging
from training import export as export_module
from training.dataset import image_dataset
from training.folder import scan


@pytest.fixture(scope="module")
def deploy(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy") / "vgg16"
    export_module.export(trained_run / "vgg16", "float32", out)
    return out


def test_export_writes_a_deployable_folder(deploy, trained_run):
    card = json.loads((deploy / "model_card.json").read_text())
    assert card["backbone"] == "vgg16" and card["input_size"] == [32, 32] and card["quantization"] == "float32"
    assert card["classes"] == json.loads((deploy / "labels.json").read_text()) == \
        ["blue triangle", "green square", "red circle"]
    assert card["litert_metrics"]["top1"] == pytest.approx(card["metrics"]["top1"])
    assert card["dataset_fingerprint"] == json.loads((trained_run / "run.json").read_text())["dataset_fingerprint"]
    assert {"python", "tensorflow", "keras"} <= set(card["versions"]) and card["created"]
    assert len(list((deploy.parent / "samples").glob("*.jpg"))) == 3
    assert (deploy.parent / "comparison.json").is_file()


def test_parity_between_training_path_and_app_path(deploy, trained_run, tiny_dataset):
    """The same test images: tf.data + Keras model, versus the app's decoder + exported file."""
    dataset = scan(tiny_dataset)
    model = keras.models.load_model(trained_run / "vgg16" / "model.keras")
    training_side = model.predict(image_dataset(dataset.splits["test"], 32, batch_size=8), verbose=0)

    classifier = Classifier(deploy)
    serving_side = np.stack([classifier.predict(imaging.load_pixels(s.path.read_bytes(), classifier.input_size,
                                                                    name=s.path.name)).probabilities
                             for s in dataset.splits["test"]])
    assert (training_side.argmax(1) == serving_side.argmax(1)).all()
    np.testing.assert_allclose(serving_side, training_side, atol=1e-3)


def test_class_maps_average_to_the_logits(deploy):
    """The head is linear, so the exported heatmap is exact: softmax(mean of maps) = probabilities."""
    classifier = Classifier(deploy)
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    prediction = classifier.predict(pixels)
    logits = prediction.class_maps.mean(axis=(0, 1))
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(softmax, prediction.probabilities, atol=1e-5)


@pytest.mark.parametrize("variant", ["float16", "int8"])
def test_quantized_variants_are_checked_against_the_keras_model(variant, trained_run, tmp_path):
    out = tmp_path / variant
    card = export_module.export(trained_run / "vgg16", variant, out)
    assert card["quantization"] == variant
    assert card["metrics"]["top1"] - card["litert_metrics"]["top1"] <= export_module.MAX_QUANTIZATION_LOSS
    float32 = tmp_path / "float32"
    export_module.export(trained_run / "vgg16", "float32", float32)
    assert (out / "model.tflite").stat().st_size < 0.6 * (float32 / "model.tflite").stat().st_size


def test_a_quantized_variant_that_loses_accuracy_is_refused(trained_run, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "MAX_QUANTIZATION_LOSS", -1.0)  # any variant now "loses too much"
    with pytest.raises(export_module.ExportError, match="int8 export of .* refused: test top-1"):
        export_module.export(trained_run / "vgg16", "int8", tmp_path / "int8")
    assert not (tmp_path / "int8" / "model.tflite").exists()
    assert not list(tmp_path.rglob(".tmp-*"))


def test_export_command_picks_the_best_of_a_run(trained_run, tmp_path):
    result = run_cli("export", "--run", str(trained_run), "--best", "--out", str(tmp_path / "best"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "best" / "model_card.json").read_text())["backbone"] == "vgg16"
    result = run_cli("export", "--run", str(trained_run))
    assert result.returncode == 2 and "--run needs --best" in result.stderr
    result = run_cli("export", "--model", str(tmp_path))
    assert result.returncode == 2 and "no metrics.json" in result.stderr and "Traceback" not in result.stderr
