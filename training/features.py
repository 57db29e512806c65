"""Stage 4: the frozen part of the backbone, run once per image and cached on disk.

Both training phases leave the bottom of the backbone (up to the registry's `frozen_until`
layer) untouched, so its outputs for each image are computed once per (dataset split, backbone,
input size, weights) and kept in `.npz` files: the activations of `frozen_until`, on which
phase 2 fine-tunes the top blocks, and the pooled features of the whole frozen backbone, on
which phase 1 trains the head (float16: half the disk and memory; activations need no more
precision). A rerun, a resumed run or another run on the same data skips extraction altogether.
This is what makes comparing several backbones, fine-tuning included, practical on a 2-core CPU.

With augmentation on, the training split is also cached as `augment_views` augmented copies
(view 1, 2, ...), each drawn with its own seed; view 0 is always the plain images.

On a CPU the frozen bottom runs through LiteRT (`extract_engine = "auto"`): the same Keras model,
converted once (`model.to_litert`) and cached beside the features, computes the
same outputs (to float rounding) faster than TensorFlow (docs/BENCHMARKS.md), thanks to its
XNNPACK kernels for depthwise convolutions. The conversion itself takes seconds, which a few
thousand images repay: "auto" converts only for at least `LITERT_MIN_IMAGES` images to extract.
On a GPU, TensorFlow is the faster of the two.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from runtime.litert import LiteRTModel
from training import PROGRESS
from training.artifacts import atomic_path
from training.backbones import Variant
from training.config import Config
from training.dataset import augmentation, image_dataset
from training.field_augment import RECOMMENDED, framed_loader
from training.folder import ImageFolder
from training.model import to_litert

FORMAT = "3"  # bump when what a cache file holds changes, so old files are not misread (3: stateless augmentation)
# Below this many images to extract, "auto" keeps TensorFlow: bench/extraction.py measures a
# conversion of 3-9 s against 1.5-4 ms saved per image (break-even: about 1,000-6,000 images).
LITERT_MIN_IMAGES = 2000


@dataclass
class Features:
    """The cached outputs of the frozen bottom for one split (or several views stacked)."""

    activations: np.ndarray  # (n, h, w, c) at `frozen_until`: phase 2's input
    pooled: np.ndarray  # (n, channels) of the frozen backbone: phase 1's input
    labels: np.ndarray  # (n,) class indices

    @staticmethod
    def stack(parts: list[Features]) -> Features:
        return Features(*(np.concatenate([getattr(p, name) for p in parts]) for name in ("activations", "pooled", "labels")))


def cache_file(config: Config, dataset: ImageFolder, variant: Variant, weights_key: str, split: str, view: int) -> Path:
    """The cache file of one split (and augmented view), named by everything its content depends on."""
    parts = [FORMAT, dataset.fingerprint(split), variant.id, str(variant.size), weights_key, split, str(view)]
    if view > 0:
        parts += [str(config.seed), repr((config.flip, config.rotation, config.zoom, config.translation)),
                  f"field {config.field_share} {RECOMMENDED}"]
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]
    return Path(config.cache_dir) / f"{variant.id}-{split}-view{view}-{key}.npz"


def uses_litert(config: Config, frozen_until: str | None, images: int) -> bool:
    """Whether to run the frozen bottom through LiteRT for `images` images (views included): on
    a CPU, when there is a frozen part and enough images to repay the conversion."""
    if frozen_until is None or config.extract_engine == "keras":
        return False  # from scratch nothing is frozen: no conversion is worth its time
    if config.extract_engine == "litert":
        return True
    return (images >= LITERT_MIN_IMAGES and not tf.config.list_physical_devices("GPU")
            and not config.mixed_precision)


def bottom_file(config: Config, variant: Variant, weights_key: str) -> Path:
    """Where the LiteRT conversion of the frozen bottom is cached."""
    key = hashlib.sha256(f"{FORMAT}|{variant.id}|{variant.size}|{weights_key}".encode()).hexdigest()[:20]
    return Path(config.cache_dir) / f"{variant.id}-bottom-{key}.tflite"


def run_litert(bottom: keras.Model, path: Path, images: tf.data.Dataset, count: int) -> dict[str, np.ndarray]:
    """The outputs of `bottom` for every image, computed by its LiteRT conversion at `path`
    (converted on first use). One image per call: XNNPACK is fastest at batch size 1 here."""
    if not path.is_file():
        with atomic_path(path) as temporary:
            to_litert(bottom, temporary)
    model = LiteRTModel(path, list(bottom.output), num_threads=os.cpu_count())
    results = {name: np.empty((count, *shape), dtype="float16") for name, shape in model.output_shapes.items()}
    progress, done = keras.utils.Progbar(count, verbose=1 if PROGRESS == "auto" else PROGRESS), 0
    for batch, _ in images.as_numpy_iterator():
        for image in batch:
            for name, output in model(image).items():
                results[name][done] = output
            done += 1
        progress.update(done)
    return results


def extract(
    bottom: keras.Model, config: Config, dataset: ImageFolder, variant: Variant,
    weights_key: str, split: str, view: int = 0, litert: Path | None = None,
) -> Features:
    """The frozen outputs of one split and view, from the cache or computed and cached.

    `weights_key` names the starting weights and the layer `bottom` stops at; `litert`, if
    given, is where the bottom's LiteRT conversion is (or will be) cached.
    """
    path = cache_file(config, dataset, variant, weights_key, split, view)
    if path.is_file():
        with np.load(path) as cached:
            return Features(cached["activations"], cached["pooled"], cached["labels"])
    samples = dataset.splits[split]
    augment, framed = None, None
    if view > 0:  # an augmented view: some images framed like field photos, then every one augmented
        augment = augmentation(config, seed=config.seed + 1000 * view)
        framed = framed_loader([str(sample.path) for sample in samples], variant.size,
                               seed=config.seed + 1000 * view, share=config.field_share)
    images = image_dataset(samples, variant.size, config.batch_size, augment=augment, loader=framed)
    print(f"  extracting {variant.id} features: {split}" + (f" (augmented view {view})" if view else ""))
    if litert is not None:
        outputs = run_litert(bottom, litert, images, len(samples))
    else:
        outputs = {name: array.astype("float16") for name, array in bottom.predict(images, verbose=PROGRESS).items()}
    features = Features(outputs["activations"], outputs["pooled"],
                        np.array([sample.label for sample in samples], dtype="int32"))
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, activations=features.activations, pooled=features.pooled, labels=features.labels)
    return features


def training_features(
    bottom: keras.Model, config: Config, dataset: ImageFolder, variant: Variant, weights_key: str,
    litert: Path | None = None,
) -> Features:
    """The training split's plain features followed by those of its augmented views, stacked."""
    views = range(config.augment_views + 1 if config.augment else 1)
    return Features.stack([extract(bottom, config, dataset, variant, weights_key, "train", view, litert)
                           for view in views])
