"""Classify images with a trained model folder: the answer, its unknown score, and the top-k classes.

The model takes raw RGB pixels (its preprocessing is inside it), and photos are decoded by
`runtime`, exactly as in training. Each photo gets the app's own treatment, from the same code:
a second look at the crop around the evidence (`runtime.second_look`), then the answer
(`runtime.answer`) with the temperature and "not sure" threshold measured in training
(`trust.json`, see `training.trust`). So the CSV says what the web page would.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from runtime import imaging, second_look
from runtime.answer import NEEDS_BANK, answer, logits, served, softmax
from runtime.litert import ModelError
from runtime.model_folder import LABELS_FILE, read_bank, read_labels
from training.artifacts import read_json, write_csv
from training.model import served_looks

TRUST_FILE = "trust.json"


def load_model_folder(folder: str | Path) -> tuple[keras.Model, list[str]]:
    """The Keras model and class names saved in a backbone folder by `compare`."""
    folder = Path(folder)
    for name in ("model.keras", LABELS_FILE, TRUST_FILE):
        if not (folder / name).is_file():
            raise ModelError(f"{folder}: no {name} here; expected a folder written by "
                             "`python -m training compare`, e.g. saved_models/<run>/<backbone>")
    return keras.models.load_model(folder / "model.keras"), read_labels(folder)


def folder_bank(folder: Path, model: keras.Model, trust: dict) -> np.ndarray | None:
    """The backbone folder's feature bank, checked against the model and trust.json (a ModelError
    naming the file otherwise), when trust.json's unknown score reads one; else None."""
    if trust["score"] not in NEEDS_BANK:
        return None
    channels = int(model.get_layer("logits").input.shape[-1])  # the pooled features the head reads
    return read_bank(folder, channels, trust["k"], TRUST_FILE)


def image_files(target: Path) -> list[Path]:
    """`target` itself, or the images in the folder `target` (recursively, hidden ones left out)."""
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise imaging.ImageError(f"{target}: no such file or folder")
    return sorted(p for p in target.rglob("*")
                  if p.suffix.lower() in imaging.IMAGE_EXTENSIONS and not p.name.startswith("."))


def predict(model: keras.Model, paths: list[Path], top_k: int, names: list[str], trust: dict,
            bank: np.ndarray | None = None) -> list[dict]:
    """One row per image: the answer ("not sure" or a class), its unknown score and the top-k
    classes with their calibrated probabilities, or the reason the image failed. `bank`: the
    folder's feature bank, for an unknown score that reads it."""
    size = tuple(model.input.shape[1:3])
    card = {"classes": names, "unknown": served(trust)}
    rows = [{"image": str(path)} for path in paths]
    readable: list[int] = []  # the indices of the photos decoded so far, in order

    def photos():
        """The photos that decode, one at a time (a batch of them in memory at once); a row for the others."""
        for index, path in enumerate(paths):
            try:
                photo = second_look.decode(path, size, str(path))
            except imaging.ImageError as error:
                rows[index]["error"] = str(error)
                continue
            readable.append(index)
            yield photo

    for order, seen in enumerate(served_looks(model, photos())):
        result = answer(seen.passes, card, bank)
        probabilities = softmax(logits(*seen.passes), card["unknown"]["temperature"])
        best = np.argsort(-probabilities, kind="stable")[:top_k]
        rows[readable[order]] |= {"answer": result.label if result.sure else "not sure", "score": result.score,
                                  "top": [(names[i], float(probabilities[i])) for i in best]}
    return rows


def run_predict(model_folder: str, target: str, top_k: int, names_file: str | None, output: str) -> None:
    """The `predict` command: print the top-k of each image, and for a folder write a CSV."""
    model, classes = load_model_folder(model_folder)
    if names_file:
        display = read_json(names_file)
        classes = [display.get(name, name) for name in classes]
    target_path = Path(target)
    trust = read_json(Path(model_folder) / TRUST_FILE)
    rows = predict(model, image_files(target_path), top_k, classes, trust, folder_bank(Path(model_folder), model, trust))
    for row in rows:
        print(row["image"])
        if "error" in row:
            print(f"  skipped: {row['error']}")
        else:
            print(f"  answer: {row['answer']} (unknown score {row['score']:.3f})")
        for name, probability in row.get("top", []):
            print(f"  {probability:7.2%}  {name}")
    if target_path.is_dir():
        write_csv(output, [csv_row(row, top_k) for row in rows])
        print(f"wrote {output} ({len(rows)} images)")


def csv_row(row: dict, top_k: int) -> dict:
    """A flat CSV row with the same columns for every image, failed ones included."""
    top = row.get("top", []) + [("", "")] * top_k
    score = row.get("score")
    flat = {"image": row["image"], "error": row.get("error", ""), "answer": row.get("answer", ""),
            "score": "" if score is None else round(score, 6)}
    for rank, (name, probability) in enumerate(top[:top_k], start=1):
        flat[f"top{rank}"] = name
        flat[f"p{rank}"] = round(probability, 6) if probability != "" else ""
    return flat
