"""Stage 9: turn a trained backbone into a deployable LiteRT folder for the web app.

    saved_models/deploy/<backbone>[-<quantization>]/   a model folder (`runtime.model_folder`):
        model.tflite, labels.json, model_card.json, feature_bank.npy
    saved_models/deploy/samples/, comparison.{json,md}   for the app's sample picker and table

The exported model is the classifier with its class-activation-map and pooled-feature outputs
(`model.with_class_maps`), preprocessing included, so the app only decodes and resizes (with
`imaging`, as training did); beside it goes the feature bank that the unknown score reads
(`training.trust`).
The export checks itself: the `.tflite` file is run on the test split, and a quantized variant
that loses more than one point of top-1 accuracy against the Keras model is refused.
"""

from __future__ import annotations

import datetime
import platform
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from runtime import answer, imaging
from runtime.litert import LiteRTModel, ModelError
from runtime.model_folder import (
    BANK_FILE,
    CARD_FILE,
    CONFUSION_FILE,
    LABELS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    OUTPUTS,
    SAMPLES_FOLDER,
    ModelCard,
)
from training.artifacts import atomic_path, read_json, write_json, write_text
from training.evaluate import metrics
from training.model import to_litert, with_class_maps
from training.predict import folder_bank, load_model_folder

MAX_QUANTIZATION_LOSS = 0.01  # top-1, absolute: one point
SAMPLES = 6  # sample images offered by the app

# Converter settings for each variant (`training.model.to_litert`).
QUANTIZATION = {
    "float32": {},
    "float16": {"optimizations": [tf.lite.Optimize.DEFAULT], "supported_types": [tf.float16]},
    "int8": {"optimizations": [tf.lite.Optimize.DEFAULT]},  # dynamic range: int8 weights
}


class ExportError(ValueError):
    """An export that cannot be made or that fails its own accuracy check."""


def litert_probabilities(path: Path, images: list[np.ndarray]) -> np.ndarray:
    """The exported file's probabilities for each image, stacked; read by output name, as the app does."""
    model = LiteRTModel(path, OUTPUTS, num_threads=2)
    return np.stack([model(image)["probabilities"] for image in images])


def best_backbone(run: Path) -> Path:
    """The backbone folder ranked first in a run's comparison table."""
    table = run / "comparison.json"
    if not table.is_file():
        raise ExportError(f"{run}: no comparison.json; train the run first with `python -m training compare`")
    [best] = [row for row in read_json(table) if row["best"]]
    return run / best["backbone"]


def export(folder: Path, quantize: str, out: Path) -> dict:
    """Export the backbone in `folder` to `out`; returns the model card."""
    run = read_run(folder.parent / "run.json")
    test_paths, test_names = run["splits"]["test"], run["labels"]["test"]
    model, classes = load_model_folder(folder)
    saved = read_json(folder / "metrics.json")
    measured = read_trust(folder)
    folder_bank(folder, model, measured)  # checked before the slow conversion; copied as it is
    size = tuple(model.input.shape[1:3])
    images = [imaging.load_pixels(path, size) for path in test_paths]
    labels = np.array([classes.index(name) for name in test_names])

    print(f"exporting {folder} ({quantize}) to {out}")
    with atomic_path(out / MODEL_FILE) as temporary:
        to_litert(with_class_maps(model), temporary, **QUANTIZATION[quantize])
        exported = metrics(labels, litert_probabilities(temporary, images), classes)
        loss = saved["test"]["top1"] - exported["top1"]
        if quantize != "float32" and loss > MAX_QUANTIZATION_LOSS:
            raise ExportError(
                f"{quantize} export of {folder} refused: test top-1 {exported['top1']:.1%} is "
                f"{loss:.1%} below the Keras model's {saved['test']['top1']:.1%} (limit "
                f"{MAX_QUANTIZATION_LOSS:.0%}); use a wider variant, e.g. --quantize float16"
            )
    card = ModelCard(
        backbone=saved["summary"]["backbone"],
        input_size=list(size),
        classes=classes,
        quantization=quantize,
        metrics={k: saved["test"][k] for k in ("top1", "top5", "macro_f1")},
        litert_metrics={k: exported[k] for k in ("top1", "top5", "macro_f1")},
        unknown=answer.served(measured),
        subject=run["config"].get("subject", "class"),
    ).to_json(
        unknown_measured={"held_out": measured["held_out"], "scores": measured["scores"]},
        stand_in_weights=saved["summary"].get("stand_in_weights", False),  # random weights: accuracy meaningless
        test_images=len(test_paths),
        dataset_fingerprint=run["dataset_fingerprint"],
        size_bytes=(out / MODEL_FILE).stat().st_size,
        source=str(folder),
        versions={"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__},
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    write_json(out / LABELS_FILE, classes)
    if card["unknown"]["score"] in answer.NEEDS_BANK:
        with atomic_path(out / BANK_FILE) as temporary:
            shutil.copyfile(folder / BANK_FILE, temporary)
    write_json(out / CARD_FILE, card)
    for name in (METRICS_FILE, CONFUSION_FILE):  # per-class figures for the app's About page
        write_text(out / name, (folder / name).read_text(encoding="utf-8"))
    copy_extras(folder, test_paths, test_names, out.parent)
    print(f"  test top-1: Keras {saved['test']['top1']:.1%}, LiteRT {exported['top1']:.1%}; "
          f"{card['size_bytes'] / 1e6:.1f} MB")
    return card


def read_run(run_file: Path) -> dict:
    """A run's run.json, which names the images of each split (`splits`) and their classes (`labels`)."""
    run = read_json(run_file)
    if "labels" not in run:
        raise ExportError(f"{run_file}: no class labels of the splits (written by an older version); run the same "
                          "`python -m training compare` command again: it rewrites run.json and keeps the trained models")
    return run


def read_trust(folder: Path) -> dict:
    """The temperature and "not sure" threshold measured in training (`training.trust`)."""
    path = folder / "trust.json"
    if not path.is_file():
        raise ExportError(f"{folder}: no trust.json (trained by an older version); run the same `python -m training "
                          "compare` command again with a new --run name to measure the temperature and threshold")
    return read_json(path)


def copy_extras(folder: Path, test_paths: list[str], test_names: list[str], root: Path) -> None:
    """Give the app its sample images (a few test images, named by class) and the run's table."""
    by_class = {name: Path(path) for path, name in sorted(zip(test_paths, test_names))}
    names = sorted(by_class)
    for name in names[:: max(1, len(names) // SAMPLES)][:SAMPLES]:
        target = root / SAMPLES_FOLDER / f"{name}{by_class[name].suffix.lower()}"
        with atomic_path(target) as temporary:
            shutil.copyfile(by_class[name], temporary)
    for table in ("comparison.json", "comparison.md"):
        if (folder.parent / table).is_file():
            write_text(root / table, (folder.parent / table).read_text(encoding="utf-8"))


def run_export(model: str | None, run: str | None, best: bool, quantize: str, out: str | None) -> None:
    """The `export` command."""
    if run and not best:
        raise ExportError("--run needs --best (or pass --model saved_models/<run>/<backbone>)")
    folder = best_backbone(Path(run)) if run else Path(model)
    if not (folder / "metrics.json").is_file():
        raise ModelError(f"{folder}: no metrics.json; expected a backbone folder trained by compare")
    suffix = "" if quantize == "float32" else f"-{quantize}"
    export(folder, quantize, Path(out) if out else Path("saved_models/deploy") / f"{folder.name}{suffix}")
