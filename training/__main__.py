"""Command line: `python -m training {compare,check-data,predict,export,stand-in-weights} ...` (see --help).

Every expected problem (bad data, bad settings, missing weights, unreadable images) is reported
as one line naming the file and what is wrong, with exit status 2, never as a traceback, and
before any work. `--help`, check-data and the checks of every command's options (compare's
settings and weight files included) answer without TensorFlow, whose start-up takes seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.config import Config

EPILOG = "Run the same compare command again after an interruption: it resumes where it stopped."


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand and option (also what tests/test_cli_options.py checks its table against)."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0], epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", required=True)

    compare = commands.add_parser("compare", help="train each backbone and write the comparison table")
    compare.add_argument("--config", help="TOML file of settings (command-line options override it)")
    compare.add_argument("--data", help="dataset folder: train/ valid/ test/ of class folders, or class folders")
    compare.add_argument("--backbones", help="comma-separated, e.g. resnet50,vgg16,inceptionv3,mobilenet:0.25")
    compare.add_argument("--run", help="run name (folder under --output-dir); default: the dataset's name")
    compare.add_argument("--output-dir", help="where runs are written (default saved_models)")
    compare.add_argument("--cache-dir", help="bottleneck feature cache (default .cache/features)")
    compare.add_argument("--weights", help="imagenet (default), none (from scratch), or a weights file")
    compare.add_argument("--weights-dir", help="folder of Keras ImageNet weight files by their Keras names")
    compare.add_argument("--weights-file", action="append", metavar="BACKBONE=PATH",
                         help="weights file for one backbone (repeatable)")
    compare.add_argument("--frozen-until", action="append", metavar="BACKBONE=LAYER",
                         help="last layer kept frozen in fine-tuning for one backbone (repeatable; default: the registry's)")
    compare.add_argument("--image-size", type=int, help="input size for every backbone (default: each one's own)")
    compare.add_argument("--batch-size", type=int)
    compare.add_argument("--seed", type=int)
    compare.add_argument("--head-epochs", type=int)
    compare.add_argument("--label-smoothing", type=float, help="target mass spread over all classes (default 0.2)")
    compare.add_argument("--head-learning-rate", type=float)
    compare.add_argument("--fine-tune-epochs", type=int)
    compare.add_argument("--fine-tune-learning-rate", type=float)
    compare.add_argument("--augment-views", type=int, help="augmented copies of each training image to cache")
    compare.add_argument("--field-share", type=float,
                         help="share of each augmented view framed like a field photo (default 0.25; 0: none)")
    compare.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    compare.add_argument("--no-fine-tune", dest="fine_tune", action="store_false", default=None)
    compare.add_argument("--extract-engine", choices=["auto", "litert", "keras"],
                         help="what computes cached features (default auto: LiteRT on a CPU for 2,000+ images)")
    compare.add_argument("--mixed-precision", action="store_true", default=None, help="float16 compute (GPUs)")
    compare.add_argument("--strategy", choices=["default", "mirrored"], help="mirrored: all local GPUs")
    compare.add_argument("--field-data", metavar="DIR",
                         help="field set, measured and never trained on: a folder of class folders (with --field-map)")
    compare.add_argument("--field-map", metavar="FILE",
                         help="JSON file mapping each folder of --field-data to a training class, or null for an unknown one")

    check = commands.add_parser("check-data", help="check a dataset folder and print its report")
    check.add_argument("data")

    predict = commands.add_parser("predict", help="top-k classes of an image, or of a folder of images (CSV)")
    predict.add_argument("--model", required=True, help="a backbone folder, e.g. saved_models/<run>/<backbone>")
    predict.add_argument("target", metavar="IMAGE_OR_FOLDER")
    predict.add_argument("--top-k", type=int, help="classes shown per image (default 5, or all when fewer)")
    predict.add_argument("--names", help="JSON file mapping class folder names to display names")
    predict.add_argument("--output", default="predictions.csv", help="CSV written for a folder")

    export = commands.add_parser("export", help="write a deployable LiteRT folder for the web app")
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a backbone folder, e.g. saved_models/<run>/<backbone>")
    source.add_argument("--run", help="a run folder; with --best, its best backbone")
    export.add_argument("--best", action="store_true", help="with --run: export the best backbone")
    export.add_argument("--quantize", choices=["float32", "float16", "int8"], default="float32")
    export.add_argument("--out", help="deploy folder (default saved_models/deploy/<backbone>[-<quantize>])")

    stand_in = commands.add_parser("stand-in-weights",
                                   help="write random weights under Keras' ImageNet file names (tests: accuracy meaningless)")
    stand_in.add_argument("folder", metavar="DIR", help="where to write them (what --weights-dir then reads)")
    stand_in.add_argument("--backbones", help="comma-separated, e.g. resnet50,mobilenet:0.25 (default: every backbone)")
    stand_in.add_argument("--seed", type=int, default=0, help="the same seed writes the same files")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    for item in getattr(args, "weights_file", None) or []:
        if "=" not in item:
            parser.error(f"--weights-file {item!r}: expected BACKBONE=PATH, e.g. resnet50=weights/resnet50.h5")
    for item in getattr(args, "frozen_until", None) or []:
        if "=" not in item:
            parser.error(f"--frozen-until {item!r}: expected BACKBONE=LAYER, e.g. mobilenetv2:0.5=block_14_add")
    return args


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up notices hidden.

    They are written straight to file descriptor 2 before any Python or environment setting
    applies, so only pointing that descriptor elsewhere for the import silences them. A Python
    error raised by the import still shows, as it is printed after the descriptor is back.
    """
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def check_options(args: argparse.Namespace) -> None:
    """Refuse, before TensorFlow's slow start-up, what the command cannot use: compare's settings,
    starting weights, dataset, field set and run folder (kept in `args.config_loaded` and its
    checked plan in `args.plan`),
    or a folder without what predict or export needs, a place that cannot be written, ..."""
    from training.config import ConfigError, check_writable

    if args.command == "compare":
        from training.plan import make_plan

        args.config_loaded = compare_config(args)
        args.plan = make_plan(args.config_loaded)
    elif args.command == "predict":
        model_file(args.model, "model.keras", "--model")
        bank_file(args.model, model_file(args.model, "trust.json", "--model"))  # the "not sure" settings (training.trust)
        classes = read_json_option(model_file(args.model, "labels.json", "--model"), "--model")
        if args.top_k is None:
            args.top_k = min(5, len(classes))
        if not 1 <= args.top_k <= len(classes):
            raise ConfigError(f"--top-k must be from 1 to the model's {len(classes)} classes, not {args.top_k}")
        if args.names:
            names = read_json_option(args.names, "--names")
            if not isinstance(names, dict) or not all(isinstance(v, str) for v in names.values()):
                raise ConfigError(f"--names {args.names}: expected a JSON object mapping class folder names to display names")
        if not Path(args.target).exists():
            raise ConfigError(f"{args.target}: no such image or folder")
        if Path(args.target).is_dir():
            check_writable(args.output, "--output", file=True)
    elif args.command == "export":
        if args.run and not args.best:
            raise ConfigError("--run needs --best (or pass --model saved_models/<run>/<backbone>)")
        if args.best and not args.run:
            raise ConfigError("--best goes with --run: --model already names one backbone")
        if args.run:
            model_file(args.run, "comparison.json", "--run")
        else:
            for name in ("metrics.json", "model.keras", "labels.json", "trust.json", "../run.json"):
                model_file(args.model, name, "--model")
            bank_file(args.model, Path(args.model) / "trust.json")
        check_writable(args.out or "saved_models/deploy", "--out")
    elif args.command == "stand-in-weights":
        if not 0 <= args.seed < 2**32:
            raise ConfigError(f"--seed must be from 0 to 2**32 - 1, not {args.seed}")
        check_writable(args.folder, "DIR")


def compare_config(args: argparse.Namespace) -> Config:
    """The config file with the options over it, checked."""
    from training.config import load_config

    overrides = {key: value for key, value in vars(args).items()
                 if key not in ("command", "config", "weights_file", "frozen_until")}
    if args.backbones:
        overrides["backbones"] = [b for b in args.backbones.split(",") if b.strip()]
    if args.weights_file:
        overrides["weight_files"] = dict(item.split("=", 1) for item in args.weights_file)
    if args.frozen_until:
        overrides["frozen_until"] = dict(item.split("=", 1) for item in args.frozen_until)
    return load_config(args.config, overrides)


def model_file(folder: str, name: str, option: str) -> Path:
    """`folder/name`, which a folder written by `compare` holds, or the error saying so."""
    from training.config import ConfigError

    path = Path(folder) / name
    if not path.is_file():
        raise ConfigError(f"{option} {folder}: no {name} here; expected a folder written by `python -m training compare`")
    return path


def bank_file(folder: str, trust: Path) -> None:
    """Refuse a backbone folder whose unknown score (trust.json) reads a feature bank it lacks."""
    from runtime.answer import NEEDS_BANK
    from runtime.model_folder import BANK_FILE

    settings = read_json_option(trust, "--model")
    if isinstance(settings, dict) and settings.get("score") in NEEDS_BANK:
        model_file(folder, BANK_FILE, "--model")


def read_json_option(path: str | Path, option: str) -> Any:
    """The JSON file an option names, or the error saying why it cannot be read."""
    from training.config import ConfigError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{option}: cannot read {path} ({error.strerror})") from None
    except ValueError as error:
        raise ConfigError(f"{option}: {path} is not valid JSON ({error})") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130


def fail(error: Exception) -> int:
    print(f"error: {error}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Check first, without TensorFlow, then import it and work; 0, or 2 after one error line."""
    # Imported here so that `--help`, check-data and argument errors answer at once.
    from runtime import imaging
    from training.backbones import BackboneError
    from training.config import ConfigError
    from training.folder import DataError
    from training.plan import RunError

    try:
        if args.command == "check-data":
            from training.folder import scan

            print(scan(args.data).report())
            return 0
        check_options(args)
    except (BackboneError, ConfigError, DataError, RunError, imaging.ImageError) as error:
        return fail(error)

    import_tensorflow_quietly()
    from runtime.litert import ModelError
    from training.export import ExportError

    try:
        if args.command == "compare":
            from training.runner import compare

            compare(args.config_loaded, args.plan)
        elif args.command == "predict":
            from training.predict import run_predict

            run_predict(args.model, args.target, args.top_k, args.names, args.output)
        elif args.command == "export":
            from training.export import run_export

            run_export(args.model, args.run, args.best, args.quantize, args.out)
        elif args.command == "stand-in-weights":
            from training.standin import write_all

            specs = [b for b in (args.backbones or "").split(",") if b.strip()]
            for path in write_all(args.folder, specs or None, args.seed):
                print(path)
    except (BackboneError, ConfigError, DataError, ExportError, ModelError,
            imaging.ImageError) as error:
        return fail(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
