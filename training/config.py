"""One experiment's settings: defaults, a TOML file (`--config`), then command-line overrides.

The resolved `Config` is saved next to every trained model, so a result always says exactly
how it was made, and a rerun of the same command can tell whether it may resume.

Every setting is checked before any work, by name: its type (a TOML string where a number
belongs), its range, the backbones against the registry, and the places results go. A bad one
is a `ConfigError` that says which setting, from where (the file or the options), and why.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file or option that cannot be used; the message says which and why."""

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting  # the setting at fault, so that `load_config` can say where it came from


# What each numeric setting must be: a test, and how the message says it. Checked before any
# work, because a negative epoch count or a zero learning rate would otherwise fail deep inside
# Keras with a traceback, or train a model that means nothing.
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "seed": (lambda v: 0 <= v < 2**32, "from 0 to 2**32 - 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "augment_views": (lambda v: v >= 0, "at least 0"),
    "rotation": (lambda v: 0 <= v <= 0.5, "from 0 to 0.5 (a fraction of a full turn)"),
    "zoom": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "translation": (lambda v: 0 <= v <= 1, "from 0 to 1 (a fraction of the image's size)"),
    "field_share": (lambda v: 0 <= v <= 1, "from 0 to 1 (a share of the training images)"),
    "label_smoothing": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "dropout": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "head_epochs": (lambda v: v >= 1, "at least 1"),
    "head_learning_rate": (lambda v: v > 0, "above 0"),
    "head_patience": (lambda v: v >= 0, "at least 0"),
    "fine_tune_epochs": (lambda v: v >= 1, "at least 1 (--no-fine-tune skips phase 2)"),
    "fine_tune_learning_rate": (lambda v: v > 0, "above 0"),
    "fine_tune_patience": (lambda v: v >= 0, "at least 0"),
}
CHOICES = {"extract_engine": ("auto", "litert", "keras"), "strategy": ("default", "mirrored")}


@dataclass
class Config:
    data: str = ""  # a folder with train/ valid/ test/ of class folders, or one of class folders
    run: str = ""  # name of the run folder under `output_dir`; default: the dataset folder's name
    output_dir: str = "saved_models"
    cache_dir: str = ".cache/features"  # bottleneck features, shared by all runs on a dataset
    backbones: list[str] = field(default_factory=lambda: ["resnet50", "vgg16", "inceptionv3", "mobilenet"])
    subject: str = "class"  # what the classes are, for the app's texts, e.g. "butterfly species"
    # A field set, measured and never trained on (`training.field`): a folder of class folders, and a
    # JSON file mapping each folder to a training class name, or to null for a species the data lacks.
    field_data: str | None = None
    field_map: str | None = None

    # Starting weights: "imagenet", "none", or a weights file; `weights_dir` holds Keras' files
    # by their Keras names (offline); `weight_files` maps a backbone to its own file (keyed by
    # variant id, e.g. `mobilenet_0.25`; `load_config` accepts `mobilenet:0.25` too).
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
    # In each augmented view, this share of the images is framed like a visitor's photo first
    # (`training.field_augment`: the butterfly zoomed out onto blurred surroundings).
    field_share: float = 0.25

    # Both phases: the loss's target puts `label_smoothing` of its mass evenly on every class,
    # which keeps a 50-class head from growing overconfident on a few thousand images. Chosen on
    # held-out species: 0.2 tells them apart better than 0.1 or 0.3, and all far better than none.
    # On field photos 0.2 and 0.1 differ by less than two seeds do (docs/BENCHMARKS.md, "Label smoothing").
    label_smoothing: float = 0.2

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

    # What computes the cached features: "litert" (the faster on a CPU: docs/BENCHMARKS.md), "keras" (TensorFlow,
    # the faster on a GPU), or "auto": LiteRT unless a GPU is visible or mixed precision is on.
    extract_engine: str = "auto"

    mixed_precision: bool = False
    strategy: str = "default"  # or "mirrored": all local GPUs

    def __post_init__(self) -> None:
        check_types(self)
        self.split = tuple(self.split)  # TOML and JSON give lists
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {getattr(self, name)!r}",
                                  name)
        if len(self.split) != 3 or abs(sum(self.split) - 1) > 1e-6 or min(self.split) <= 0:
            raise ConfigError(f"split must be three positive fractions adding to 1, not {self.split}", "split")
        for name, (accept, allowed) in RANGES.items():
            if not accept(getattr(self, name)):
                raise ConfigError(f"{name} must be {allowed}, not {getattr(self, name)!r}", name)
        if not self.backbones:
            raise ConfigError("backbones is empty: name at least one, e.g. mobilenet:0.25", "backbones")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / (self.run or Path(self.data).resolve().name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_types(config: Config) -> None:
    """Refuse a setting of the wrong type (a TOML string where a number belongs, say) by name,
    before it surfaces as a `TypeError` deep in training."""
    for name, hint in typing.get_type_hints(Config).items():
        value = getattr(config, name)
        if not fits(value, hint):
            raise ConfigError(f"{name} must be {describe(hint)}, not {value!r}", name)


def fits(value: Any, hint: Any) -> bool:
    """Whether `value` is of the annotated type `hint` (ints pass as floats, bools as neither)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is types.UnionType:
        return any(fits(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(fits(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(fits(k, args[0]) and fits(v, args[1]) for k, v in value.items())
    if origin is tuple:
        return isinstance(value, list | tuple) and len(value) == len(args) and all(map(fits, value, args))
    if isinstance(value, bool):
        return hint is bool
    if hint is float:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, hint)


def describe(hint: Any) -> str:
    """`hint` in words, as a TOML user would write the value."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is types.UnionType:
        return " or ".join(describe(arg) for arg in args)
    if origin in (list, dict):
        return f"a {'list' if origin is list else 'table'} of {describe(args[-1]).removeprefix('a ')}s"
    if origin is tuple:
        return f"a list of {len(args)} {describe(args[0]).removeprefix('a ')}s"
    return {int: "a whole number", float: "a number", bool: "true or false", str: "a string", type(None): "unset"}[hint]


def check_writable(path: str | Path, setting: str, file: bool = False) -> None:
    """Refuse, before any work, a place that results cannot be written to: a folder (or, with
    `file`, a file's folder) that is or lies under an existing file, or that this process may
    not write in. Nothing is created here; the writers make the folders when they need them."""
    full = Path(path).expanduser().absolute()
    if file and full.is_dir():
        raise ConfigError(f"{setting} {path}: is a folder; expected a file name", setting)
    folder = full.parent if file else full
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{setting} {path}: {existing} is a file, not a folder", setting)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{setting} {path}: cannot write in {existing} (permission denied)", setting)


def check_backbones(config: Config) -> None:
    """Check every backbone spec (name, alpha, image size) against the registry, and key the
    per-backbone settings by variant id, the form the run looks them up by: `mobilenet:0.25`
    and `mobilenet_0.25` both become `mobilenet_0.25`. A key that names no backbone of the run
    is refused: its file or layer would silently go unused."""
    from training.backbones import BackboneError, parse_variant

    try:
        ids = [parse_variant(spec, config.image_size).id for spec in config.backbones]
    except BackboneError as error:
        raise ConfigError(str(error), "backbones") from None
    twice = sorted({id_ for id_ in ids if ids.count(id_) > 1})
    if twice:
        raise ConfigError(f"backbones names {', '.join(twice)} more than once", "backbones")
    for setting in ("weight_files", "frozen_until"):
        keyed = {}
        for key, value in getattr(config, setting).items():
            try:
                id_ = key if key in ids else parse_variant(key).id
            except BackboneError as error:
                raise ConfigError(f"{setting} {key!r}: {error}", setting) from None
            if id_ not in ids:
                raise ConfigError(f"{setting} {key!r}: {id_} is not one of this run's backbones ({', '.join(ids)})", setting)
            keyed[id_] = value
        setattr(config, setting, keyed)


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> Config:
    """Defaults, then the TOML file at `path` (if any), then `overrides` that are not None.

    Every setting is checked here, before any work: types and ranges, backbones, the places
    results go, and the field set's folders and mapping (its class names wait for the dataset's
    scan). An error names the setting and where it came from (the file or "options").
    """
    from training.field import check_settings as check_field_set  # it needs `ConfigError` from here

    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as file:
                values = tomllib.load(file)
        except OSError as error:
            raise ConfigError(f"{path}: cannot read the config file ({error.strerror})") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML ({error})") from None
    given = {key: value for key, value in overrides.items() if value is not None}
    values.update(given)
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path or 'options'}: unknown setting(s) {', '.join(unknown)}")
    try:
        config = Config(**values)
        check_backbones(config)
        for setting in ("output_dir", "cache_dir"):
            check_writable(getattr(config, setting), setting)
        check_writable(config.run_dir, "run")
        if config.weights_dir and not Path(config.weights_dir).is_dir():
            raise ConfigError(f"weights_dir {config.weights_dir}: no such folder", "weights_dir")
        check_field_set(config.field_data, config.field_map)
    except ConfigError as error:  # say where the bad value came from
        where = "options" if path is None or error.setting in given else path
        raise ConfigError(f"{where}: {error}", error.setting) from None
    if not config.data:
        raise ConfigError("no dataset given: pass --data DIR or set data in the config file")
    return config
