"""Where the benchmarks find their data and weights, and how they write paths down.

The paths come from a config file (`--config`, default configs/butterflies50.toml), taken from
the repository root as the config files say, so a bench measures what `make run` trains.
What a bench prints or records in docs/BENCHMARKS.md names paths relative to the repository
root (`../shared/...`), never one machine's absolute path. The few settings needed here are
read straight from the TOML file: the `training` package imports Keras, and `--help` or
`--dry-run` should answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = Path("configs/butterflies50.toml")


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options every bench takes: which config, and a dry run that only checks the paths."""
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help="TOML config naming data and weights_dir, from the repository root (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config and the paths the bench needs, print them, and exit")


def settings(config: Path) -> dict:
    """The settings in the TOML file `config`; a missing or broken file stops the bench, named."""
    try:
        with open(ROOT / config, "rb") as file:
            return tomllib.load(file)
    except OSError as error:
        sys.exit(f"{config}: cannot read the config file ({error.strerror})")
    except tomllib.TOMLDecodeError as error:
        sys.exit(f"{config}: not valid TOML ({error})")


def folder(config: Path, setting: str, *parts: str, required: bool = True) -> Path | None:
    """The folder that `setting` in `config` names (then `parts` below it), from the repository
    root; stops the bench with the config, the setting and the folder if it does not exist.
    A setting that is not there stops it too, unless not `required` (then: None)."""
    value = settings(config).get(setting)
    if not value:
        if not required:
            return None
        sys.exit(f"{config}: no {setting} set; the benchmarks need it")
    path = Path(os.path.abspath(ROOT / value / Path(*parts)))
    if not path.is_dir():
        sys.exit(f"{config}: {setting} = {value!r}: no such folder {shown(path)}")
    return path


def shown(path: Path) -> str:
    """`path` as typed from the repository root: `bench/results/...`, or `../shared/...` beside it."""
    return os.path.relpath(ROOT / path, ROOT)
