"""Export to LiteRT, and train/serve parity: the app's code on the exported file agrees with the
training data path on the Keras model.

Exports are the slow part, so the module makes one float32 export (with the `export` command, as a
user would) and every test reads it; only the quantized variants export again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from sessions import once_per_session
from shapes import run_cli

from app.inference import Classifier
from runtime import answer, imaging, model_folder
from runtime.model_folder import CARD_FILE, LABELS_FILE, MODEL_FILE, SAMPLES_FOLDER
from training import export as export_module
from training.__main__ import main
from training.dataset import image_dataset
from training.folder import scan


@pytest.fixture(scope="module")
def nested_run(request: pytest.FixtureRequest, trained_run: Path) -> Path:
    """The trained run with its test images one folder deeper inside their class folders (a layout
    the dataset scan accepts): only run.json's labels, not the parent folder, say their class.
    Made once per session (`sessions`), like the export below: tests only read them."""

    def build(root: Path) -> None:
        run = root / "shapes"
        run.mkdir(parents=True)
        (run / "vgg16").symlink_to(trained_run / "vgg16", target_is_directory=True)
        for table in ("comparison.json", "comparison.md"):
            shutil.copy(trained_run / table, run / table)
        settings = json.loads((trained_run / "run.json").read_text())
        nested = []
        for source in map(Path, settings["splits"]["test"]):
            target = root / "test" / source.parent.name / "batch 1" / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            nested.append(str(shutil.copy(source, target)))
        settings["splits"]["test"] = nested
        (run / "run.json").write_text(json.dumps(settings))

    return once_per_session(request, "nested", build) / "shapes"


@pytest.fixture(scope="module")
def deploy(request: pytest.FixtureRequest, nested_run: Path) -> Path:
    """The session's one float32 export, by the `export` command (run in this process)."""

    def build(root: Path) -> None:
        assert main(["export", "--run", str(nested_run), "--best", "--out", str(root / "vgg16")]) == 0

    return once_per_session(request, "deploy", build) / "vgg16"


def test_export_writes_a_deployable_folder(deploy: Path, nested_run: Path) -> None:
    card = json.loads((deploy / CARD_FILE).read_text())
    assert card["backbone"] == "vgg16" and card["input_size"] == [32, 32] and card["quantization"] == "float32"
    assert card["classes"] == json.loads((deploy / LABELS_FILE).read_text()) == \
        ["blue triangle", "green square", "red circle"]
    # Right only if each test image got its class from run.json, not from its ("batch 1") folder.
    assert card["litert_metrics"]["top1"] == pytest.approx(card["metrics"]["top1"])
    assert card["dataset_fingerprint"] == json.loads((nested_run / "run.json").read_text())["dataset_fingerprint"]
    assert {"python", "tensorflow", "keras"} <= set(card["versions"]) and card["created"]
    assert sorted(path.stem for path in (deploy.parent / SAMPLES_FOLDER).glob("*.jpg")) == card["classes"]
    assert (deploy.parent / "comparison.json").is_file()
    assert model_folder.load(deploy).card == card


def test_parity_between_training_path_and_app_path(deploy: Path, trained_run: Path, tiny_dataset: Path) -> None:
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


def test_the_feature_bank_holds_the_exported_features_of_training_images(deploy: Path, tiny_dataset: Path) -> None:
    """The trust step built the bank from cached activations through the Keras model; the app
    compares it with the exported file's features. The tiny set has 12 training images per class,
    fewer than the bank keeps (20), so every training image is in it: its features, from the
    app's decoder and model.tflite, must find themselves there (cosine 1, float16 aside)."""
    classifier = Classifier(deploy)
    assert classifier.card["unknown"]["score"] == "max_softmax+knn" and classifier.bank.shape == (36, 512)
    np.testing.assert_allclose(np.linalg.norm(classifier.bank, axis=1), 1, atol=1e-3)
    features = np.stack([classifier.outputs(imaging.load_pixels(s.path, classifier.input_size))["features"]
                         for s in scan(tiny_dataset).splits["train"]])
    assert answer.knn(features, classifier.bank, 1) == pytest.approx(np.ones(len(features)), abs=2e-3)


def test_class_maps_average_to_the_logits(deploy: Path) -> None:
    """The head is linear, so the exported heatmap is exact: softmax(mean of maps) = probabilities."""
    classifier = Classifier(deploy)
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    prediction = classifier.predict(pixels)
    logits = prediction.class_maps.mean(axis=(0, 1))
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(softmax, prediction.probabilities, atol=1e-5)


@pytest.mark.parametrize("variant", ["float16", "int8"])
def test_quantized_variants_are_checked_against_the_keras_model(
    variant: str, nested_run: Path, deploy: Path, tmp_path: Path
) -> None:
    card = export_module.export(nested_run / "vgg16", variant, tmp_path / variant)
    assert card["quantization"] == variant
    assert card["metrics"]["top1"] - card["litert_metrics"]["top1"] <= export_module.MAX_QUANTIZATION_LOSS
    assert card["size_bytes"] < 0.6 * (deploy / MODEL_FILE).stat().st_size


def test_a_quantized_variant_that_loses_accuracy_is_refused(nested_run: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(export_module, "MAX_QUANTIZATION_LOSS", -1.0)  # any variant now "loses too much"
    with pytest.raises(export_module.ExportError, match="int8 export of .* refused: test top-1"):
        export_module.export(nested_run / "vgg16", "int8", tmp_path / "int8")
    assert not (tmp_path / "int8" / MODEL_FILE).exists()
    assert not list(tmp_path.rglob(".tmp-*"))


def test_a_run_without_labels_is_named(nested_run: Path, tmp_path: Path) -> None:
    """A run.json from before runs recorded the class of each image says how to get one."""
    old = tmp_path / "old"
    shutil.copytree(nested_run, old, symlinks=True)
    settings = json.loads((old / "run.json").read_text())
    del settings["labels"]
    (old / "run.json").write_text(json.dumps(settings))
    with pytest.raises(export_module.ExportError, match="run.json: no class labels .* run the same `python -m training compare`"):
        export_module.export(old / "vgg16", "float32", tmp_path / "out")


@pytest.mark.parametrize(("bank", "problem"), [
    (None, "feature_bank.npy is missing; trust.json's unknown score needs it"),
    (np.zeros((9, 7), dtype=np.float16), "feature_bank.npy: expected \\(images, 512\\) features"),
])
def test_a_missing_or_wrong_feature_bank_stops_the_export_before_it_converts(
        nested_run: Path, tmp_path: Path, bank: np.ndarray | None, problem: str) -> None:
    """`export --run --best` reaches a backbone folder without the CLI's own check of --model.
    (The run's vgg16 is a link to the session's trained backbone: copied whole, not linked.)"""
    old = tmp_path / "old"
    shutil.copytree(nested_run, old, ignore=shutil.ignore_patterns("*.weights.h5", "backup", "finetune_*"))
    (old / "vgg16" / model_folder.BANK_FILE).unlink()
    if bank is not None:
        np.save(old / "vgg16" / model_folder.BANK_FILE, bank)
    with pytest.raises(model_folder.ModelError, match=problem):
        export_module.export(old / "vgg16", "float32", tmp_path / "out")
    assert not (tmp_path / "out" / MODEL_FILE).exists()


def test_export_command_errors_are_one_line(trained_run: Path, tmp_path: Path) -> None:
    result = run_cli("export", "--run", str(trained_run))
    assert result.returncode == 2 and "--run needs --best" in result.stderr
    result = run_cli("export", "--model", str(tmp_path))
    assert result.returncode == 2 and "no metrics.json" in result.stderr and "Traceback" not in result.stderr
