"""Stage 4: the frozen part of the backbone, run once per image and cached on disk.

Both training phases leave the bottom of the backbone (up to the registry's `frozen_until`
layer) untouched, so its output for each image is computed once per (dataset split, backbone,
input size, weights) and kept in `.npz` files (float16, half the disk and memory; activations
need no more precision). Phase 1 pools them through the frozen top blocks for the head; phase 2
fine-tunes the top blocks on them directly. A rerun, a resumed run or another run on the same
data skips extraction altogether. This is what makes comparing several backbones, fine-tuning
included, practical on a 2-core CPU.

With augmentation on, the training split is also cached as `augment_views` augmented copies
(view 1, 2, ...), each drawn with its own seed; view 0 is always the plain images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
import numpy as np

from training import PROGRESS
from training.artifacts import atomic_path
from training.backbones import Variant
from training.config import Config
from training.dataset import augmentation, image_dataset
from training.folder import Dataset


def weights_id(weights: str | Path | None, seed: int) -> str:
    """What identifies the starting weights: the file's md5, or the seed of a random init."""
    if weights is None:
        return f"random-init-seed{seed}"
    return hashlib.md5(Path(weights).read_bytes()).hexdigest()


def cache_file(config: Config, dataset: Dataset, variant: Variant, weights_key: str, split: str, view: int) -> Path:
    """The cache file of one split (and augmented view), named by everything its content depends on."""
    parts = [dataset.fingerprint(split), variant.id, str(variant.size), weights_key, split, str(view)]
    if view > 0:
        parts += [str(config.seed), repr((config.flip, config.rotation, config.zoom, config.translation))]
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]
    return Path(config.cache_dir) / f"{variant.id}-{split}-view{view}-{key}.npz"


def extract(
    bottom: keras.Model, config: Config, dataset: Dataset, variant: Variant,
    weights_key: str, split: str, view: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(activations, labels) of one split and view, from the cache or computed and cached.

    `weights_key` names the starting weights and the layer whose output `bottom` gives.
    """
    path = cache_file(config, dataset, variant, weights_key, split, view)
    if path.is_file():
        with np.load(path) as cached:
            return cached["activations"], cached["labels"]
    samples = dataset.splits[split]
    augment = augmentation(config, seed=config.seed + 1000 * view) if view > 0 else None
    images = image_dataset(samples, variant.size, config.batch_size, augment=augment)
    print(f"  extracting {variant.id} features: {split}" + (f" (augmented view {view})" if view else ""))
    activations = bottom.predict(images, verbose=PROGRESS).astype("float16")
    labels = np.array([sample.label for sample in samples], dtype="int32")
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, activations=activations, labels=labels)
    return activations, labels


def training_activations(
    bottom: keras.Model, config: Config, dataset: Dataset, variant: Variant, weights_key: str
) -> tuple[np.ndarray, np.ndarray]:
    """The training split's plain activations followed by its augmented views, stacked."""
    views = [extract(bottom, config, dataset, variant, weights_key, "train", 0)]
    if config.augment:
        views += [extract(bottom, config, dataset, variant, weights_key, "train", view)
                  for view in range(1, config.augment_views + 1)]
    return np.concatenate([a for a, _ in views]), np.concatenate([y for _, y in views])
