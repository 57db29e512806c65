"""Run an exported LiteRT classifier on a photo, and show where it looked.

The training pipeline exports each model as a *model folder*:

- `model.tflite`: one float32 input [1, H, W, 3] of raw RGB values 0..255 (all preprocessing
  is inside the model) and two outputs, `probabilities` [1, N] and `class_maps` [1, h, w, N],
  the per-location contribution to each class's logit (a class activation map, CAM).
- `labels.json`: the N class names, in output order.
- `model_card.json`: how the model was made and how well it did on the test split.

A *model root* holds model folders: the root itself and/or its direct subfolders.

Only the small LiteRT interpreter is needed to run them, not TensorFlow, so serving fits on a
512 MB dyno. This module knows nothing about Streamlit: the web app and the tests share it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from runtime.imaging import IMAGE_EXTENSIONS

MODEL_FILE = "model.tflite"
LABELS_FILE = "labels.json"
CARD_FILE = "model_card.json"
SAMPLES_FOLDER = "samples"

# The model card keys the app reads; the exporter may add more.
CARD_KEYS = ("backbone", "input_size", "classes", "quantization", "metrics", "litert_metrics")

# A "jet"-like colour map from cold to hot: dark blue, blue, cyan, yellow, red, dark red.
# 256 entries, so that it can serve as the palette of an 8-bit heat image.
_COLOUR_STOPS = np.array(
    [[0, 0, 128], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0], [128, 0, 0]], dtype=float
)
PALETTE = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_COLOUR_STOPS)), channel) for channel in _COLOUR_STOPS.T],
    axis=1,
).round().astype(np.uint8)


class ModelError(RuntimeError):
    """A model folder that cannot be served; the message names the file and the problem."""


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


class Classifier:
    """A loaded model folder, ready to predict.

    One instance is shared by every visitor: Streamlit serves each browser session from its own
    thread, and a LiteRT interpreter holds its input and output in shared buffers, so the
    set-input / invoke / read-output sequence runs under a lock.
    """

    def __init__(self, folder: Path, num_threads: int = 2) -> None:
        self.folder = folder
        self.name = folder.name
        self.labels: list[str] = _read_json(folder / LABELS_FILE, list)
        self.card: dict[str, Any] = _read_json(folder / CARD_FILE, dict)
        self._interpreter = _load_interpreter(folder / MODEL_FILE, num_threads)
        self._input, self._probabilities, self._class_maps = _find_tensors(self._interpreter, folder / MODEL_FILE)
        self.input_size: tuple[int, int] = tuple(int(n) for n in self._input["shape"][1:3])
        self._check_consistent()
        self._lock = threading.Lock()

    def _check_consistent(self) -> None:
        """Fail at load time, not on the first visitor, when the files disagree with each other."""
        classes = int(self._probabilities["shape"][-1])
        problems = []
        if len(self.labels) != classes:
            problems.append(f"{LABELS_FILE} has {len(self.labels)} labels but the model has {classes} outputs")
        if int(self._class_maps["shape"][-1]) != classes:
            problems.append(f"class_maps has {self._class_maps['shape'][-1]} classes, probabilities {classes}")
        if missing := [key for key in CARD_KEYS if key not in self.card]:
            problems.append(f"{CARD_FILE} lacks {', '.join(missing)}")
        elif list(self.card["classes"]) != self.labels:
            problems.append(f"the classes in {CARD_FILE} differ from {LABELS_FILE}")
        elif tuple(self.card["input_size"]) != self.input_size:
            problems.append(f"{CARD_FILE} says input size {self.card['input_size']}, the model {list(self.input_size)}")
        if problems:
            raise ModelError(f"{self.folder}: " + "; ".join(problems))

    def predict(self, pixels: np.ndarray) -> Prediction:
        """Classify one (H, W, 3) uint8 image, as returned by `imaging.load_pixels`."""
        if pixels.shape != (*self.input_size, 3):
            raise ValueError(f"expected pixels of shape {(*self.input_size, 3)}, got {pixels.shape}")
        batch = pixels[np.newaxis].astype(np.float32)
        with self._lock:
            self._interpreter.set_tensor(self._input["index"], batch)
            self._interpreter.invoke()
            # get_tensor returns copies, so the results survive the next visitor's invoke().
            probabilities = self._interpreter.get_tensor(self._probabilities["index"])[0]
            class_maps = self._interpreter.get_tensor(self._class_maps["index"])[0]
        return Prediction(self.labels, probabilities, class_maps)


def _read_json(path: Path, kind: type) -> Any:
    """Read a JSON file of the expected kind (list or dict), or say clearly what is wrong with it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path.parent}: {path.name} is missing") from None
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot be read as JSON ({error})") from None
    if not isinstance(value, kind):
        raise ModelError(f"{path}: expected a JSON {kind.__name__}, found a {type(value).__name__}")
    return value


def _load_interpreter(path: Path, num_threads: int) -> Interpreter:
    """Load and allocate a LiteRT interpreter, turning its terse errors into a ModelError."""
    if not path.is_file():
        raise ModelError(f"{path.parent}: {path.name} is missing")
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as error:
        raise ModelError(f"{path}: not a loadable LiteRT model ({error})") from None
    return interpreter


def _find_tensors(interpreter: Interpreter, path: Path) -> tuple[dict, dict, dict]:
    """The input, probabilities and class-maps tensor details of the model.

    The two outputs are told apart by rank (2 and 4): LiteRT names them after internal graph
    nodes (`StatefulPartitionedCall_1:0`, ...) and does not keep the order they were declared in.
    """
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    ranks = sorted(len(output["shape"]) for output in outputs)
    if len(inputs) != 1 or ranks != [2, 4]:
        raise ModelError(
            f"{path}: expected one input and two outputs of rank 2 (probabilities) and 4 (class maps), "
            f"found {len(inputs)} input(s) and outputs of rank {ranks}"
        )
    (image,) = inputs
    if len(image["shape"]) != 4 or image["shape"][-1] != 3 or image["dtype"] != np.float32:
        found = f"{image['dtype'].__name__} {list(image['shape'])}"
        raise ModelError(f"{path}: expected a float32 [1, H, W, 3] input, found {found}")
    by_rank = {len(output["shape"]): output for output in outputs}
    return image, by_rank[2], by_rank[4]


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
