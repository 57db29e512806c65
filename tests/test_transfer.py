"""The ImageNet transfer path, offline, on stand-in weights, and what every registry backbone
brings to it.

The path: a folder of weight files in Keras' format -> `weights_dir` -> the frozen bottom (run
through LiteRT or Keras) -> phase 1 -> phase 2 above `frozen_until` -> evaluation -> export ->
the app's `Classifier`. It runs end to end for `FULL_PATH`: MobileNetV2, with real weights
offline (so one a CPU user trains), and VGG16. MobileNet, the other with real weights offline,
trains on them in test_real_weights.py. The bottom runs through TensorFlow here ("auto" on so few
images); the LiteRT bottom is checked against it in test_features.py and runs in a whole
comparison in test_cli_options.py.

What differs between registry entries is tested for every one of them: its weight file loads
through Keras, the model cuts at `frozen_until` without loss, phase 2 unfreezes exactly the
blocks above the cut, and the model with its class maps converts to LiteRT with the Keras
model's outputs. The rest of the path is the same code for every backbone: running it for each
cost about 70 s apiece for ResNet50, InceptionV3 and EfficientNetB0 and exercised nothing new.

Stand-in weights are random (`training.standin`): these tests check that the path works and
agrees with itself at every hand-over, not what it learns. Images are as small as each backbone
allows (InceptionV3 needs 75 pixels, the others 32) and epochs as few as reach phase 2.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from PIL import Image
from sessions import once_per_session
from shapes import CLASSES, make_dataset
from tiny_models import INPUT_SIZE, tiny_cam_model

from app.inference import Classifier
from runtime import imaging, second_look
from runtime.litert import LiteRTModel
from runtime.model_folder import OUTPUTS
from training import model as model_module
from training.artifacts import read_json
from training.backbones import REGISTRY, build_base, parse_variant
from training.config import Config
from training.export import export
from training.finetune import read_history
from training.folder import scan
from training.model import bottom, build_classifier, head, served_looks, to_litert, top, unfreeze_top, with_class_maps
from training.runner import compare
from training.standin import LABEL, STAND_IN, is_stand_in, write_all, write_stand_in_weights

SMALLEST = {"inceptionv3": 75}  # input size per backbone; the others take 32
FULL_PATH = ["mobilenetv2", "vgg16"]


def smallest_variant(name: str):
    return parse_variant(name, SMALLEST.get(name, 32))


@pytest.fixture(scope="session")
def stand_in_dir(request) -> Path:
    """Stand-in weights of every registry backbone (ResNet50 alone is 90 MB): once per session."""
    return once_per_session(request, "stand-in-weights", write_all)


@pytest.fixture(scope="module")
def transfer_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("transfer") / "shapes", counts=(4, 2, 2))


def test_stand_in_files_load_through_keras_and_are_marked(stand_in_dir, tmp_path):
    """Keras' own loader takes the file; the same seed writes the same weights; the file says what it is."""
    variant = parse_variant("mobilenet:0.25")
    path = write_stand_in_weights(variant, tmp_path)
    assert path == tmp_path / "mobilenet_2_5_224_tf_no_top.h5" and is_stand_in(path)
    with h5py.File(path, "r") as file:
        assert "accuracy meaningless" in file.attrs[STAND_IN]
    again = write_stand_in_weights(variant, tmp_path / "again")
    assert again.read_bytes() == path.read_bytes()
    keras.utils.set_random_seed(1)  # a different initialisation, then the file's weights
    loaded = build_base(variant, path)
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    for saved, fresh in zip(loaded.get_weights(), build_base(variant, None).get_weights(), strict=True):
        np.testing.assert_array_equal(saved, fresh)
    assert sorted(p.name for p in stand_in_dir.iterdir()) == sorted(parse_variant(n).weights_file for n in REGISTRY)
    assert not is_stand_in(None) and not is_stand_in(Path(__file__))


@pytest.mark.parametrize("name", list(REGISTRY))
def test_backbone_cuts_and_unfreezes_above_the_cut(name, stand_in_dir):
    """A registry entry's part of training: cutting the model at `frozen_until` loses nothing
    (top(bottom(x)) and head(pooled) are the model), and phase 2 trains the blocks above the cut
    and no BatchNorm."""
    variant = smallest_variant(name)
    frozen_until = variant.backbone.frozen_until
    classifier = build_classifier(variant, 3, stand_in_dir / variant.weights_file, dropout=0.2)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, variant.size, variant.size, 3)).astype("float32")
    expected = classifier(pixels, training=False).numpy()
    outputs = bottom(classifier, frozen_until)(pixels)
    np.testing.assert_allclose(top(classifier, frozen_until)(outputs["activations"]), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head(classifier)(outputs["pooled"]), expected, rtol=1e-5, atol=1e-6)

    unfreeze_top(classifier, frozen_until)
    layers = classifier.get_layer("backbone").layers
    cut = [layer.name for layer in layers].index(frozen_until)
    assert not any(layer.trainable_weights for layer in layers[: cut + 1])
    above = sum(layer.count_params() for layer in layers[cut + 1:]
                if not isinstance(layer, keras.layers.BatchNormalization))
    trainable = sum(int(np.prod(weight.shape)) for weight in top(classifier, frozen_until).trainable_weights)
    assert trainable == above + classifier.get_layer("logits").count_params()


def test_react_caps_what_the_head_reads_and_the_class_maps_follow(stand_in_dir, tmp_path):
    """Once the trust step sets a ceiling, every view of the classifier reads pooled features
    capped at it (ReAct), the exported class maps still average to the capped logits, the
    features the feature bank compares stay as the backbone gives them, and plain Keras keeps the
    cap when it loads the saved model."""
    variant = smallest_variant("vgg16")  # stand-in MobileNets pool to almost nothing at 32 pixels
    classifier = build_classifier(variant, 3, stand_in_dir / variant.weights_file, dropout=0.2)
    rng = np.random.default_rng(1)
    pixels = rng.uniform(0, 255, (3, variant.size, variant.size, 3)).astype("float32")
    dense = classifier.get_layer("logits")
    dense.set_weights([rng.normal(0, 1, w.shape).astype("float32") for w in dense.get_weights()])  # as if trained
    pooled = bottom(classifier, None)(pixels)["pooled"].numpy()
    uncapped = classifier.predict(pixels, verbose=0)
    assert model_module.ceiling(classifier) == float("inf")
    ceiling = float(np.quantile(pooled, 0.5))  # low enough to cap half of them
    model_module.set_ceiling(classifier, ceiling)
    weights, bias = dense.get_weights()
    wanted = keras.ops.softmax(np.minimum(pooled, ceiling) @ weights + bias).numpy()
    assert not np.allclose(wanted, uncapped, atol=1e-4)
    np.testing.assert_allclose(classifier.predict(pixels, verbose=0), wanted, atol=1e-5)  # traced again
    np.testing.assert_allclose(head(classifier)(pooled), wanted, atol=1e-5)
    outputs = {name: value.numpy() for name, value in with_class_maps(classifier)(pixels).items()}
    np.testing.assert_allclose(outputs["probabilities"], wanted, atol=1e-5)
    np.testing.assert_allclose(outputs["class_maps"].mean(axis=(1, 2)), np.minimum(pooled, ceiling) @ weights + bias,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outputs["features"], pooled, rtol=1e-5)
    classifier.save(tmp_path / "model.keras")
    assert model_module.ceiling(keras.models.load_model(tmp_path / "model.keras")) == pytest.approx(ceiling)


@pytest.mark.heavy
@pytest.mark.parametrize("name", [name for name in REGISTRY if name not in FULL_PATH])
def test_backbone_converts_with_its_class_maps(name, stand_in_dir, tmp_path):
    """A registry entry's part of export (the full path exports the others): the classifier with
    its class maps converts to LiteRT, and the file gives the Keras model's probabilities."""
    variant = smallest_variant(name)
    served = with_class_maps(build_classifier(variant, 3, stand_in_dir / variant.weights_file, dropout=0.2))
    to_litert(served, tmp_path / "model.tflite")
    converted = LiteRTModel(tmp_path / "model.tflite", OUTPUTS)
    pixels = np.random.default_rng(0).uniform(0, 255, (2, variant.size, variant.size, 3)).astype("float32")
    for image, wanted in zip(pixels, served(pixels, training=False)["probabilities"].numpy(), strict=True):
        got = converted(image)
        np.testing.assert_allclose(got["probabilities"], wanted, atol=1e-4)
        assert got["class_maps"].shape[-1] == 3


def test_served_looks_pad_short_batches_and_trace_once(monkeypatch):
    """Training, compare's field columns and `predict` look at photos in batches whose size varies
    (the last batch, the crops actually taken). Padded to one size, Keras traces its predict
    function once, and each photo still gets the look it gets alone."""
    keras.utils.set_random_seed(3)
    served = tiny_cam_model(4)
    monkeypatch.setattr(model_module, "with_class_maps", lambda classifier: served)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
              for h, w in [(40, 60), (32, 32), (90, 50), (45, 45), (70, 30)]]
    looks = list(served_looks(served, images, batch_size=3))  # batches of 3 and 2, crops fewer
    assert served.predict_function.experimental_get_tracing_count() == 1
    alone = lambda pixels: {k: v[0] for k, v in served.predict_on_batch(pixels[None].astype("float32")).items()}  # noqa: E731
    for image, look in zip(images, looks, strict=True):
        wanted = second_look.look(image, alone, INPUT_SIZE)
        assert look.box == wanted.box and (look.crop is None) == (wanted.crop is None)
        for ours, theirs in zip(look.passes, wanted.passes, strict=True):
            assert all(np.allclose(ours[name], theirs[name], atol=1e-5) for name in theirs)


@pytest.mark.heavy
@pytest.mark.parametrize("name", FULL_PATH)
def test_transfer_from_a_weights_folder_to_the_app(name, stand_in_dir, transfer_data, tmp_path):
    """The whole ImageNet path on stand-in weights, ending in the app's own code on the export."""
    variant = smallest_variant(name)
    config = Config(data=str(transfer_data), run="transfer", output_dir=str(tmp_path / "runs"),
                    cache_dir=str(tmp_path / "cache"), backbones=[name], weights_dir=str(stand_in_dir),
                    image_size=variant.size, head_epochs=2, fine_tune_epochs=1)
    [row] = compare(config)
    folder = tmp_path / "runs" / "transfer" / variant.id
    resolved = read_json(folder / "config.json")
    frozen_until = variant.backbone.frozen_until
    assert resolved["weights"] == str(stand_in_dir / variant.weights_file)
    assert resolved["frozen_until"] == frozen_until
    bottoms = list((tmp_path / "cache").glob(f"{variant.id}-bottom-*.tflite"))
    assert not bottoms  # "auto": too few images to repay a LiteRT conversion of the bottom
    assert len(read_history(folder / "finetune_log.csv")) == 1  # phase 2 ran its epoch
    for file in ("labels.json", "confusion_matrix.csv", "confusion_matrix.png", "training_curves.png"):
        assert (folder / file).stat().st_size > 0, file
    assert set(read_json(folder / "metrics.json")["test"]["per_class"]) == set(CLASSES)
    # Random weights: the table says its accuracy is meaningless.
    assert row["stand_in_weights"] and f"**{LABEL}**: {variant.id}" in (folder.parent / "comparison.md").read_text()

    # Phase 2 trained above frozen_until only: below it, the weights are still the file's.
    model = keras.models.load_model(folder / "model.keras")
    trained, loaded = model.get_layer("backbone"), build_base(variant, stand_in_dir / variant.weights_file)
    cut = [layer.name for layer in loaded.layers].index(frozen_until)
    for before, after in zip(loaded.layers[: cut + 1], trained.layers[: cut + 1], strict=True):
        for saved, kept in zip(before.get_weights(), after.get_weights(), strict=True):
            np.testing.assert_array_equal(saved, kept)
    above = sum(layer.count_params() for layer in loaded.layers[cut + 1:]
                if not isinstance(layer, keras.layers.BatchNormalization))  # BatchNorm stays frozen
    assert row["params_trainable"] == above + model.get_layer("logits").count_params()

    # Export, then the app: its decoder and the exported file agree with the Keras model.
    card = export(folder, "float32", tmp_path / "deploy" / variant.id)
    assert card["litert_metrics"]["top1"] == pytest.approx(card["metrics"]["top1"])
    classifier = Classifier(tmp_path / "deploy" / variant.id)
    samples = scan(transfer_data).splits["test"]
    served = np.stack([classifier.predict(imaging.load_pixels(s.path, classifier.input_size)).probabilities
                       for s in samples])
    pixels = np.stack([imaging.load_pixels(s.path, (variant.size, variant.size)) for s in samples]).astype("float32")
    np.testing.assert_allclose(served, model.predict(pixels, verbose=0), atol=1e-3)
