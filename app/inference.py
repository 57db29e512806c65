"""Run an exported LiteRT classifier on a photo, and show where it looked.

The training pipeline exports each model as a *model folder* (`runtime.model_folder` states what
it holds: model.tflite, labels.json, model_card.json); a *model root* holds model folders, the
root itself and/or its direct subfolders, and the sample photos.

Only the small LiteRT interpreter is needed to run them, not TensorFlow, so serving fits on a
512 MB dyno. This module knows nothing about Streamlit: the web app and the tests share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from runtime import answer, model_folder
from runtime.imaging import IMAGE_EXTENSIONS
from runtime.model_folder import CARD_FILE, LABELS_FILE, MODEL_FILE, SAMPLES_FOLDER

# A "jet"-like colour map from cold to hot: dark blue, blue, cyan, yellow, red, dark red.
# 256 entries, so that it can serve as the palette of an 8-bit heat image.
_COLOUR_STOPS = np.array(
    [[0, 0, 128], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0], [128, 0, 0]], dtype=float
)
PALETTE = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_COLOUR_STOPS)), channel) for channel in _COLOUR_STOPS.T],
    axis=1,
).round().astype(np.uint8)


@dataclass(frozen=True)
class Prediction:
    """What a model said about one image."""

    labels: Sequence[str]
    probabilities: np.ndarray  # (N,), sums to 1
    class_maps: np.ndarray  # (h, w, N): where in the image the evidence for each class lies

    def top_k(self, k: int = 5) -> list[tuple[str, float]]:
        """The `k` most probable classes as (label, probability), most probable first."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(self.labels[index], float(self.probabilities[index])) for index in order]

    def top_class_map(self) -> np.ndarray:
        """The (h, w) class map of the most probable class: what the heatmap shows."""
        return self.class_maps[..., int(np.argmax(self.probabilities))]

    @property
    def logits(self) -> np.ndarray:
        """The (N,) logits: the head is linear, so they are the class maps' mean over positions."""
        return answer.logits({"class_maps": self.class_maps})


class Classifier:
    """A loaded model folder, ready to predict.

    One instance is shared by every visitor (Streamlit serves each browser session from its own
    thread); its LiteRT model runs one call at a time.
    """

    def __init__(self, folder: Path, num_threads: int = 2) -> None:
        loaded = model_folder.load(folder, num_threads)
        self.folder = folder
        self.name = folder.name
        self.labels = loaded.labels
        self.card = loaded.card
        self.bank = loaded.bank  # the feature bank that the card's unknown score reads, if it reads one
        self.input_size = loaded.model.input_size
        self._model = loaded.model

    def predict(self, pixels: np.ndarray) -> Prediction:
        """Classify one (H, W, 3) uint8 image, as returned by `imaging.load_pixels`."""
        outputs = self.outputs(pixels)
        return Prediction(self.labels, outputs["probabilities"], outputs["class_maps"])

    def outputs(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """The model's raw outputs for one image, by name: what `runtime.second_look` calls."""
        return self._model(pixels)


def find_models(root: Path) -> list[Path]:
    """The model folders under `root`: the root itself and its direct subfolders with a model.tflite.

    Files that resolve outside the root (symlinks pointing elsewhere) are ignored, so the app only
    ever serves what was deliberately put under the root.
    """
    root = root.resolve()
    if not root.is_dir():
        return []
    candidates = [root, *sorted(child for child in root.iterdir() if child.is_dir())]
    return [folder for folder in candidates if _holds_model(folder, root)]


def _holds_model(folder: Path, root: Path) -> bool:
    """Whether `folder` has a model file and none of its model files lead outside `root`."""
    files = [folder / name for name in (MODEL_FILE, LABELS_FILE, CARD_FILE)]
    return files[0].is_file() and all(_is_inside(path, root) for path in files)


def _is_inside(path: Path, root: Path) -> bool:
    """Whether `path`, with every symlink followed, lies within `root` (an already resolved path)."""
    return path.resolve().is_relative_to(root)


def find_samples(root: Path) -> list[Path]:
    """The sample photos in `<root>/samples`, whose file names (stems) are their true classes."""
    folder = root.resolve() / SAMPLES_FOLDER
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and _is_inside(path, root.resolve())
    )


def heatmap(image: Image.Image, class_map: np.ndarray, opacity: float = 0.5) -> Image.Image:
    """Overlay a class map on `image`: red where the evidence for the class is strongest.

    As in the CAM paper, only positive evidence is shown (ReLU), scaled so that the strongest
    location is fully red whatever the logit scale. The coarse map (7x7 for a 224 MobileNet) is
    smoothed up to the photo's size by a bilinear resize, then coloured through a palette.
    """
    evidence = np.maximum(class_map, 0.0)
    peak = float(evidence.max())
    scaled = evidence / peak if peak > 0 else evidence
    heat = Image.fromarray(np.round(scaled * 255).astype(np.uint8)).resize(image.size, Image.Resampling.BILINEAR)
    heat.putpalette(PALETTE.tobytes())
    return Image.blend(image.convert("RGB"), heat.convert("RGB"), opacity)
