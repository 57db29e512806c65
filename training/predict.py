"""Classify images with a trained model folder: top-k classes and their probabilities.

The model takes raw RGB pixels (its preprocessing is inside it), and images are decoded by
`imaging`, exactly as in training, so these predictions are the ones the evaluation measured.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from runtime import imaging
from runtime.litert import ModelError
from runtime.model_folder import LABELS_FILE, read_labels
from training.artifacts import read_json, write_csv


def load_model_folder(folder: str | Path) -> tuple[keras.Model, list[str]]:
    """The Keras model and class names saved in a backbone folder by `compare`."""
    folder = Path(folder)
    for name in ("model.keras", LABELS_FILE):
        if not (folder / name).is_file():
            raise ModelError(f"{folder}: no {name} here; expected a folder written by "
                             "`python -m training compare`, e.g. saved_models/<run>/<backbone>")
    return keras.models.load_model(folder / "model.keras"), read_labels(folder)


def image_files(target: Path) -> list[Path]:
    """`target` itself, or the images in the folder `target` (recursively, hidden ones left out)."""
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise imaging.ImageError(f"{target}: no such file or folder")
    return sorted(p for p in target.rglob("*")
                  if p.suffix.lower() in imaging.IMAGE_EXTENSIONS and not p.name.startswith("."))


def predict(model: keras.Model, paths: list[Path], top_k: int, names: list[str]) -> list[dict]:
    """One row per image: its top-k class names with probabilities, or the reason it failed."""
    size = tuple(model.input.shape[1:3])
    rows = []
    for path in paths:
        try:
            pixels = imaging.load_pixels(path, size)
        except imaging.ImageError as error:
            rows.append({"image": str(path), "error": str(error)})
            continue
        probabilities = model.predict_on_batch(pixels[None].astype("float32"))[0]
        best = np.argsort(probabilities)[::-1][:top_k]
        rows.append({"image": str(path), "top": [(names[i], float(probabilities[i])) for i in best]})
    return rows


def run_predict(model_folder: str, target: str, top_k: int, names_file: str | None, output: str) -> None:
    """The `predict` command: print the top-k of each image, and for a folder write a CSV."""
    model, classes = load_model_folder(model_folder)
    if names_file:
        display = read_json(names_file)
        classes = [display.get(name, name) for name in classes]
    target_path = Path(target)
    rows = predict(model, image_files(target_path), top_k, classes)
    for row in rows:
        print(row["image"])
        if "error" in row:
            print(f"  skipped: {row['error']}")
        for name, probability in row.get("top", []):
            print(f"  {probability:7.2%}  {name}")
    if target_path.is_dir():
        write_csv(output, [csv_row(row, top_k) for row in rows])
        print(f"wrote {output} ({len(rows)} images)")


def csv_row(row: dict, top_k: int) -> dict:
    """A flat CSV row with the same columns for every image, failed ones included."""
    top = row.get("top", []) + [("", "")] * top_k
    flat = {"image": row["image"], "error": row.get("error", "")}
    for rank, (name, probability) in enumerate(top[:top_k], start=1):
        flat[f"top{rank}"] = name
        flat[f"p{rank}"] = round(probability, 6) if probability != "" else ""
    return flat
