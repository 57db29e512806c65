"""Stage 6 (phase 2): fine-tune the backbone's top blocks, resumable epoch by epoch.

The blocks above the registry's `frozen_until` layer are unfrozen with a low learning rate while
BatchNorm stays in inference mode, so small batches cannot wreck the ImageNet statistics. They
train on the cached activations of the frozen part (`features`): the plain training images and
their augmented views. That is the same computation as running the whole network on those
images, for a fraction of the cost of an epoch. Validation loss decides everything: training stops early when it no
longer improves, and the weights of the best epoch are kept. If no epoch beats the phase-1
model, the phase-1 model is kept.

Resuming: `keras.callbacks.BackupAndRestore` saves the training state after every epoch (two
copies, in case a kill lands mid-write) and restores it when the same run starts again. The
best weights so far, their loss (`finetune_state.json`) and the per-epoch history live in the
backbone folder, written atomically. The callbacks that write them run before the backup, so a
kill between the two repeats that epoch instead of losing its record; and the state says "done"
before the backup is deleted at the end, so a finished phase is never started over.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training import PROGRESS
from training.artifacts import atomic_path, read_json, write_json
from training.config import Config
from training.losses import classification_loss, one_hot
from training.model import top, unfreeze_top


class KeepBestWeights(keras.callbacks.Callback):
    """Save the weights whenever validation loss beats the best so far, atomically, and mark
    the phase done when training ends.

    Unlike `ModelCheckpoint`, the write cannot be left half done, and the best loss survives an
    interrupted run because it is stored next to the weights.
    """

    def __init__(self, weights_path: Path, state_path: Path):
        super().__init__()
        self.weights_path, self.state_path = weights_path, state_path

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("val_loss")
        if loss is not None and loss < read_json(self.state_path)["best_val_loss"]:
            with atomic_path(self.weights_path) as temporary:
                self.model.save_weights(temporary)
            write_json(self.state_path, {"best_val_loss": float(loss), "best_epoch": epoch + 1})

    def on_train_end(self, logs: dict | None = None) -> None:
        write_json(self.state_path, {**read_json(self.state_path), "done": True})


def batches(data: tuple[np.ndarray, np.ndarray], batch_size: int, seed: int | None = None) -> tf.data.Dataset:
    """Float32 batches of cached (float16) activations and targets, shuffled if `seed` is given."""
    dataset = tf.data.Dataset.from_tensor_slices(data)
    if seed is not None:
        dataset = dataset.shuffle(len(data[1]), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y)).prefetch(tf.data.AUTOTUNE)


def fine_tune(
    classifier: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    config: Config,
    frozen_until: str,
    learning_rate: float,
    folder: Path,
) -> list[dict[str, float]]:
    """Fine-tune `classifier` in place on cached activations at `learning_rate` (the config's,
    scaled for the backbone), leaving it with its best weights; returns the per-epoch history."""
    best_weights, state = folder / "best.weights.h5", folder / "finetune_state.json"
    unfreeze_top(classifier, frozen_until)
    model = top(classifier, frozen_until)
    train_batches = batches((train[0], one_hot(train[1], classifier)), config.batch_size, seed=config.seed)
    valid_batches = batches((valid[0], one_hot(valid[1], classifier)), config.batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=classification_loss(config),
        metrics=["accuracy"],
    )
    if not state.is_file():  # First start: the phase-1 model is the one to beat.
        baseline = model.evaluate(valid_batches, verbose=0, return_dict=True)["loss"]
        with atomic_path(best_weights) as temporary:
            model.save_weights(temporary)
        write_json(state, {"best_val_loss": baseline, "best_epoch": 0})
    if not read_json(state).get("done"):  # else finished before an interruption: keep it
        model.fit(
            train_batches,
            validation_data=valid_batches,
            epochs=config.fine_tune_epochs,
            shuffle=False,  # `batches` already reshuffles every epoch
            callbacks=[  # called in this order: the backup last, see the module docstring
                keras.callbacks.CSVLogger(str(folder / "finetune_log.csv"), append=True),
                keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.fine_tune_patience),
                KeepBestWeights(best_weights, state),
                keras.callbacks.BackupAndRestore(str(folder / "backup"), double_checkpoint=True),
            ],
            verbose=PROGRESS,
        )
    restore_best(classifier, frozen_until, folder)
    return read_history(folder / "finetune_log.csv")


def restore_best(classifier: keras.Model, frozen_until: str | None, folder: Path) -> None:
    """Load the best weights of phase 2 (saved in `folder`) into `classifier`, as it left them."""
    unfreeze_top(classifier, frozen_until)
    with warnings.catch_warnings():  # the optimizer state saved with the weights is not needed
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        top(classifier, frozen_until).load_weights(folder / "best.weights.h5")


def read_history(path: Path) -> list[dict[str, float]]:
    """The per-epoch log, one row per epoch (a resumed epoch logged twice counts once)."""
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        rows = {int(row["epoch"]): {k: float(v) for k, v in row.items()} for row in csv.DictReader(file)}
    return [rows[epoch] for epoch in sorted(rows)]
