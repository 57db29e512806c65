"""Running a LiteRT model of one image: load it, find its outputs by name, run it from many threads.

Training runs the frozen bottom of a backbone through LiteRT (outputs `activations` and `pooled`),
export checks the converted classifier with it and the app serves it (`probabilities` and
`class_maps`): all three go through `LiteRTModel`.

Outputs are found by name. The converter (`training.model.to_litert`, as `keras.Model.export`
with `format="litert"`) keeps the keys of a model's
output dict as the output names of the file's signature (`serving_default`), while the plain
tensor names are internal (`StatefulPartitionedCall_1:0`, ...) and their order is not the
declared one; so the signature runner, which speaks those names, runs the model. (A model with a
single, unnamed output gets the signature name `output_0`.)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter


class ModelError(ValueError):
    """A model file or model folder that cannot be used; the message names the file and the problem."""


class LiteRTModel:
    """A LiteRT model file with one float32 image input [1, H, W, 3] and named outputs.

    One instance may be shared by several threads (the app serves every browser session from its
    own thread): an interpreter keeps its input and outputs in shared buffers, so the
    set-input / invoke / read-outputs sequence runs under a lock.
    """

    def __init__(self, path: Path, outputs: Sequence[str], num_threads: int | None = None) -> None:
        self.path = path
        self.outputs = tuple(outputs)
        self._runner = _signature_runner(path, num_threads)
        self._input_name, self.input_size = _image_input(path, self._runner.get_input_details())
        found = self._runner.get_output_details()
        if missing := [name for name in self.outputs if name not in found]:
            raise ModelError(f"{path}: no output named {', '.join(missing)}; its outputs are {', '.join(sorted(found))}")
        # Per-image shapes (the batch axis dropped), for checks against the labels and the card.
        self.output_shapes = {name: tuple(int(n) for n in found[name]["shape"][1:]) for name in self.outputs}
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Each output for one (H, W, 3) image, without the batch axis."""
        if image.shape != (*self.input_size, 3):
            # The signature runner would resize the model's input to fit, and run it on the wrong size.
            raise ValueError(f"{self.path.name}: expected pixels of shape {(*self.input_size, 3)}, got {image.shape}")
        batch = image[np.newaxis].astype(np.float32, copy=False)
        with self._lock:
            # The runner returns copies, so the results survive the next thread's call.
            results = self._runner(**{self._input_name: batch})
        return {name: results[name][0] for name in self.outputs}


def _signature_runner(path: Path, num_threads: int | None):
    """Load and allocate the file's interpreter and return its only signature's runner, turning
    the interpreter's terse errors into a ModelError that names the file."""
    if not path.is_file():
        raise ModelError(f"{path.parent}: {path.name} is missing")
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as error:
        raise ModelError(f"{path}: not a loadable LiteRT model ({error})") from None
    try:
        return interpreter.get_signature_runner()
    except ValueError:
        signatures = ", ".join(interpreter.get_signature_list()) or "none"
        raise ModelError(f"{path}: expected one signature (keras.Model.export writes one), found {signatures}") from None


def _image_input(path: Path, inputs: dict[str, dict]) -> tuple[str, tuple[int, int]]:
    """The name and (height, width) of the model's only input, checked to be a float32 [1, H, W, 3] image."""
    if len(inputs) == 1:
        [(name, details)] = inputs.items()
        shape = [int(n) for n in details["shape"]]
        if details["dtype"] == np.float32 and len(shape) == 4 and shape[0] == 1 and shape[3] == 3:
            return name, (shape[1], shape[2])
    found = ", ".join(f"{details['dtype'].__name__} {[int(n) for n in details['shape']]}" for details in inputs.values())
    raise ModelError(f"{path}: expected one float32 [1, H, W, 3] image input, found {found or 'none'}")
