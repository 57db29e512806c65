"""Benchmark the training side on butterflies50 and record it in docs/BENCHMARKS.md.

Named so as not to shadow the `training` package: a script's own folder comes first on sys.path.

Run from the repository root (the longest of the benches: it trains every backbone of the config
five times over, plus the ablation runs and the baseline; `--dry-run` only checks the paths):

    .venv/bin/python bench/train_compare.py [--config configs/butterflies50.toml] [--field DIR] [--resume] [--dry-run]

The jobs, each in its own process so its time and peak memory are its own, one after the other:
1. the full recipe (`compare` with the config: cached features, head, fine-tuning) with an empty
   feature cache, on every backbone of the config (the config's `data` and `weights_dir`);
2. the same comparison again as a new run with the cache warm;
3. phase 1 alone (`--no-fine-tune`) as a new run on the warm cache: what trying another head
   costs once the features exist, and what phase 2 adds to accuracy;
4. the same comparison with label smoothing off, on the same cached features: what smoothing
   is worth, side by side, in accuracy and in telling unknown species apart (measured on the
   field set too);
5. the same comparison without field framing in the augmented views (`--field-share 0`): what
   framing a share of the training images like field photos is worth, on the test split and,
   when a field set is there (`--field`, leeds-field by default), on field photos, measured
   afterwards on the finished runs (`--field-data`, which retrains nothing);
6. the ablations, where the config has what they change: the config's MobileNetV2s fine-tuned from
   the former, shallower layer (`SHALLOWER`), and its backbones at their own input size when the
   config asks for another (`native_size`), each measured on the field set too;
7. the original project's baseline recipe on the same data and weights: inputs rescaled by
   1/255, frozen base, dense head, no caching, no fine-tuning (`--baseline`, below).
The runs are written to bench/results/, where bench/serving.py finds one to export; each job's
time and peak memory to bench/results/jobs.json as it ends, so that `--resume` after a failure
runs only the jobs not recorded there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import paths  # bench/paths.py and bench/sections.py: this script's folder is first on sys.path
import sections

ROOT = paths.ROOT
OUT = ROOT / "bench" / "results"
BASELINE_EPOCHS = 5
FIELD = Path("../shared/datasets/leeds-field")  # images/ of class folders and mapping.json; measured, never trained on
RUNS = {"cold": [], "warm": [], "warm-phase1": ["--no-fine-tune"], "no-smoothing": ["--label-smoothing", "0"],
        "no-field": ["--field-share", "0"]}  # each run's options beside the config's; and the ablations (`run_options`)
# The fine-tuning depth before it went deeper (training/backbones.py): the "shallow" run fine-tunes
# the config's backbones of these families from here, so that the section shows what the deeper
# default buys and costs, same cached bottom features where the layers allow, same seed.
SHALLOWER = {"mobilenetv2": "block_12_add"}


def run_job(args: list[str]) -> tuple[float, float]:
    """Run a Python job in a fresh process; return (wall seconds, peak RSS in MB, sampled)."""
    import psutil

    start, peak = time.perf_counter(), 0
    job = psutil.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    while job.poll() is None:
        try:
            peak = max(peak, job.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    if job.returncode:
        raise SystemExit(f"job failed ({job.returncode}): {' '.join(args)}")
    return time.perf_counter() - start, peak / 1e6


def compare(config: Path, run: str, cache: Path, *options: str) -> list[str]:
    """The CLI job that trains and compares the config's backbones as run `run` in OUT.

    Its relative paths are taken from the repository root, the jobs' working directory."""
    return ["-m", "training", "compare", "--config", str(config), "--run", run,
            "--output-dir", str(OUT), "--cache-dir", str(cache), *options]


def baseline(config_path: Path, data: Path, weights: Path | None) -> None:
    """The original recipe, per backbone: 1/255 inputs, frozen base, dense head, no cache."""
    import keras
    import numpy as np

    from training.backbones import build_base, parse_variant, resolve_weights
    from training.config import load_config
    from training.evaluate import metrics

    config = load_config(ROOT / config_path, {"data": str(data), "weights_dir": str(weights) if weights else None})
    results = []
    for spec in config.backbones:
        variant = parse_variant(spec)
        train, valid, test = (
            keras.utils.image_dataset_from_directory(
                data / split, image_size=(variant.size, variant.size), batch_size=32, shuffle=shuffle, seed=1)
            for split, shuffle in (("train", True), ("valid", False), ("test", False))
        )
        base = build_base(variant, resolve_weights(variant, config.weights, weights, config.weight_files.get(variant.id)))
        base.trainable = False
        model = keras.Sequential([
            keras.Input((variant.size, variant.size, 3)), keras.layers.Rescaling(1 / 255), base,
            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(256, activation="relu"),
            keras.layers.Dropout(0.5), keras.layers.Dense(len(train.class_names), activation="softmax"),
        ])
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        start = time.perf_counter()
        model.fit(train, validation_data=valid, epochs=BASELINE_EPOCHS, verbose=2)
        seconds = time.perf_counter() - start
        labels = [int(y) for _, batch in test for y in batch]
        scores = metrics(np.array(labels), model.predict(test, verbose=0), train.class_names)
        results.append({"backbone": variant.id, "top1": scores["top1"], "top5": scores["top5"],
                        "macro_f1": scores["macro_f1"], "train_s": seconds})
    (OUT / "baseline.json").write_text(json.dumps(results, indent=2))


def results(run: str, ensemble: bool = False) -> list[dict]:
    """A run's comparison table, one row per backbone, best first (and the ensemble's row last, if asked)."""
    return [row for row in json.loads((OUT / run / "comparison.json").read_text()) if ensemble or not row["ensemble"]]


def against(full: list[dict], run: str, column: str = "top1") -> list[dict]:
    """Per backbone, `column` of the full recipe (`full`) and of another run on the same cached
    features (`other`), and the full recipe's gain in points (None where not measured)."""
    other = {row["backbone"]: row[column] for row in results(run)}
    return [{"backbone": r["backbone"], "full": r[column], "other": other[r["backbone"]],
             "gain": None if r[column] is None else 100 * (r[column] - other[r["backbone"]])} for r in full]


def shallower(config: Path) -> list[str]:
    """The "shallow" run's options: `SHALLOWER`'s layer for each of the config's backbones of those
    families (none: the run is left out)."""
    from training.backbones import parse_variant
    from training.config import load_config

    specs = [spec for spec in load_config(ROOT / config, {}).backbones if parse_variant(spec).backbone.name in SHALLOWER]
    return [f"--backbones={','.join(specs)}",
            *(f"--frozen-until={spec}={SHALLOWER[parse_variant(spec).backbone.name]}" for spec in specs)] if specs else []


def own_size(config: Path) -> int | None:
    """The input size the config's backbones share in the registry, when the config asks for
    another `image_size` (None otherwise: no native-size run)."""
    from training.backbones import parse_variant
    from training.config import load_config

    loaded = load_config(ROOT / config, {})
    own = {parse_variant(spec).size for spec in loaded.backbones}
    return own.pop() if loaded.image_size is not None and len(own) == 1 and loaded.image_size not in own else None


def native_size(config: Path) -> list[str]:
    """The "native-size" run's options: the config's backbones at their own input size (none: the
    run is left out)."""
    size = own_size(config)
    return [f"--image-size={size}"] if size else []


def run_options(config: Path) -> dict[str, list[str]]:
    """Each training run's options beside the config's: `RUNS`, and the ablations (shallow,
    native-size) where they apply."""
    ablations = {"shallow": shallower(config), "native-size": native_size(config)}
    return {**RUNS, **{run: options for run, options in ablations.items() if options}}


# The runs the field set is measured on, when there is one.
FIELD_RUNS = ("cold", "no-smoothing", "no-field", "shallow", "native-size")


def field_jobs(config: Path, cache: Path, field: Path | None) -> dict[str, list[str]]:
    """The jobs that measure the field set on the finished runs of `FIELD_RUNS`: each with its
    run's own options, or compare would refuse a run trained with other settings."""
    options = run_options(config)
    return {f"field-{run}": compare(config, run, cache, *options[run], *field_options(field))
            for run in FIELD_RUNS if run in options} if field else {}


def field_options(field: Path | None) -> list[str]:
    """`compare`'s options that measure the field set at `field` (none when there is none)."""
    return ["--field-data", str(field / "images"), "--field-map", str(field / "mapping.json")] if field else []


ABLATION_COLUMNS = [("test top-1", "top1", "{:.1%}"), ("held-out species AUROC", "unknown_auroc", "{:.3f}"),
                    ("held-out species FPR@95", "unknown_fpr95", "{:.1%}"), ("field top-1", "field_top1", "{:.1%}"),
                    ("field unknown AUROC", "field_unknown_auroc", "{:.3f}"), ("field answered", "field_answered", "{:.1%}"),
                    ("field answers right", "field_right", "{:.1%}"),
                    ("field unknown \"not sure\"", "field_not_sure", "{:.1%}"), ("phase 2 s", "phase2_s", "{:.0f}"),
                    ("CPU ms/image", "latency_ms", "{:.1f}")]


def ablation_section(config: Path, field: Path | None, run: str, heading: str, intro: str, names: tuple[str, str]) -> str:
    """An ablation run beside the cold run (the config's recipe), backbone by backbone, same seed:
    `heading`, `intro` (what differs), then a table whose cells read "cold / run" (`names`)."""
    other = {row["backbone"]: row for row in results(run)}
    both = lambda fmt, a, b: " / ".join("–" if v is None else fmt.format(v) for v in (a, b))  # noqa: E731
    rows = [{"backbone": r["backbone"], **{key: both(fmt, r[key], other[r["backbone"]][key])
                                           for _, key, fmt in ABLATION_COLUMNS}}
            for r in results("cold") if r["backbone"] in other]
    options = " ".join(["--config", paths.shown(config), "--output-dir", "bench/results", "--cache-dir", "bench/results/cache",
                        *field_options(field and Path(paths.shown(field)))])
    return "\n".join([
        f"## {heading}",
        "",
        f"{intro} Same data, seed and recipe otherwise. Held-out species: leave-species-out on the training data (the "
        "trust step); field columns as in the comparison table, each photo answered as the app answers it. Measured "
        f"{time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores (phase 2 seconds and CPU ms/image depend on the "
        f"machine's load). Reproduce (bench/train_compare.py's cold and {run} runs"
        + (", then the field set on each" if field else "") + "):",
        "",
        "```sh",
        f".venv/bin/python -m training compare --run cold {options}",
        f".venv/bin/python -m training compare --run {run} {' '.join(run_options(config)[run])} {options}",
        "```",
        "",
        table(rows, [("backbone", "{backbone}"), *((f"{title}, {names[0]} / {names[1]}", "{" + key + "}")
                                                   for title, key, _ in ABLATION_COLUMNS)]),
    ])


def depth_section(config: Path, field: Path | None) -> str:
    """The fine-tuning depth ablation: each backbone of the shallow run, as the cold run (the
    registry's layer, deeper) and the shallow run (`SHALLOWER`) trained it."""
    return ablation_section(
        config, field, "shallow", "Fine-tuning depth: the default (deeper) vs the former layer (shallower)",
        "Phase 2 fine-tunes the blocks above the registry's `frozen_until` (training/backbones.py); shallower: from "
        + ", ".join(f"`{layer}` ({family})" for family, layer in SHALLOWER.items()) + " instead, as before.",
        ("deeper", "shallower"))


def smoothing_section(config: Path, field: Path | None) -> str:
    """The label smoothing ablation: each backbone of the no-smoothing run, as the cold run (the
    config's `label_smoothing`) and the no-smoothing run (off) trained it."""
    smoothing = json.loads((OUT / "cold" / "run.json").read_text())["config"]["label_smoothing"]
    return ablation_section(
        config, field, "no-smoothing", f"Label smoothing: {smoothing:g} (the config's) vs off",
        f"Both phases train on targets that put {smoothing:g} of their mass evenly on every class (`label_smoothing`); "
        "the no-smoothing run trains on plain one-hot targets.",
        (f"{smoothing:g}", "off"))


def size_section(config: Path, field: Path | None) -> str:
    """The input size ablation: each backbone at the config's `image_size` (the cold run) and at its
    own (the native-size run)."""
    size = json.loads((OUT / "cold" / "run.json").read_text())["config"]["image_size"]
    native = own_size(config)
    return ablation_section(
        config, field, "native-size", f"Input size: the config's {size}x{size} vs the backbones' own {native}x{native}",
        f"The config's `image_size` ({size}) feeds the backbones larger images than they were trained at on ImageNet "
        f"(their own: {native}); the native-size run trains them at their own size.",
        (str(size), str(native)))


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for title, _ in columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "\n".join("| " + " | ".join(fmt.format(**row) for _, fmt in columns) + " |" for row in rows)


def test_images(data: Path) -> int:
    """How many images the test split holds: what one image is worth in points of top-1."""
    return sum(1 for path in (data / "test").rglob("*") if path.is_file() and not path.name.startswith("."))


def jobs(config: Path, cache: Path, field: Path | None) -> dict[str, list[str]]:
    """The jobs by name, in the order they run: the timed training runs (`run_options`, the first on
    an empty cache), the field measurements (after them: measuring the field set retrains nothing),
    then the baseline."""
    return {**{run: compare(config, run, cache, *options) for run, options in run_options(config).items()},
            **field_jobs(config, cache, field), "baseline": [__file__, "--baseline", "--config", str(config)]}


def run_jobs(config: Path, cache: Path, field: Path | None, resume: bool) -> dict[str, dict[str, float]]:
    """Run the jobs, recording each one's wall time and peak memory in OUT/jobs.json as it ends.

    With `resume`, the jobs recorded there are kept and the others run again from the start (their
    run folder removed, and the cache too while the cold run is not recorded: its time is that of
    an empty cache), so a failure late in the hour costs only the jobs after it."""
    from training.artifacts import write_json  # atomic: a kill leaves the last complete record

    record = OUT / "jobs.json"
    done = json.loads(record.read_text()) if resume and record.is_file() else {}
    if "cold" not in done:
        shutil.rmtree(cache, ignore_errors=True)
    for name, job in jobs(config, cache, field).items():
        if name in done:
            print(f"{name}: recorded in {paths.shown(record)}, not run again", file=sys.stderr)
            continue
        if name in run_options(config):  # a training run: from scratch
            shutil.rmtree(OUT / name, ignore_errors=True)
        wall_s, peak_mb = run_job(job)
        done[name] = {"wall_s": wall_s, "peak_mb": peak_mb}
        write_json(record, done)
    return done


def benchmark(config: Path, data: Path, field: Path | None, resume: bool = False) -> None:
    """Run the jobs (or the rest of them), then print and record the section."""
    OUT.mkdir(parents=True, exist_ok=True)
    timings = run_jobs(config, OUT / "cache", field, resume)
    (cold_s, cold_mb), (warm_s, warm_mb), (head_s, _), (base_s, base_mb) = (
        (timings[name]["wall_s"], timings[name]["peak_mb"]) for name in ("cold", "warm", "warm-phase1", "baseline"))

    full, warm = results("cold"), results("warm")
    base = json.loads((OUT / "baseline.json").read_text())
    phases = against(full, "warm-phase1")
    framing, framing_field = against(full, "no-field"), against(full, "no-field", "field_top1")
    framed = [{**test, "field_full": on_field["full"], "field_other": on_field["other"], "field_gain": on_field["gain"]}
              for test, on_field in zip(framing, framing_field, strict=True)]
    ensemble = results("cold", ensemble=True)[len(full):]
    recipe = json.loads((OUT / "cold" / "run.json").read_text())["config"]
    share, size = recipe["field_share"], recipe["image_size"] or "each backbone's own"
    phase1 = sum(row["phase1_s"] for row in full)
    warm_phase1 = sum(row["phase1_s"] for row in warm)
    best = max(row["top1"] for row in full)
    count = test_images(data)
    checks = [
        ("every real-weight backbone >= 97% test top-1", all(r["top1"] >= 0.97 for r in full),
         ", ".join(f"{r['backbone']} {r['top1']:.1%}" for r in full)),
        ("best >= 98% test top-1", best >= 0.98, f"{best:.1%}"),
        (f"whole comparison ({len(full)} backbones, both phases) <= 10 min", cold_s <= 600, f"{cold_s / 60:.1f} min"),
        (f"phase 1 alone for the {len(full)} <= 3 min", phase1 <= 180, f"{phase1 / 60:.1f} min"),
        ("rerun with the feature cache warm <= 1 min, whole job (both phases)", warm_s <= 60, f"{warm_s:.0f} s"),
        ("rerun with the feature cache warm <= 1 min, phase 1 job (`--no-fine-tune`, process start to "
         "tables written)", head_s <= 60, f"{head_s:.0f} s"),
    ]
    section = "\n".join([
        f"## Training: {data.name}, full recipe vs the original baseline",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores, no GPU, Python "
        f"{platform.python_version()}. Reproduce: `.venv/bin/python bench/train_compare.py --config "
        f"{paths.shown(config)}`. Recipe: {size} px, label smoothing "
        f"{recipe['label_smoothing']:g}, seed {recipe['seed']}. Test split: {count} images (one image = "
        f"{100 / count:.2g} points).",
        "",
        "### Full recipe (cached features, head, fine-tuning of the top blocks), cold cache",
        table(full, [("backbone", "{backbone}"), ("test top-1", "{top1:.1%}"), ("top-5", "{top5:.1%}"),
                     ("macro-F1", "{macro_f1:.3f}"), ("phase 1 s", "{phase1_s:.0f}"), ("phase 2 s", "{phase2_s:.0f}"),
                     ("CPU ms/image", "{latency_ms:.1f}")]),
        "",
        f"Whole comparison: {cold_s:.0f} s wall, peak memory {cold_mb:.0f} MB. Warm-cache rerun: "
        f"{warm_s:.0f} s wall (phase 1 {warm_phase1:.0f} s), peak {warm_mb:.0f} MB; phase 1 alone "
        f"(`--no-fine-tune`) on the warm cache: {head_s:.0f} s wall. Phase 2 trains the top blocks "
        "again on every new run: the cache spares it the frozen layers, not the training.",
        "",
        "### Phase 1 alone vs both phases, same cached features, same seed",
        table(phases, [("backbone", "{backbone}"), ("test top-1, phase 1 only", "{other:.1%}"),
                       ("test top-1, both phases", "{full:.1%}"), ("difference, points", "{gain:+.1f}")]),
        "",
        f"### Field framing (`field_share` {share:g}) vs none, same cached plain features, same seed"
        + (f"; field: {paths.shown(field)}, known species only" if field else "; no field set"),
        table(framed, [("backbone", "{backbone}"), ("test top-1, framing", "{full:.1%}"), ("test top-1, none", "{other:.1%}"),
                       ("difference, points", "{gain:+.1f}")]
              + ([("field top-1, framing", "{field_full:.1%}"), ("field top-1, none", "{field_other:.1%}"),
                  ("difference, points", "{field_gain:+.1f}")] if field else [])),
        "",
        *([f"Ensemble of the {len(full)} (averaged probabilities): test top-1 {ensemble[0]['top1']:.1%}"
           + (f", field top-1 {ensemble[0]['field_top1']:.1%}" if field else "")
           + f", CPU ms/image {ensemble[0]['latency_ms']:.1f} (the members' sum).", ""] if ensemble else []),
        f"### Original baseline (1/255 inputs, frozen base, dense head, no cache, {BASELINE_EPOCHS} epochs)",
        table(base, [("backbone", "{backbone}"), ("test top-1", "{top1:.1%}"), ("top-5", "{top5:.1%}"),
                     ("macro-F1", "{macro_f1:.3f}"), ("training s", "{train_s:.0f}")]),
        "",
        f"Baseline job: {base_s:.0f} s wall, peak memory {base_mb:.0f} MB.",
        "",
        "### Targets",
        "\n".join(f"- {'PASS' if ok else 'FAIL'}: {name}: {value}" for name, ok, value in checks),
    ])
    print(section)
    sections.record("training", section)
    sections.record("comparison", comparison_section(config, field))
    sections.record("smoothing", smoothing_section(config, field))
    if (OUT / "shallow" / "comparison.json").is_file():
        sections.record("depth", depth_section(config, field))
    if (OUT / "native-size" / "comparison.json").is_file():
        sections.record("size", size_section(config, field))


def comparison_section(config: Path, field: Path | None) -> str:
    """The table `compare` wrote for the cold run (with the field set's columns when there is
    one): what a user of the default recipe gets, every column as the pipeline reports it."""
    run = json.loads((OUT / "cold" / "run.json").read_text())
    table_text = (OUT / "cold" / "comparison.md").read_text(encoding="utf-8").strip()
    options = " ".join(["--config", paths.shown(config), "--run", "cold", "--output-dir", "bench/results",
                        "--cache-dir", "bench/results/cache"])
    return "\n".join([
        f"## Comparison table: {Path(run['config']['data']).name}"
        + (f" with the {field.name} field set" if field else "") + " (default recipe)",
        "",
        f"The table `compare` wrote for `make bench`'s cold run (`field_share` {run['config']['field_share']:g})"
        + (", then measured on the field set without retraining (`--field-data`), each photo answered as the app "
           "answers it (the notes under the table say what each field column means)." if field else "."),
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores (phase times and CPU ms/image depend on "
        "the machine's load; accuracy columns do not). Reproduce:",
        "",
        "```sh",
        f".venv/bin/python -m training compare {options}",
        *([f".venv/bin/python -m training compare {options} {' '.join(field_options(Path(paths.shown(field))))}"]
          if field else []),
        "```",
        "",
        table_text,
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    paths.add_options(parser)
    parser.add_argument("--field", type=Path, default=FIELD,
                        help="a field set to measure the runs on: images/ of class folders and mapping.json "
                             "(default: leeds-field; skipped with a note when absent)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the jobs bench/results/jobs.json records (from a run that stopped) and run the rest")
    parser.add_argument("--baseline", action="store_true",
                        help="run the baseline job alone (the benchmark runs it so, in a process of its own)")
    args = parser.parse_args(argv)
    data = paths.folder(args.config, "data")
    weights = paths.folder(args.config, "weights_dir", required=False)
    print(f"{paths.shown(args.config)}: data {paths.shown(data)}, weights {paths.shown(weights) if weights else 'downloaded'}; "
          f"runs written to {paths.shown(OUT)}", file=sys.stderr)
    field = args.field if (args.field / "mapping.json").is_file() and (args.field / "images").is_dir() else None
    print(f"field set: {paths.shown(field) if field else f'none ({args.field} has no images/ and mapping.json)'}",
          file=sys.stderr)
    if args.dry_run:
        return
    if args.baseline:
        baseline(args.config, data, weights)
    else:
        benchmark(args.config, data, field, args.resume)


if __name__ == "__main__":
    main()
