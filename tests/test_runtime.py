"""What training and serving share (`runtime`): the LiteRT runner and the model-folder contract.

The models are tiny Keras models exported by Keras' own LiteRT exporter, as the pipeline does.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from tiny_models import INPUT_SIZE, model_card, write_model_folder

from runtime import model_folder
from runtime.litert import LiteRTModel, ModelError
from runtime.model_folder import CARD_FILE, CARD_KEYS, LABELS_FILE, MODEL_FILE, ModelCard

LABELS = ["admiral", "monarch", "peacock"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder as the exporter writes it."""
    return write_model_folder(tmp_path_factory.mktemp("runtime") / "model", LABELS, model_card(LABELS, "tiny", 0.9), 0)


@pytest.fixture(scope="module")
def twin_outputs(tmp_path_factory: pytest.TempPathFactory):
    """A Keras model with two outputs of the same shape, "first" and "second", and its LiteRT file:
    nothing but their names tells them apart."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((*INPUT_SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, {"first": keras.layers.Dense(4)(pooled), "second": keras.layers.Dense(4)(pooled)})
    path = tmp_path_factory.mktemp("twins") / "twins.tflite"
    model.export(str(path), format="litert", verbose=False)
    return model, path


def test_outputs_are_found_by_name(twin_outputs) -> None:
    keras_model, path = twin_outputs
    image = noise(INPUT_SIZE, seed=0)
    outputs = LiteRTModel(path, ["second", "first"])(image)
    expected = keras_model.predict_on_batch(image[np.newaxis].astype(np.float32))
    assert not np.allclose(expected["first"], expected["second"], atol=1e-3), "the two outputs must differ"
    for name in ("first", "second"):
        np.testing.assert_allclose(outputs[name], expected[name][0], atol=1e-5)


def test_an_output_that_is_not_there_is_named(twin_outputs) -> None:
    _, path = twin_outputs
    with pytest.raises(ModelError, match=r"twins.tflite: no output named probabilities; its outputs are first, second"):
        LiteRTModel(path, ["first", "probabilities"])


def test_a_model_without_an_image_input_is_refused(tmp_path: Path) -> None:
    import keras

    inputs = keras.Input((6,))
    path = tmp_path / "vector.tflite"
    keras.Model(inputs, {"out": keras.layers.Dense(2)(inputs)}).export(str(path), format="litert", verbose=False)
    problem = r"vector.tflite: expected one float32 \[1, H, W, 3\] image input, found float32 \[1, 6\]"
    with pytest.raises(ModelError, match=problem):
        LiteRTModel(path, ["out"])


def test_pixels_of_the_wrong_size_are_refused(folder: Path) -> None:
    model = model_folder.load(folder).model
    with pytest.raises(ValueError, match=r"model.tflite: expected pixels of shape \(32, 32, 3\), got \(33, 32, 3\)"):
        model(np.zeros((33, 32, 3), np.uint8))


def test_shared_use_from_many_threads_gives_single_threaded_results(folder: Path) -> None:
    """The app shares one model across every visitor's thread."""
    model = model_folder.load(folder).model
    images = [noise(INPUT_SIZE, seed) for seed in range(16)]
    expected = [model(image) for image in images]
    results: dict[int, list[dict[str, np.ndarray]]] = {}
    start = threading.Barrier(len(images))

    def predict_repeatedly(index: int) -> None:
        start.wait()
        results[index] = [model(images[index]) for _ in range(20)]

    threads = [threading.Thread(target=predict_repeatedly, args=(index,)) for index in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == list(range(len(images)))
    for index, outputs in results.items():
        for output in outputs:
            for name in model.outputs:
                np.testing.assert_array_equal(output[name], expected[index][name])


def test_a_model_folder_loads_with_its_labels_card_and_model(folder: Path) -> None:
    loaded = model_folder.load(folder)
    assert loaded.labels == LABELS and loaded.card == json.loads((folder / CARD_FILE).read_text())
    assert loaded.model.input_size == INPUT_SIZE
    assert loaded.model.output_shapes["probabilities"] == (len(LABELS),)


@pytest.mark.parametrize("missing", [MODEL_FILE, LABELS_FILE, CARD_FILE])
def test_a_missing_file_is_named(folder: Path, tmp_path: Path, missing: str) -> None:
    broken = Path(shutil.copytree(folder, tmp_path / "model"))
    (broken / missing).unlink()
    with pytest.raises(ModelError, match=f"{broken}: {missing} is missing"):
        model_folder.load(broken)


@pytest.mark.parametrize(("name", "content", "problem"), [
    (LABELS_FILE, b"['admiral',", "labels.json: cannot be read as JSON"),
    (CARD_FILE, b"[]", "model_card.json: expected a JSON dict, found a list"),
    (MODEL_FILE, b"not a flatbuffer" * 10, "model.tflite: not a loadable LiteRT model"),
])
def test_a_garbled_file_is_named(folder: Path, tmp_path: Path, name: str, content: bytes, problem: str) -> None:
    broken = Path(shutil.copytree(folder, tmp_path / "model"))
    (broken / name).write_bytes(content)
    with pytest.raises(ModelError, match=problem):
        model_folder.load(broken)


@pytest.mark.parametrize(("change", "problem"), [
    pytest.param(lambda labels, card: labels.pop(), "labels.json has 2 labels but the model has 3 outputs", id="labels"),
    pytest.param(lambda labels, card: card.pop("litert_metrics"), "model_card.json lacks litert_metrics", id="card keys"),
    pytest.param(lambda labels, card: card["classes"].reverse(), "the classes in model_card.json differ from labels.json",
                 id="card classes"),
    pytest.param(lambda labels, card: card.update(input_size=[64, 64]),
                 r"model_card.json says input size \[64, 64\], the model \[32, 32\]", id="card input size"),
])
def test_files_that_disagree_are_refused(folder: Path, tmp_path: Path, change: Callable, problem: str) -> None:
    broken = Path(shutil.copytree(folder, tmp_path / "model"))
    labels, card = json.loads((broken / LABELS_FILE).read_text()), json.loads((broken / CARD_FILE).read_text())
    change(labels, card)
    (broken / LABELS_FILE).write_text(json.dumps(labels))
    (broken / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match=problem):
        model_folder.load(broken)


def test_the_card_keeps_the_json_layout_of_exported_folders() -> None:
    """One flat object: the contract's keys first, the provenance beside them."""
    assert CARD_KEYS == ("backbone", "input_size", "classes", "quantization", "metrics", "litert_metrics",
                         "unknown", "subject")
    metrics = {"top1": 0.9, "top5": 1.0, "macro_f1": 0.88}
    unknown = {"score": "max_softmax", "temperature": 1.5, "threshold": 0.4}
    card = ModelCard("tiny", [32, 32], LABELS, "int8", metrics, metrics, unknown, "butterfly species").to_json(
        source="saved_models/run/tiny")
    assert json.loads(json.dumps(card)) == {
        "backbone": "tiny", "input_size": [32, 32], "classes": LABELS, "quantization": "int8",
        "metrics": metrics, "litert_metrics": metrics, "unknown": unknown, "subject": "butterfly species",
        "source": "saved_models/run/tiny",
    }


def noise(size: tuple[int, int], seed: int) -> np.ndarray:
    """A random RGB image of `size` (height, width); different seeds give different outputs."""
    return np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
