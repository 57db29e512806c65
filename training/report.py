"""Stage 8b: a run's comparison table and charts, from the trained backbones' summaries.

    saved_models/<run>/
        comparison.{md,csv,json}   one row per backbone, best first (test top-1, then macro-F1)
        comparison.png             test top-1, top-5 and macro-F1 per backbone
        dataset.png                images per class and split

Everything here reads summaries and writes files; the training itself is `training.runner`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from training.artifacts import save_figure, write_csv, write_json, write_text
from training.folder import SPLITS, ImageFolder
from training.standin import LABEL as STAND_IN_LABEL

COLUMNS = ["rank", "backbone", "top1", "top5", "macro_f1", "ece", "ece_scaled", "unknown_auroc", "unknown_fpr95",
           "params_total", "params_trainable", "size_mb", "phase1_s", "phase2_s", "train_s", "latency_ms",
           "stand_in_weights", "best"]
# Measured since a later version: a summary without them says nothing about calibration or unknowns.
LATER_COLUMNS = {"ece": None, "ece_scaled": None, "unknown_auroc": None, "unknown_fpr95": None, "stand_in_weights": False}


def rank(rows: list[dict]) -> list[dict]:
    """The summaries best first (test top-1, then macro-F1), with their rank and the best one marked."""
    rows = sorted(rows, key=lambda r: (r["top1"], r["macro_f1"]), reverse=True)
    rows = [{"rank": i + 1, **LATER_COLUMNS, **row, "best": i == 0} for i, row in enumerate(rows)]
    return [{column: row[column] for column in COLUMNS} for row in rows]


def write_comparison(run_dir: Path, rows: list[dict]) -> list[dict]:
    """Rank the backbones and write the table in every format; returns the ranked rows."""
    rows = rank(rows)
    write_json(run_dir / "comparison.json", rows)
    write_csv(run_dir / "comparison.csv", rows)
    write_text(run_dir / "comparison.md", comparison_markdown(rows))
    plot_comparison(run_dir / "comparison.png", rows)
    return rows


def comparison_markdown(rows: list[dict]) -> str:
    """The table as Markdown; the notes under it say what the calibration and unknown columns mean."""
    header = ("| # | backbone | test top-1 | top-5 | macro-F1 | ECE (scaled) | unknown AUROC | unknown FPR@95 "
              "| params (total / trainable) | size MB | phase 1 s | phase 2 s | CPU ms/image |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [
        f"| {r['rank']} | {r['backbone']}{' **(best)**' if r['best'] else ''} | {r['top1']:.1%} | {r['top5']:.1%} "
        f"| {r['macro_f1']:.3f} | {percent(r['ece'])} ({percent(r['ece_scaled'])}) | {number(r['unknown_auroc'])} "
        f"| {percent(r['unknown_fpr95'])} | {r['params_total']:,} / {r['params_trainable']:,} | {r['size_mb']:.1f} "
        f"| {r['phase1_s']:.0f} | {r['phase2_s']:.0f} | {r['latency_ms']:.1f} |"
        for r in rows
    ]
    stand_ins = [r["backbone"] for r in rows if r["stand_in_weights"]]
    warning = f"\n**{STAND_IN_LABEL}**: {', '.join(stand_ins)}\n" if stand_ins else ""
    notes = ("\nECE: expected calibration error on the test split, as trained (after temperature scaling). "
             "Unknown: species held out of training (leave-species-out) told apart from known ones by the "
             "calibrated top probability; FPR@95: the share of them still answered when 95% of known images are.\n")
    return header + "\n".join(lines) + "\n" + notes + warning


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def plot_comparison(path: Path, rows: list[dict]) -> None:
    """Grouped bars of test top-1, top-5 and macro-F1 per backbone."""
    figure, axes = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    positions = np.arange(len(rows))
    for offset, key in zip((-0.25, 0, 0.25), ("top1", "top5", "macro_f1")):
        axes.bar(positions + offset, [r[key] for r in rows], width=0.25, label=key)
    axes.set_xticks(positions, [r["backbone"] + (" (best)" if r["best"] else "") for r in rows])
    axes.set_ylim(min(0.5, min(r["top1"] for r in rows) - 0.05), 1.0)
    stand_in = any(r["stand_in_weights"] for r in rows)
    axes.set_title("Backbones on the test split" + (f"\n{STAND_IN_LABEL}" if stand_in else ""))
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
