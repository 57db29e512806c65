"""Stage 8: train every backbone of a run and write the comparison table.

    saved_models/<run>/
        run.json                      resolved config, dataset report and fingerprint
        <backbone>/model.keras        the fine-tuned classifier (raw RGB 0..255 in)
        <backbone>/labels.json        class names in output order
        <backbone>/metrics.json       test metrics, sizes, times (written last: "done")
        <backbone>/config.json        what this backbone was trained with
        <backbone>/confusion_matrix.{csv,png}, training_curves.png
        comparison.{md,csv,json,png}, dataset.png

A backbone is trained in resumable steps: cached features, then head weights, then fine-tuning
epochs, then the saved model and metrics. Running the same command again after an interruption
picks up at the first missing step; backbones with metrics are not retrained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

from training.artifacts import atomic_path, read_json, remove_orphans, save_figure, write_csv, write_json, write_text
from training.backbones import Variant, parse_variant, resolve_weights
from training.config import Config
from training.dataset import image_dataset
from training.evaluate import latency_ms, metrics, write_confusion, write_curves
from training.features import bottom_file, extract, training_features, uses_litert, weights_id
from training.finetune import fine_tune
from training.folder import SPLITS, ImageFolder, scan
from training.head import train_head
from training.model import bottom, build_classifier, head

# Settings that do not change a backbone's result, so a resumed run may differ in them.
NOT_RESULT_SETTINGS = {"backbones", "run", "output_dir", "cache_dir", "data", "weights_dir", "weight_files",
                       "frozen_until", "extract_engine"}  # extract_engine: same features to rounding
COLUMNS = ["rank", "backbone", "top1", "top5", "macro_f1", "params_total", "params_trainable",
           "size_mb", "phase1_s", "phase2_s", "train_s", "latency_ms", "best"]


class RunError(ValueError):
    """A run folder that cannot be resumed with the given settings."""


def compare(config: Config) -> list[dict]:
    """Train each backbone of `config` (resuming where possible) and write the comparison."""
    variants = [parse_variant(spec, config.image_size) for spec in config.backbones]
    weights_dir = Path(config.weights_dir) if config.weights_dir else None
    weights = {  # Resolved up front: a missing weights file stops the run before any training.
        v.id: resolve_weights(v, config.weights, weights_dir, config.weight_files.get(v.id)) for v in variants
    }
    dataset = scan(config.data, config.seed, config.split)
    print(dataset.report())
    resolved = {v.id: backbone_config(config, dataset, v, weights[v.id]) for v in variants}
    run_dir = config.run_dir
    for variant in variants:  # Refuse before writing anything.
        check_resumable(run_dir / variant.id, resolved[variant.id])
    for folder in (run_dir, Path(config.cache_dir)):
        remove_orphans(folder)
    write_json(run_dir / "run.json", {
        "config": config.to_dict(), "classes": dataset.classes, "dataset_fingerprint": dataset.fingerprint(),
        "layout": dataset.layout, "report": dataset.report(),
        "splits": {s: [str(sample.path) for sample in dataset.splits[s]] for s in SPLITS},
    })
    plot_dataset(run_dir / "dataset.png", dataset)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = tf.distribute.MirroredStrategy() if config.strategy == "mirrored" else tf.distribute.get_strategy()

    rows = []
    for variant in variants:
        print(f"\n== {variant.id} ({variant.size}x{variant.size}, weights: {weights[variant.id] or 'none'})")
        rows.append(train_backbone(config, dataset, variant, weights[variant.id], resolved[variant.id], strategy))
    rows = write_comparison(run_dir, rows)
    print("\n" + (run_dir / "comparison.md").read_text())
    return rows


def backbone_config(config: Config, dataset: ImageFolder, variant: Variant, weights) -> dict:
    """Everything a backbone's result depends on, saved beside it and checked on resume."""
    settings = {k: v for k, v in config.to_dict().items() if k not in NOT_RESULT_SETTINGS}
    # From scratch (no weights) nothing is worth freezing: phase 2 then trains every block.
    frozen_until = config.frozen_until.get(variant.id, variant.backbone.frozen_until) if weights else None
    return {
        "backbone": variant.id, "input_size": [variant.size, variant.size], "frozen_until": frozen_until,
        "fine_tune_learning_rate": config.fine_tune_learning_rate * variant.backbone.learning_rate_scale,
        "weights": str(weights) if weights else "none", "weights_id": weights_id(weights, config.seed),
        "dataset_fingerprint": dataset.fingerprint(), "classes": dataset.classes, "settings": settings,
    }


def check_resumable(folder: Path, resolved: dict) -> None:
    """Refuse to mix results made with other settings into this backbone's folder."""
    saved_path = folder / "config.json"
    if not saved_path.is_file():
        return
    saved = read_json(saved_path)
    resolved = json.loads(json.dumps(resolved))  # compare as saved: tuples become lists
    different = [k for k in resolved if k not in ("weights", "settings") and saved.get(k) != resolved[k]]
    different += [k for k, v in resolved["settings"].items() if saved.get("settings", {}).get(k) != v]
    if different:
        raise RunError(f"{folder} was trained with other settings ({', '.join(different)}); "
                       "use another --run name, or delete that folder to retrain it")


def train_backbone(config: Config, dataset: ImageFolder, variant: Variant, weights, resolved: dict, strategy) -> dict:
    """Train, evaluate and save one backbone, resuming from whatever steps are already done."""
    folder = config.run_dir / variant.id
    if (folder / "metrics.json").is_file():
        print(f"  already trained: {folder / 'metrics.json'}")
        return read_json(folder / "metrics.json")["summary"]
    write_json(folder / "config.json", resolved)

    keras.utils.set_random_seed(config.seed)  # the same initial weights on every resume
    with strategy.scope():
        classifier = build_classifier(variant, len(dataset.classes), weights, config.dropout)

    # Phase 1 and 2 both train on the cached outputs of the frozen bottom of the backbone.
    start, frozen_until = time.perf_counter(), resolved["frozen_until"]
    frozen, key = bottom(classifier, frozen_until), f"{resolved['weights_id']}@{frozen_until}"
    litert = bottom_file(config, variant, key) if uses_litert(config, frozen_until) else None
    train = training_features(frozen, config, dataset, variant, key, litert)
    valid = extract(frozen, config, dataset, variant, key, "valid", litert=litert)
    extract_s = time.perf_counter() - start

    head_weights, timing_path = folder / "head.weights.h5", folder / "timing.json"
    if head_weights.is_file():
        head(classifier).load_weights(head_weights)
        print(f"  phase 1 already done: {head_weights}")
    else:
        start = time.perf_counter()
        with strategy.scope():
            history = train_head(classifier, (train.pooled, train.labels), (valid.pooled, valid.labels), config)
        write_json(folder / "head_history.json", history)
        with atomic_path(head_weights) as temporary:
            head(classifier).save_weights(temporary)
        write_json(timing_path, {"extract_s": extract_s, "head_s": time.perf_counter() - start})
        best = int(np.argmin(history["val_loss"]))
        print(f"  phase 1: head trained {len(history['loss'])} epochs, best valid accuracy "
              f"{history['val_accuracy'][best]:.3f} ({time.perf_counter() - start:.0f} s)")

    finetune_history, start = [], time.perf_counter()
    if config.fine_tune:
        with strategy.scope():
            finetune_history = fine_tune(classifier, (train.activations, train.labels),
                                         (valid.activations, valid.labels), config, frozen_until,
                                         resolved["fine_tune_learning_rate"], folder)
    timing = read_json(timing_path)
    timing = {**timing, "phase1_s": timing["extract_s"] + timing["head_s"], "phase2_s": time.perf_counter() - start}

    return finish_backbone(folder, classifier, dataset, variant, timing, finetune_history)


def finish_backbone(folder: Path, classifier: keras.Model, dataset: ImageFolder, variant: Variant,
                    timing: dict, finetune_history: list[dict]) -> dict:
    """Evaluate on the test split, save the model and every result file; metrics.json last."""
    test = image_dataset(dataset.splits["test"], variant.size, batch_size=32)
    probabilities = classifier.predict(test, verbose=0)
    labels = np.array([sample.label for sample in dataset.splits["test"]])
    scores = metrics(labels, probabilities, dataset.classes)

    with atomic_path(folder / "model.keras") as temporary:
        classifier.save(temporary)
    write_json(folder / "labels.json", dataset.classes)
    write_confusion(folder, labels, probabilities.argmax(axis=1), dataset.classes)
    write_curves(folder, read_json(folder / "head_history.json"), finetune_history)

    pixels = next(iter(test))[0].numpy()
    summary = {
        "backbone": variant.id,
        "top1": scores["top1"], "top5": scores["top5"], "macro_f1": scores["macro_f1"],
        "params_total": int(classifier.count_params()),
        "params_trainable": int(sum(np.prod(w.shape) for w in classifier.trainable_weights)),
        "size_mb": (folder / "model.keras").stat().st_size / 1e6,
        "phase1_s": timing["phase1_s"], "phase2_s": timing["phase2_s"],
        "train_s": timing["phase1_s"] + timing["phase2_s"],
        "latency_ms": latency_ms(classifier, pixels),
    }
    write_json(folder / "metrics.json", {"summary": summary, "test": scores, "timing": timing})
    print(f"  test top-1 {scores['top1']:.3f}, top-5 {scores['top5']:.3f}, macro-F1 {scores['macro_f1']:.3f}")
    return summary


def write_comparison(run_dir: Path, rows: list[dict]) -> list[dict]:
    """Rank the backbones (test top-1, then macro-F1) and write the table in every format."""
    rows = sorted(rows, key=lambda r: (r["top1"], r["macro_f1"]), reverse=True)
    rows = [{"rank": i + 1, **row, "best": i == 0} for i, row in enumerate(rows)]
    rows = [{column: row[column] for column in COLUMNS} for row in rows]
    write_json(run_dir / "comparison.json", rows)
    write_csv(run_dir / "comparison.csv", rows)
    write_text(run_dir / "comparison.md", comparison_markdown(rows))
    plot_comparison(run_dir / "comparison.png", rows)
    return rows


def comparison_markdown(rows: list[dict]) -> str:
    header = ("| # | backbone | test top-1 | top-5 | macro-F1 | params (total / trainable) | size MB "
              "| phase 1 s | phase 2 s | CPU ms/image |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [
        f"| {r['rank']} | {r['backbone']}{' **(best)**' if r['best'] else ''} | {r['top1']:.1%} | {r['top5']:.1%} "
        f"| {r['macro_f1']:.3f} | {r['params_total']:,} / {r['params_trainable']:,} | {r['size_mb']:.1f} "
        f"| {r['phase1_s']:.0f} | {r['phase2_s']:.0f} | {r['latency_ms']:.1f} |"
        for r in rows
    ]
    return header + "\n".join(lines) + "\n"


def plot_comparison(path: Path, rows: list[dict]) -> None:
    """Grouped bars of test top-1, top-5 and macro-F1 per backbone."""
    figure, axes = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    positions = np.arange(len(rows))
    for offset, key in zip((-0.25, 0, 0.25), ("top1", "top5", "macro_f1")):
        axes.bar(positions + offset, [r[key] for r in rows], width=0.25, label=key)
    axes.set_xticks(positions, [r["backbone"] + (" (best)" if r["best"] else "") for r in rows])
    axes.set_ylim(min(0.5, min(r["top1"] for r in rows) - 0.05), 1.0)
    axes.set_title("Backbones on the test split")
    axes.legend()
    save_figure(path, figure)


def plot_dataset(path: Path, dataset: ImageFolder) -> None:
    """Images per class and split, stacked: shows imbalance at a glance."""
    figure, axes = plt.subplots(figsize=(max(6, 0.25 * len(dataset.classes)), 4))
    bottom = np.zeros(len(dataset.classes))
    for split in SPLITS:
        counts = np.array(dataset.counts(split))
        axes.bar(dataset.classes, counts, bottom=bottom, label=split)
        bottom += counts
    axes.tick_params(axis="x", rotation=90, labelsize=6)
    axes.set_ylabel("images")
    axes.set_title("Images per class")
    axes.legend()
    save_figure(path, figure)
