"""Stage 7: measure a trained classifier on the test split, and draw what happened in training.

Metrics come from scikit-learn; the figures from matplotlib. Latency is measured one image at
a time, as a web app serves, after a warm-up, and reported as the median.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, top_k_accuracy_score

from training.artifacts import save_figure, write_csv

# The test split's probabilities, as `np.savez` keeps them ("probabilities", in the split's order in
# run.json), beside metrics.json: what an ensemble of backbones averages (`training.ensemble`).
TEST_PREDICTIONS = "test.npz"


def metrics(labels: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    """Top-1, top-5, macro-F1 and per-class precision/recall of predicted `probabilities`."""
    everything = np.arange(len(classes))
    predicted = probabilities.argmax(axis=1)
    precision, recall, _, support = precision_recall_fscore_support(
        labels, predicted, labels=everything, zero_division=0
    )
    return {
        "top1": float(np.mean(predicted == labels)),
        "top5": float(top_k_accuracy_score(labels, probabilities, k=5, labels=everything))
        if len(classes) > 5 else 1.0,  # with five classes or fewer, the true one is always in the top 5
        "macro_f1": float(f1_score(labels, predicted, labels=everything, average="macro", zero_division=0)),
        "images": int(len(labels)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "support": int(s)}
            for name, p, r, s in zip(classes, precision, recall, support)
        },
    }


def write_confusion(folder: Path, labels: np.ndarray, predicted: np.ndarray, classes: list[str]) -> None:
    """The confusion matrix as `confusion_matrix.csv` (rows: true class) and `.png`."""
    matrix = confusion_matrix(labels, predicted, labels=np.arange(len(classes)))
    write_csv(folder / "confusion_matrix.csv",
              [{"true \\ predicted": name, **dict(zip(classes, map(int, row)))} for name, row in zip(classes, matrix)])
    size = max(6, len(classes) * 0.22)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
    axes.set_yticks(range(len(classes)), classes, fontsize=6)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title("Confusion matrix (test split)")
    save_figure(folder / "confusion_matrix.png", figure)


def write_curves(folder: Path, head_history: dict[str, list[float]], finetune_history: list[dict[str, float]]) -> None:
    """Loss and accuracy per epoch of both phases, as `training_curves.png`."""
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
    head_epochs = len(head_history.get("loss", []))
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = head_history.get(prefix + metric, []) + [row[prefix + metric] for row in finetune_history]
            axes.plot(range(1, len(values) + 1), values, style, label=f"{prefix or 'train_'}{metric}")
        if finetune_history:
            axes.axvline(head_epochs + 0.5, color="grey", linewidth=0.8)
            axes.text(head_epochs + 0.7, axes.get_ylim()[1], "fine-tuning", va="top", fontsize=8)
        axes.set_xlabel("epoch (phase 1: head on cached features, then phase 2)")
        axes.set_title(metric)
        axes.legend()
    save_figure(folder / "training_curves.png", figure)


def latency_ms(model: keras.Model, pixels: np.ndarray, runs: int = 20) -> float:
    """Median milliseconds to classify one image on this machine, after a warm-up."""
    batch = pixels[:1].astype("float32")
    model.predict_on_batch(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.predict_on_batch(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)
