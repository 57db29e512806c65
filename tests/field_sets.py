"""Test helper: a field set for the shapes dataset (tests/shapes.py), generated on the fly.

Like leeds-field for butterflies50: photos of the known classes taken "elsewhere" (the shape
small, somewhere in a bigger noisy frame, so the field is harder than the test split), in folders
named unlike the classes and mapped to them, and optionally a folder of a species no class is
(yellow crosses), mapped to null.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from shapes import CLASSES, draw

from runtime import answer, imaging, second_look
from runtime.model_folder import BANK_FILE

PHOTOS = 3  # per folder


def frame(shape: Image.Image, rng: np.random.Generator, size: int = 80) -> Image.Image:
    """`shape` pasted at a random place in a bigger noisy frame."""
    photo = Image.fromarray(rng.integers(90, 160, (size, size, 3), dtype=np.uint8))
    x, y = (int(v) for v in rng.integers(0, size - shape.width + 1, 2))
    photo.paste(shape, (x, y))
    return photo


def cross(rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A yellow cross on noise: a shape and colour no class of the shapes dataset has."""
    image = Image.fromarray(rng.integers(90, 160, (size, size, 3), dtype=np.uint8))
    pen = ImageDraw.Draw(image)
    r, width = int(rng.integers(size // 5, size // 3)), 5
    x, y = (int(v) for v in rng.integers(r, size - r, 2))
    pen.line((x - r, y, x + r, y), fill=(230, 220, 40), width=width)
    pen.line((x, y - r, x, y + r), fill=(230, 220, 40), width=width)
    return image


def make_field_set(root: Path, unknown: bool = True, seed: int = 11) -> tuple[Path, Path]:
    """(images folder, mapping file) of a field set of the shapes classes, with an unknown folder or not."""
    rng = np.random.default_rng(seed)
    mapping: dict[str, str | None] = {}
    for index, kind in enumerate(CLASSES):
        folder = root / "images" / f"{index:02d}_{kind.split()[1]}s"  # e.g. 00_circles -> "red circle"
        folder.mkdir(parents=True)
        for number in range(PHOTOS):
            frame(draw(kind, rng), rng).save(folder / f"{number}.jpg", quality=95)
        mapping[folder.name] = kind
    if unknown:
        folder = root / "images" / "09_crosses"
        folder.mkdir(parents=True)
        for number in range(PHOTOS):
            frame(cross(rng), rng).save(folder / f"{number}.jpg", quality=95)
        mapping[folder.name] = None
    (root / "mapping.json").write_text(json.dumps(mapping, indent=1))
    return root / "images", root / "mapping.json"


def predict(folder: Path, paths: list[Path]) -> np.ndarray:
    """A trained backbone folder's saved model run by hand on `paths` (called, not `predict`, whose
    tracing costs seconds a model): its probabilities of the whole images, as the evaluate step tests."""
    import keras

    model = keras.models.load_model(folder / "model.keras", compile=False)
    pixels = np.stack([imaging.load_pixels(path, tuple(model.input.shape[1:3])) for path in paths]).astype("float32")
    return model(pixels, training=False).numpy()


def app_looks(folder: Path, paths: list[Path]) -> list[second_look.Look]:
    """A trained backbone folder's saved model run by hand on `paths` as the app looks at a photo:
    decoded for a crop, looked at whole and at the crop around its evidence (`runtime.second_look`)."""
    import keras

    from training.model import with_class_maps

    served = with_class_maps(keras.models.load_model(folder / "model.keras", compile=False))
    size = tuple(served.input.shape[1:3])

    def outputs(pixels: np.ndarray) -> dict[str, np.ndarray]:
        return {name: value[0].numpy() for name, value in served(pixels[None].astype("float32"), training=False).items()}

    return [second_look.look(second_look.decode(path, size), outputs, size) for path in paths]


def app_answers(folder: Path, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """As the app answers `paths` (`app_looks`): the probabilities of the passes' averaged logits,
    and the served unknown score of each photo's better look: the higher of its passes' scores
    (`runtime.answer.pass_score` by trust.json, with the folder's feature bank)."""
    settings = answer.served(json.loads((folder / "trust.json").read_text()))
    bank = np.load(folder / BANK_FILE)
    probabilities, scores = [], []
    for look in app_looks(folder, paths):
        logits = np.mean([passed["class_maps"].mean(axis=(0, 1)) for passed in look.passes], axis=0)
        probabilities.append(np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
        scores.append(max(answer.pass_score(passed, settings, bank) for passed in look.passes))
    return np.array(probabilities), np.array(scores)


def field_photos(images: Path, mapping_file: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """The photos of a field set, in the order of the mapping's folders, and their labels (-1: unknown)."""
    mapping = json.loads(mapping_file.read_text())
    paths = [path for name in sorted(mapping) for path in sorted((images / name).glob("*.jpg"))]
    return paths, np.array([-1 if mapping[p.parent.name] is None else classes.index(mapping[p.parent.name]) for p in paths])
