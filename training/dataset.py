"""Stage 2: turn checked samples into `tf.data` pipelines of raw RGB pixels and labels.

Images are decoded by `imaging.load_pixels`, the very function the web app calls on uploads,
so a photo reaches the model as the same pixels in training and in serving. Models take raw
0..255 pixels (their preprocessing is inside them); nothing here rescales.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import keras

import imaging
from training.config import Config
from training.folder import Sample


def image_dataset(
    samples: list[Sample],
    size: int,
    batch_size: int,
    shuffle_seed: int | None = None,
    augment: keras.Sequential | None = None,
) -> tf.data.Dataset:
    """Batches of (float32 pixels 0..255, int label), decoded in parallel, in file order unless
    `shuffle_seed` is given, optionally augmented."""
    paths = [str(sample.path) for sample in samples]
    labels = np.array([sample.label for sample in samples], dtype="int32")
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)

    def decode(path: bytes) -> np.ndarray:
        return imaging.load_pixels(path.decode(), (size, size))

    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
        pixels.set_shape((size, size, 3))
        return tf.cast(pixels, tf.float32), label

    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    if augment is not None:
        dataset = dataset.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def augmentation(config: Config, seed: int) -> keras.Sequential | None:
    """The training-time augmentation `config` asks for, or None when it is off."""
    if not config.augment:
        return None
    layers = []
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if config.rotation:
        layers.append(keras.layers.RandomRotation(config.rotation, fill_mode="reflect", seed=seed + 1))
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="reflect", seed=seed + 2))
    if config.translation:
        layers.append(keras.layers.RandomTranslation(
            config.translation, config.translation, fill_mode="reflect", seed=seed + 3))
    return keras.Sequential(layers, name="augment") if layers else None
