"""Stage 2: turn checked samples into `tf.data` pipelines of raw RGB pixels and labels.

Images are decoded by `imaging.load_pixels`, the very function the web app calls on uploads,
so a photo reaches the model as the same pixels in training and in serving. Models take raw
0..255 pixels (their preprocessing is inside them); nothing here rescales.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from runtime import imaging
from training.config import Config
from training.folder import Sample

Augment = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (a batch of images, its index in the pass) -> the batch augmented


def image_dataset(
    samples: list[Sample],
    size: int,
    batch_size: int,
    shuffle_seed: int | None = None,
    augment: Augment | None = None,
    loader: Callable[[int], np.ndarray] | None = None,
) -> tf.data.Dataset:
    """Batches of (float32 pixels 0..255, int label), decoded in parallel, in file order unless
    `shuffle_seed` is given, optionally augmented: `augment(images, i)` for the i-th batch, so
    that each batch's randomness can come from its place in the pass, not from the order the
    parallel threads ran in. `loader(i)` gives sample i's pixels instead of decoding its file,
    e.g. framed like a field photo (`training.field_augment.framed_loader`)."""
    paths = [str(sample.path) for sample in samples]
    labels = np.array([sample.label for sample in samples], dtype="int32")
    dataset = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), labels))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)

    def decode(index: np.int64) -> np.ndarray:
        return loader(int(index)) if loader else imaging.load_pixels(paths[index], (size, size))

    def load(index: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = tf.numpy_function(decode, [index], tf.uint8, stateful=False)
        pixels.set_shape((size, size, 3))
        return tf.cast(pixels, tf.float32), label

    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    if augment is not None:
        dataset = dataset.enumerate().map(lambda i, batch: (augment(batch[0], i), batch[1]),
                                          num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def augmentation(config: Config, seed: int) -> RandomAffine | None:
    """The training-time augmentation `config` asks for, or None when it is off (or asks for nothing)."""
    if not config.augment or not (config.flip or config.rotation or config.zoom or config.translation):
        return None
    return RandomAffine(config.rotation, config.zoom, config.translation, flip=config.flip, seed=seed)


class RandomAffine(keras.layers.Layer):
    """Random horizontal flip, rotation, zoom and translation, applied as one warp of each image.

    Keras has a layer for each (`RandomFlip`, `RandomRotation`, `RandomZoom`, `RandomTranslation`,
    with the same meaning of their factors), but chained they resample every image three times:
    three times the blur, and three times the cost, which was the bulk of feature extraction on a
    CPU. And they draw from a seed generator whose state each call advances, so batches augmented
    in parallel took its draws in thread order: the same seed gave other views on every run
    (measured: up to 115 levels apart), hence other cached features and another model. Here the
    draws are stateless: batch `index` of a pass always gets the same ones, from (seed, index).
    """

    def __init__(self, rotation: float, zoom: float, translation: float, flip: bool = False, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.translation, self.flip, self.seed = rotation, zoom, translation, flip, seed

    def call(self, images, index=0):
        count, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
        seeds = tf.random.experimental.stateless_split(tf.stack([tf.constant(self.seed, tf.int64),
                                                                 tf.cast(index, tf.int64)]), 5)

        def uniform(draw: int, limit: float) -> tf.Tensor:
            return tf.random.stateless_uniform((count,), seeds[draw], -limit, limit)

        angle = uniform(0, self.rotation) * 2 * np.pi  # a fraction of a full turn
        scale = 1 + uniform(1, self.zoom)  # > 1 shows more of the image (zooms out)
        shift_x, shift_y = uniform(2, self.translation) * width, uniform(3, self.translation) * height
        mirror = tf.where(uniform(4, 1.0) < 0, -1.0, 1.0) if self.flip else tf.ones_like(angle)
        # Each output pixel p reads the input at centre + scale * R(angle) * M (p - centre) + shift,
        # where M = diag(mirror, 1) flips x about the centre.
        cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
        cx, cy = (width - 1) / 2, (height - 1) / 2
        zero = tf.zeros_like(cos)
        transform = tf.stack([
            cos * mirror, -sin, cx - cos * mirror * cx + sin * cy + shift_x,
            sin * mirror, cos, cy - sin * mirror * cx - cos * cy + shift_y,
            zero, zero,
        ], axis=1)
        return keras.ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="reflect")

