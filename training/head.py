"""Stage 5 (phase 1): train the classifier's head on cached features, backbone frozen.

The head model shares its dropout and dense layers with the classifier (see `model.head`), so
fitting it on pooled features fits the classifier itself; no weights are copied. Early stopping
on validation loss keeps the best epoch.

The loss and its one-hot targets are shared with phase 2 (`training.losses`).
"""

from __future__ import annotations

import keras
import numpy as np

from training.config import Config
from training.losses import classification_loss, one_hot
from training.model import head


def train_head(
    classifier: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    config: Config,
) -> dict[str, list[float]]:
    """Fit the head on (features, class index) pairs; returns the Keras history."""
    model = head(classifier)
    model.compile(
        optimizer=keras.optimizers.Adam(config.head_learning_rate),
        loss=classification_loss(config),
        metrics=["accuracy"],
    )
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.head_patience, restore_best_weights=True
    )
    history = model.fit(
        train[0], one_hot(train[1], classifier),
        validation_data=(valid[0], one_hot(valid[1], classifier)),
        epochs=config.head_epochs,
        batch_size=256,  # a linear head on 12k feature vectors: big batches, few steps
        shuffle=True,
        callbacks=[stop],
        verbose=0,
    )
    return history.history
