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


def image_dataset(
    samples: list[Sample],
    size: int,
    batch_size: int,
    shuffle_seed: int | None = None,
    augment: keras.Sequential | None = None,
    loader: Callable[[int], np.ndarray] | None = None,
) -> tf.data.Dataset:
    """Batches of (float32 pixels 0..255, int label), decoded in parallel, in file order unless
    `shuffle_seed` is given, optionally augmented. `loader(i)` gives sample i's pixels instead of
    decoding its file, e.g. framed like a field photo (`training.field_augment.framed_loader`)."""
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
        # One batch at a time: the random layers draw from a seed generator whose state each call
        # advances, so batches augmented in parallel would take its draws in whatever order the
        # threads ran, and the same seed would give other views (and another model) on each run.
        # Prefetching still overlaps the augmentation with the model's work on the previous batch.
        dataset = dataset.map(lambda x, y: (augment(x, training=True), y))
    return dataset.prefetch(tf.data.AUTOTUNE)


def augmentation(config: Config, seed: int) -> keras.Sequential | None:
    """The training-time augmentation `config` asks for, or None when it is off."""
    if not config.augment:
        return None
    layers = []
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if config.rotation or config.zoom or config.translation:
        layers.append(RandomAffine(config.rotation, config.zoom, config.translation, seed=seed + 1))
    return keras.Sequential(layers, name="augment") if layers else None


class RandomAffine(keras.layers.Layer):
    """Random rotation, zoom and translation, applied as one warp of each image.

    Keras has a layer for each (`RandomRotation`, `RandomZoom`, `RandomTranslation`, with the
    same meaning of their factors), but chained they resample every image three times: three
    times the blur, and three times the cost, which was the bulk of feature extraction on a CPU.
    """

    def __init__(self, rotation: float, zoom: float, translation: float, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.translation = rotation, zoom, translation
        self.generator = keras.random.SeedGenerator(seed)

    def uniform(self, count, limit: float):
        return keras.random.uniform((count,), -limit, limit, seed=self.generator)

    def call(self, images):
        count, height, width = keras.ops.shape(images)[0], images.shape[1], images.shape[2]
        angle = self.uniform(count, self.rotation) * 2 * np.pi  # a fraction of a full turn
        scale = 1 + self.uniform(count, self.zoom)  # > 1 shows more of the image (zooms out)
        shift_x, shift_y = self.uniform(count, self.translation) * width, self.uniform(count, self.translation) * height
        # Each output pixel (x, y) reads the input at centre + scale * R(angle) (p - centre) + shift.
        cos, sin = keras.ops.cos(angle) * scale, keras.ops.sin(angle) * scale
        cx, cy = (width - 1) / 2, (height - 1) / 2
        zero = keras.ops.zeros_like(cos)
        transform = keras.ops.stack([
            cos, -sin, cx - cos * cx + sin * cy + shift_x,
            sin, cos, cy - sin * cx - cos * cy + shift_y,
            zero, zero,
        ], axis=1)
        return keras.ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="reflect")
