"""The loss both training phases share: cross-entropy on one-hot targets with label smoothing.

Keras' sparse cross-entropy has no smoothing, and phase 2 must judge its epochs against the
phase-1 head by the very same validation loss, so both phases build their targets and loss here.
"""

from __future__ import annotations

import keras
import numpy as np

from training.config import Config


def classification_loss(config: Config) -> keras.losses.Loss:
    """Cross-entropy on one-hot targets (see `one_hot`), smoothed by `config.label_smoothing`."""
    return keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)


def one_hot(labels: np.ndarray, classifier: keras.Model) -> np.ndarray:
    """Class indices as one-hot rows, one column per output of `classifier`."""
    return keras.utils.to_categorical(labels, classifier.output.shape[-1])
