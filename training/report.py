"""Stage 8b: a run's comparison table and charts, from the trained backbones' summaries.

    saved_models/<run>/
        comparison.{md,csv,json}   one row per backbone, best first (test top-1, then macro-F1), then
                                   the ensemble's (`training.ensemble`), never ranked nor best
        comparison.png             test top-1, top-5 and macro-F1 per row
        dataset.png                images per class and split

Everything here reads summaries and writes files; the training itself is `training.runner`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from training.artifacts import save_figure, write_csv, write_json, write_text
from training.field import FieldSet
from training.folder import SPLITS, ImageFolder
from training.standin import LABEL as STAND_IN_LABEL

# A field set's columns (`training.field.measure`), empty without one.
FIELD_COLUMNS = ["field_top1", "field_unknown_auroc", "field_unknown_fpr95", "field_answered", "field_right",
                 "field_not_sure"]
COLUMNS = ["rank", "backbone", "top1", "top5", "macro_f1", "ece", "ece_scaled", "unknown_auroc", "unknown_fpr95",
           *FIELD_COLUMNS, "params_total", "params_trainable", "size_mb", "phase1_s", "phase2_s", "train_s", "latency_ms",
           "stand_in_weights", "ensemble", "best"]
# Columns a summary may lack: measured since a later version (calibration, unknowns), or only
# with a field set; and only the ensemble's row is one.
OPTIONAL_COLUMNS = {"ece": None, "ece_scaled": None, "unknown_auroc": None, "unknown_fpr95": None,
                    **dict.fromkeys(FIELD_COLUMNS), "stand_in_weights": False, "ensemble": False}


def table_row(row: dict, rank: int | None, best: bool) -> dict:
    """A summary as a row of the table: every column, in order."""
    row = {"rank": rank, **OPTIONAL_COLUMNS, **row, "best": best}
    return {column: row[column] for column in COLUMNS}


def rank(rows: list[dict]) -> list[dict]:
    """The summaries best first (test top-1, then macro-F1), with their rank and the best one marked."""
    rows = sorted(rows, key=lambda r: (r["top1"], r["macro_f1"]), reverse=True)
    return [table_row(row, i + 1, i == 0) for i, row in enumerate(rows)]


def write_comparison(run_dir: Path, rows: list[dict], ensemble: dict | None = None,
                     field_set: FieldSet | None = None) -> list[dict]:
    """Rank the backbones, add the ensemble's row last (unranked, never best: export needs one
    model), and write the table in every format; returns its rows."""
    rows = rank(rows) + ([table_row(ensemble, None, False)] if ensemble else [])
    write_json(run_dir / "comparison.json", rows)
    write_csv(run_dir / "comparison.csv", rows)
    write_text(run_dir / "comparison.md", comparison_markdown(rows, field_set))
    plot_comparison(run_dir / "comparison.png", rows)
    return rows


def comparison_markdown(rows: list[dict], field_set: FieldSet | None = None) -> str:
    """The table as Markdown; the notes under it say what the calibration, unknown, field and
    ensemble columns mean."""
    header = ("| # | backbone | test top-1 | top-5 | macro-F1 | ECE (scaled) | unknown AUROC | unknown FPR@95 "
              "| field top-1 | field unknown AUROC | field FPR@95 | field answered / right / unknown \"not sure\" "
              "| params (total / trainable) | size MB | phase 1 s | phase 2 s | CPU ms/image |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [
        f"| {'ensemble' if r['ensemble'] else r['rank']} | {r['backbone']}{' **(best)**' if r['best'] else ''} "
        f"| {r['top1']:.1%} | {r['top5']:.1%} | {r['macro_f1']:.3f} | {percent(r['ece'])} ({percent(r['ece_scaled'])}) "
        f"| {number(r['unknown_auroc'])} | {percent(r['unknown_fpr95'])} | {percent(r['field_top1'])} "
        f"| {number(r['field_unknown_auroc'])} | {percent(r['field_unknown_fpr95'])} "
        f"| {percent(r['field_answered'])} / {percent(r['field_right'])} / {percent(r['field_not_sure'])} "
        f"| {r['params_total']:,} / {r['params_trainable']:,} | {r['size_mb']:.1f} "
        f"| {r['phase1_s']:.0f} | {r['phase2_s']:.0f} | {r['latency_ms']:.1f} |"
        for r in rows
    ]
    stand_ins = [r["backbone"] for r in rows if r["stand_in_weights"]]
    warning = f"\n**{STAND_IN_LABEL}**: {', '.join(stand_ins)}\n" if stand_ins else ""
    notes = ("\nECE: expected calibration error on the test split, as the app shows it (whole image and second "
             "look averaged), as trained (after temperature scaling; the ensemble's: whole images). "
             "Unknown: species held out of the head (leave-species-out: a head refitted without them on the "
             "fine-tuned features) told apart from known ones by the "
             "served unknown score (calibrated top probability and kNN similarity to the feature bank, their "
             "ranks averaged; the ensemble's: the calibrated top probability); FPR@95: the share of them still "
             "answered when 95% of known images are. The backbone was fine-tuned with those species, so this "
             "flatters a fine-tuned model: bench/held_out.py retrains without them for the honest figure. "
             + field_note(field_set) + "\n")
    if any(r["ensemble"] for r in rows):
        notes += ("\nEnsemble: the backbones above, their probabilities averaged; its temperature is fitted on their "
                  "averaged validation probabilities, and its unknown columns average their predictions on the same "
                  "held-out species and field photos. Parameters, size, times and latency are the members' sums "
                  "(on a CPU they run one after the other). Never the best row: export needs a single model.\n")
    return header + "\n".join(lines) + "\n" + notes + warning


def field_note(field_set: FieldSet | None) -> str:
    """What the field columns measured, or how to fill them."""
    if field_set is None:
        return "Field columns: – without a field set (--field-data DIR --field-map FILE)."
    return (f"Field: {field_set.summary()}, never trained on, each answered as the app answers it (the "
            "whole photo and a second look at the crop around its evidence); top-1 on the known species' photos; "
            "unknown: its unknown species' photos told apart from the known ones by the served unknown score "
            "(of the better look, whole photo or crop); "
            "at the \"not sure\" threshold (chosen on held-out species): the share of known photos answered, of "
            "those answers right, and of unknown photos answered \"not sure\".")


def percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def plot_comparison(path: Path, rows: list[dict]) -> None:
    """Grouped bars of test top-1, top-5 and macro-F1 per row (the ensemble's too)."""
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
