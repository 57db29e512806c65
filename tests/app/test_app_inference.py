"""The serving core without Streamlit: finding model folders and samples, predicting, and heatmaps.

Loading a folder (its errors) and sharing a model across threads are `runtime`'s: tests/test_runtime.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from photos import rotated_jpeg, upright_portrait
from PIL import Image

from app.inference import Classifier, Prediction, find_models, find_samples, heatmap
from runtime import imaging
from runtime.model_folder import CARD_FILE, LABELS_FILE, MODEL_FILE, SAMPLES_FOLDER


@pytest.fixture(scope="module")
def classifier(model_folder: Path) -> Classifier:
    return Classifier(model_folder)


def copy_model(model_folder: Path, destination: Path) -> Path:
    """A writable copy of a model folder, to rearrange or break in a test."""
    return Path(shutil.copytree(model_folder, destination))


def test_find_models_lists_the_root_and_its_model_subfolders(model_folder: Path, tmp_path: Path) -> None:
    root = copy_model(model_folder, tmp_path / "deploy")
    second, third = copy_model(model_folder, root / "second"), copy_model(model_folder, root / "third")
    (root / SAMPLES_FOLDER).mkdir()
    (root / "notes.txt").write_text("not a folder")
    assert find_models(root) == [root.resolve(), second.resolve(), third.resolve()]


def test_find_models_on_a_missing_folder_is_empty(tmp_path: Path) -> None:
    assert find_models(tmp_path / "nowhere") == []


def test_find_models_ignores_symlinks_leading_outside_the_root(model_folder: Path, tmp_path: Path) -> None:
    outside = copy_model(model_folder, tmp_path / "outside")
    root = tmp_path / "root"
    inside = copy_model(model_folder, root / "inside")
    (root / "linked_folder").symlink_to(outside, target_is_directory=True)
    linked_file = root / "linked_file"
    linked_file.mkdir()
    for name in (LABELS_FILE, CARD_FILE):
        shutil.copy(inside / name, linked_file / name)
    (linked_file / MODEL_FILE).symlink_to(outside / MODEL_FILE)

    assert find_models(root) == [inside.resolve()]


def test_find_samples_lists_images_inside_the_root_only(tmp_path: Path) -> None:
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"")
    samples = tmp_path / "root" / SAMPLES_FOLDER
    samples.mkdir(parents=True)
    for name in ("monarch.jpg", "admiral.PNG", "README.txt"):
        (samples / name).write_bytes(b"")
    (samples / "linked.jpg").symlink_to(outside)
    assert [path.name for path in find_samples(tmp_path / "root")] == ["admiral.PNG", "monarch.jpg"]


def test_classifier_reads_the_folder(classifier: Classifier, model_folder: Path) -> None:
    assert classifier.labels == json.loads((model_folder / LABELS_FILE).read_text())
    assert classifier.input_size == tuple(classifier.card["input_size"])
    assert classifier.name == model_folder.name


def test_prediction_follows_the_export_contract(classifier: Classifier) -> None:
    prediction = classifier.predict(noise(classifier.input_size, seed=0))
    classes = len(classifier.labels)
    assert prediction.probabilities.shape == (classes,)
    assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert prediction.class_maps.ndim == 3 and prediction.class_maps.shape[-1] == classes
    # class_maps is the classifier head applied at every location, so averaging it over the
    # locations gives the logits (global average pooling and a Dense layer commute).
    logits = prediction.class_maps.mean(axis=(0, 1))
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(softmax, prediction.probabilities, atol=1e-5)


def test_top_k_is_sorted_by_probability() -> None:
    prediction = Prediction(["a", "b", "c", "d"], np.array([0.1, 0.4, 0.2, 0.3]), np.zeros((2, 2, 4)))
    assert prediction.top_k(3) == [("b", 0.4), ("d", 0.3), ("c", 0.2)]
    assert prediction.top_class_map().shape == (2, 2)


def test_heatmap_is_hot_where_the_class_map_is_high() -> None:
    photo = Image.new("RGB", (200, 100), (128, 128, 128))
    class_map = np.full((4, 8), -1.0)  # (height, width), like the model's output
    class_map[0, 7] = 5.0  # the top-right corner

    overlay = np.asarray(heatmap(photo, class_map), dtype=int)

    assert overlay.shape == (100, 200, 3)
    top_right, bottom_left = overlay[5, 195], overlay[95, 5]
    assert top_right[0] > top_right[2], "hot: more red than blue"
    assert bottom_left[2] > bottom_left[0], "cold: more blue than red"


def test_heatmap_of_no_evidence_is_uniformly_cold() -> None:
    photo = Image.new("RGB", (20, 10), (128, 128, 128))
    overlay = np.asarray(heatmap(photo, np.full((2, 2), -3.0)), dtype=int)
    assert (overlay == overlay[0, 0]).all() and overlay[0, 0, 2] > overlay[0, 0, 0]


def test_exif_rotated_photo_reaches_the_model_upright(classifier: Classifier) -> None:
    photo = imaging.open_rgb(rotated_jpeg(), "sideways.jpg")  # what the page shows
    assert photo.size == (48, 96)
    pixels = np.asarray(photo, dtype=int)
    assert pixels[:48, :, 0].mean() > 200 and pixels[:48, :, 2].mean() < 60, "top half red"
    assert pixels[48:, :, 2].mean() > 200 and pixels[48:, :, 0].mean() < 60, "bottom half blue"

    seen = imaging.load_pixels(rotated_jpeg(), classifier.input_size, "sideways.jpg")  # what the model gets
    height, width = classifier.input_size
    upright = np.asarray(upright_portrait().resize((width, height), Image.Resampling.BILINEAR), dtype=int)
    assert np.abs(seen.astype(int) - upright).max() < 40


def noise(size: tuple[int, int], seed: int) -> np.ndarray:
    """A random RGB image of `size` (height, width); different seeds give different predictions."""
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
