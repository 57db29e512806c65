"""Augmentation and the feature cache: what phase 1 and phase 2 train on."""

from __future__ import annotations

import numpy as np
import pytest
from shapes import WEIGHTS, make_dataset

from training.backbones import parse_variant
from training.config import Config
from training.dataset import RandomAffine, augmentation, image_dataset
from training.features import LITERT_MIN_IMAGES, bottom_file, extract, uses_litert
from training.folder import scan
from training.model import bottom, build_classifier

MOBILENET = WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5"


def dot_images(count: int = 16, size: int = 64) -> np.ndarray:
    """Black images with one bright 3x3 dot in the exact centre."""
    images = np.zeros((count, size, size, 3), dtype="float32")
    middle = size // 2
    images[:, middle - 1:middle + 2, middle - 1:middle + 2] = 255
    return images


def centre_of_mass(images: np.ndarray) -> np.ndarray:
    """(count, 2) brightness-weighted centre (row, column) of each image."""
    weights = images.sum(axis=-1)
    rows, columns = np.indices(weights.shape[1:])
    total = weights.sum(axis=(1, 2))
    return np.stack([(weights * rows).sum(axis=(1, 2)) / total, (weights * columns).sum(axis=(1, 2)) / total], 1)


def test_augmentation_follows_the_config():
    assert augmentation(Config(data="x", augment=False), seed=1) is None
    assert augmentation(Config(data="x", flip=False, rotation=0, zoom=0, translation=0), seed=1) is None
    config = Config(data="x")
    layer = augmentation(config, seed=1)
    assert (layer.flip, layer.rotation, layer.zoom, layer.translation) == (True, config.rotation, config.zoom, config.translation)
    assert augmentation(Config(data="x", flip=False), seed=1).flip is False


def test_random_affine_flips_about_the_centre():
    """With flip alone, each image comes out as it was or as its mirror image, both in a batch."""
    images = np.random.default_rng(0).uniform(0, 255, (16, 32, 32, 3)).astype("float32")
    flipped = np.asarray(RandomAffine(0, 0, 0, flip=True, seed=3)(images))
    mirrored = [np.allclose(out, image[:, ::-1], atol=1e-3) for out, image in zip(flipped, images, strict=True)]
    kept = [np.allclose(out, image, atol=1e-3) for out, image in zip(flipped, images, strict=True)]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True))  # one or the other, exactly
    assert 0 < sum(mirrored) < len(images)


def test_random_affine_with_zero_factors_is_the_identity():
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(RandomAffine(0, 0, 0, seed=1)(images)), images, atol=1e-3)


def test_random_affine_rotates_and_zooms_about_the_centre_and_shifts_within_bounds():
    images = dot_images()
    middle = images.shape[1] // 2
    turned = np.asarray(RandomAffine(rotation=0.1, zoom=0.2, translation=0, seed=1)(images))
    np.testing.assert_allclose(centre_of_mass(turned), middle, atol=0.5)  # the centre stays put
    assert not np.allclose(turned, images, atol=1)  # ... while the images did change

    shifted = centre_of_mass(np.asarray(RandomAffine(rotation=0, zoom=0, translation=0.1, seed=1)(images)))
    offsets = np.abs(shifted - middle)
    assert offsets.max() <= 0.1 * images.shape[1] + 0.5  # at most 10% of the size
    assert offsets.max() >= 1  # and really moved


def test_random_affine_is_reproducible_from_its_seed_and_the_batch_index():
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    first, second, other = (np.asarray(RandomAffine(0.05, 0.1, 0.1, seed=s)(images)) for s in (7, 7, 8))
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other)
    layer = RandomAffine(0.05, 0.1, 0.1, flip=True, seed=7)
    np.testing.assert_array_equal(np.asarray(layer(images, index=5)), np.asarray(layer(images, index=5)))  # stateless
    assert not np.allclose(np.asarray(layer(images, index=5)), np.asarray(layer(images, index=6)))


def test_augmented_batches_are_the_same_on_every_pass(tmp_path):
    """The augmented views a run caches come from its seed alone: the pipeline drew them in
    whatever order its parallel threads ran (measured: up to 115 levels apart from one pass to
    the next, so the same seed trained another model)."""
    samples = scan(make_dataset(tmp_path / "data", counts=(12, 1, 1))).splits["train"]

    def views() -> np.ndarray:
        dataset = image_dataset(samples, 32, batch_size=2, augment=augmentation(Config(data="x"), seed=7))
        return np.concatenate([images.numpy() for images, _ in dataset])

    first = views()
    for _ in range(3):
        np.testing.assert_array_equal(views(), first)
    plain = np.concatenate([images.numpy() for images, _ in image_dataset(samples, 32, batch_size=2)])
    assert not np.allclose(first, plain)  # and they are augmented


def test_extraction_engine_choice():
    config, many = Config(data="x"), LITERT_MIN_IMAGES
    assert uses_litert(config, "conv_pw_11_relu", many)  # this machine has no GPU
    assert not uses_litert(config, "conv_pw_11_relu", many - 1)  # too few images to repay the conversion
    assert uses_litert(Config(data="x", extract_engine="litert"), "conv_pw_11_relu", 1)  # unless asked for
    assert not uses_litert(config, None, many)  # from scratch: nothing frozen, nothing to convert
    assert not uses_litert(Config(data="x", extract_engine="keras"), "conv_pw_11_relu", many)
    assert not uses_litert(Config(data="x", mixed_precision=True), "conv_pw_11_relu", many)


@pytest.mark.skipif(not MOBILENET.is_file(), reason="needs ../shared/weights (present in CI)")
def test_litert_and_keras_extract_the_same_features(tmp_path):
    """The fast CPU path (LiteRT) caches what TensorFlow would compute, to float16 rounding."""
    dataset = scan(make_dataset(tmp_path / "data", counts=(2, 2, 2)))
    variant = parse_variant("mobilenet:0.25")
    classifier = build_classifier(variant, len(dataset.classes), MOBILENET, dropout=0.2)
    frozen = bottom(classifier, "conv_pw_11_relu")
    results = {}
    for engine in ("keras", "litert"):
        config = Config(data="x", cache_dir=str(tmp_path / engine), extract_engine=engine)
        litert = bottom_file(config, variant, "key") if uses_litert(config, "conv_pw_11_relu", 6) else None
        results[engine] = extract(frozen, config, dataset, variant, "key", "valid", litert=litert)
        assert (litert is not None) == (engine == "litert") and (litert is None or litert.is_file())
    keras_features, litert_features = results["keras"], results["litert"]
    assert keras_features.activations.shape == litert_features.activations.shape == (6, 14, 14, 128)
    assert litert_features.pooled.shape == (6, 256)
    for name in ("activations", "pooled"):
        expected, actual = getattr(keras_features, name), getattr(litert_features, name)
        np.testing.assert_allclose(actual.astype("float32"), expected.astype("float32"),
                                   atol=0.01 * float(np.abs(expected).max()))
    np.testing.assert_array_equal(keras_features.labels, litert_features.labels)
