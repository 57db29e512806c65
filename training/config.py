"""One experiment's settings: defaults, a TOML file (`--config`), then command-line overrides.

The resolved `Config` is saved next to every trained model, so a result always says exactly
how it was made, and a rerun of the same command can tell whether it may resume.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file or option that cannot be used; the message says which and why."""


@dataclass
class Config:
    data: str = ""  # a folder with train/ valid/ test/ of class folders, or one of class folders
    run: str = ""  # name of the run folder under `output_dir`; default: the dataset folder's name
    output_dir: str = "saved_models"
    cache_dir: str = ".cache/features"  # bottleneck features, shared by all runs on a dataset
    backbones: list[str] = field(default_factory=lambda: ["resnet50", "vgg16", "inceptionv3", "mobilenet"])

    # Starting weights: "imagenet", "none", or a weights file; `weights_dir` holds Keras' files
    # by their Keras names (offline); `weight_files` maps a backbone id to its own file.
    weights: str = "imagenet"
    weights_dir: str | None = None
    weight_files: dict[str, str] = field(default_factory=dict)
    image_size: int | None = None  # None: each backbone's own size (224, InceptionV3 299)

    seed: int = 1337
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # for a single folder of class folders
    batch_size: int = 64  # phase 2 and extraction; 64 halves Keras' per-step overhead on a CPU

    # Augmentation of training images; phase 1 caches `augment_views` augmented copies.
    augment: bool = True
    flip: bool = True
    rotation: float = 0.05  # fraction of a full turn
    zoom: float = 0.1
    translation: float = 0.1
    augment_views: int = 1

    # Both phases: the loss's target puts `label_smoothing` of its mass evenly on every class,
    # which keeps a 50-class head from growing overconfident on a few thousand images.
    label_smoothing: float = 0.1

    # Phase 1: the head (pooling -> dropout -> dense softmax) on cached features.
    dropout: float = 0.2
    head_epochs: int = 60
    head_learning_rate: float = 3e-3
    head_patience: int = 8

    # Phase 2: unfreeze the backbone's top blocks with a low learning rate.
    fine_tune: bool = True
    fine_tune_epochs: int = 16  # at 12, MobileNet and MobileNetV2 0.35 still improved in the last epoch
    # 1e-4 at batch 32, scaled with the batch; a registry entry's learning_rate_scale multiplies it
    # (MobileNet: 2x), and the rate used is saved in each backbone's config.json.
    fine_tune_learning_rate: float = 2e-4
    fine_tune_patience: int = 4
    # Per backbone id, the last layer kept frozen in phase 2 (default: the registry's choice).
    frozen_until: dict[str, str] = field(default_factory=dict)

    # What computes the cached features: "litert" (1.6-4x faster on a CPU), "keras" (TensorFlow,
    # the faster on a GPU), or "auto": LiteRT unless a GPU is visible or mixed precision is on.
    extract_engine: str = "auto"

    mixed_precision: bool = False
    strategy: str = "default"  # or "mirrored": all local GPUs

    def __post_init__(self) -> None:
        self.split = tuple(self.split)  # TOML and JSON give lists
        if self.extract_engine not in ("auto", "litert", "keras"):
            raise ConfigError(f"extract_engine must be 'auto', 'litert' or 'keras', not {self.extract_engine!r}")
        if self.strategy not in ("default", "mirrored"):
            raise ConfigError(f"strategy must be 'default' or 'mirrored', not {self.strategy!r}")
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-6 or min(self.split) <= 0:
            raise ConfigError(f"split must be three positive fractions adding to 1, not {self.split}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be at least 0 and below 1, not {self.label_smoothing}")
        if self.augment_views < 0 or self.batch_size < 1:
            raise ConfigError("augment_views must be >= 0 and batch_size >= 1")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / (self.run or Path(self.data).resolve().name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> Config:
    """Defaults, then the TOML file at `path` (if any), then `overrides` that are not None."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as file:
                values = tomllib.load(file)
        except OSError as error:
            raise ConfigError(f"{path}: cannot read the config file ({error.strerror})") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML ({error})") from None
    values.update({key: value for key, value in overrides.items() if value is not None})
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path or 'options'}: unknown setting(s) {', '.join(unknown)}")
    try:
        config = Config(**values)
    except ConfigError as error:  # say where the bad value came from
        raise ConfigError(f"{path or 'options'}: {error}") from None
    if not config.data:
        raise ConfigError("no dataset given: pass --data DIR or set data in the config file")
    return config
