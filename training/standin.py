"""Stand-in weights: randomly initialised backbones saved as if they were Keras' ImageNet files.

The ImageNet transfer path (a weights file loaded through `--weights-dir`, the frozen bottom
run through LiteRT, fine-tuning above `frozen_until`, export) is only exercised by runs that
start from a weights file. Stand-in files let that path run offline, in tests and CI, for every
registry backbone: each is the backbone built with its random initialisation (seeded, so the
same command writes the same file) and saved in Keras' legacy `.h5` weight format under Keras'
own file name, which is exactly what `keras.applications.X(weights=<file>)` loads.

They carry the attribute `STAND_IN` in the file, so a run started from one knows it (see
`is_stand_in`): its accuracy says nothing about the backbone and must be labelled as such.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import keras
from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

from training.artifacts import atomic_path
from training.backbones import REGISTRY, Variant, build_base, parse_variant

STAND_IN = "stand_in_weights"  # file attribute: its value says what the file is
LABEL = "stand-in weights (random): accuracy meaningless"


def write_stand_in_weights(variant: Variant, folder: str | Path, seed: int = 0) -> Path:
    """Write `variant`'s random initial weights to `folder/<Keras' file name>` and return the path.

    Keras names a layer it was given no name by counting, per session; clearing the session
    first gives every file the same layer names, so the same seed writes the same bytes.
    """
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    base = build_base(variant, None)
    path = Path(folder) / variant.weights_file
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as file:
        save_weights_to_hdf5_group(file, base)
        file.attrs[STAND_IN] = f"random initialisation, seed {seed}: {LABEL}"
    return path


def is_stand_in(weights: str | Path | None) -> bool:
    """Whether `weights` is a stand-in file written by `write_stand_in_weights`."""
    if weights is None or not h5py.is_hdf5(weights):
        return False
    with h5py.File(weights, "r") as file:
        return STAND_IN in file.attrs


def write_all(folder: str | Path, specs: list[str] | None = None, seed: int = 0) -> list[Path]:
    """Stand-in files for `specs` (e.g. `["resnet50", "mobilenet:0.25"]`; default: every
    registry backbone at its default width), one per distinct Keras file name."""
    variants = [parse_variant(spec) for spec in specs or list(REGISTRY)]
    return [write_stand_in_weights(variant, folder, seed) for variant in variants]
