"""Test helpers: small generated datasets of coloured shapes, the CLI, and where ../shared lives.

Everything here is generated on the fly (no network, nothing from ../shared), so the suite runs
anywhere. Tests that need the real dataset or weights skip with a reason when ../shared is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
BUTTERFLIES = SHARED / "datasets" / "butterflies50"
WEIGHTS = SHARED / "weights"

# Easy classes: a coloured shape on a noisy background. Colour and shape both tell the class.
CLASSES = {"red circle": (220, 40, 40), "green square": (40, 200, 60), "blue triangle": (40, 70, 220)}


def draw(kind: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """One image of class `kind`, with random position, scale and background noise."""
    background = rng.integers(90, 160, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    pen = ImageDraw.Draw(image)
    r = int(rng.integers(size // 5, size // 3))
    x, y = (int(v) for v in rng.integers(r, size - r, 2))
    colour = CLASSES[kind]
    if "circle" in kind:
        pen.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    elif "square" in kind:
        pen.rectangle((x - r, y - r, x + r, y + r), fill=colour)
    else:
        pen.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=colour)
    return image


def make_dataset(root: Path, counts=(12, 4, 4), seed: int = 0, classes=CLASSES) -> Path:
    """A train/valid/test dataset of `classes` with `counts` images per class and split."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "valid", "test"), counts):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                draw(name, rng).save(folder / f"{index}.jpg", quality=95)
    return root


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `python -m training ...` in a fresh process, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
