"""Stage 7c: what a `compare` run will do, and whether it can, worked out before TensorFlow starts.

A run's plan is its backbones, their starting weights, the scanned dataset, the field set to
measure, and each backbone's `BackboneSettings`, checked against a folder left by an earlier run.
None of it needs TensorFlow, so the command line makes the plan first (`training.__main__`): a
missing weights file, a dataset that cannot train, a field map naming no class of the data, or a
run folder trained with other settings each answer in a fraction of a second, not after the
several seconds of TensorFlow's start-up, and before anything is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training import field
from training.artifacts import read_json
from training.backbones import Variant, parse_variant, resolve_weights
from training.config import Config
from training.folder import ImageFolder, scan

# Settings that do not change a backbone's result, so a resumed run may differ in them.
NOT_RESULT_SETTINGS = {"backbones", "run", "output_dir", "cache_dir", "data", "weights_dir", "weight_files",
                       "frozen_until", "extract_engine", "subject",  # extract_engine: same features to rounding
                       "field_data", "field_map"}  # measured after training, never trained on


class RunError(ValueError):
    """A run folder that cannot be resumed with the given settings."""


def weights_id(weights: str | Path | None, seed: int) -> str:
    """What identifies the starting weights: the file's md5, or the seed of a random init."""
    if weights is None:
        return f"random-init-seed{seed}"
    return hashlib.md5(Path(weights).read_bytes()).hexdigest()


@dataclass(frozen=True)
class BackboneSettings:
    """Everything a backbone's result depends on, saved as its config.json and checked on resume."""

    backbone: str
    input_size: tuple[int, int]
    frozen_until: str | None  # None: from scratch, nothing frozen
    fine_tune_learning_rate: float  # the config's, scaled for the backbone
    weights: str  # where the starting weights came from; not checked on resume (a file may move)
    weights_id: str  # what they are: checked
    dataset_fingerprint: str
    classes: list[str]
    settings: dict[str, Any]  # the config, less `NOT_RESULT_SETTINGS`

    @classmethod
    def resolve(cls, config: Config, dataset: ImageFolder, variant: Variant, weights: Path | None) -> BackboneSettings:
        # From scratch (no weights) nothing is worth freezing: phase 2 then trains every block.
        frozen_until = config.frozen_until.get(variant.id, variant.backbone.frozen_until) if weights else None
        return cls(
            backbone=variant.id, input_size=(variant.size, variant.size), frozen_until=frozen_until,
            fine_tune_learning_rate=config.fine_tune_learning_rate * variant.backbone.learning_rate_scale,
            weights=str(weights) if weights else "none", weights_id=weights_id(weights, config.seed),
            dataset_fingerprint=dataset.fingerprint(), classes=dataset.classes,
            settings={k: v for k, v in config.to_dict().items() if k not in NOT_RESULT_SETTINGS},
        )

    def to_json(self) -> dict[str, Any]:
        """As saved in config.json: tuples become lists."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """The names of the settings in which a saved config.json differs from these."""
        mine = self.to_json()
        different = [k for k in mine if k not in ("weights", "settings") and saved.get(k) != mine[k]]
        return different + [k for k, v in mine["settings"].items() if saved.get("settings", {}).get(k) != v]


@dataclass(frozen=True)
class Plan:
    """A checked run of a config: `compare` trains `variants` in order, each from `weights[id]` with `settings[id]`."""

    variants: list[Variant]
    weights: dict[str, Path | None]  # None: random initial weights
    dataset: ImageFolder
    field_set: field.FieldSet | None
    settings: dict[str, BackboneSettings]


def make_plan(config: Config) -> Plan:
    """Resolve and check everything the run needs; raises the error that names what is wrong."""
    variants = [parse_variant(spec, config.image_size) for spec in config.backbones]
    weights_dir = Path(config.weights_dir) if config.weights_dir else None
    weights = {v.id: resolve_weights(v, config.weights, weights_dir, config.weight_files.get(v.id)) for v in variants}
    dataset = scan(config.data, config.seed, config.split)
    field_set = field.read(config.field_data, config.field_map, dataset.classes) if config.field_data else None
    settings = {v.id: BackboneSettings.resolve(config, dataset, v, weights[v.id]) for v in variants}
    for variant in variants:
        check_resumable(config.run_dir / variant.id, settings[variant.id])
    return Plan(variants, weights, dataset, field_set, settings)


def check_resumable(folder: Path, settings: BackboneSettings) -> None:
    """Refuse to mix results made with other settings into this backbone's folder."""
    saved = folder / "config.json"
    different = settings.differences(read_json(saved)) if saved.is_file() else []
    if different:
        raise RunError(f"{folder} was trained with other settings ({', '.join(different)}); "
                       "use another --run name, or delete that folder to retrain it")
