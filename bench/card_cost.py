"""What the full recipe costs per backbone on a CPU: measured per phase, projected to the whole dataset.

Run from the repository root: `.venv/bin/python bench/card_cost.py` (about 30 minutes on 2 cores),
or `--quick` for a smoke run (one backbone, a few images, nothing recorded).

The card's four backbones (ResNet50, VGG16, InceptionV3, MobileNet 1.0) and the registry's
others have no ImageNet weights offline here, so they start from stand-in weights
(`training/standin.py`: random values in Keras' file format). Cost does not depend on the weight
values; accuracy does, so no accuracy is measured on them. A full run of the recipe on the card's
backbones would take hours on 2 cores, so each is measured on a fixed sample of training images,
step by step, through the pipeline's own code, in its own process (so that its peak memory is its own):

1. extraction: the frozen bottom converted to LiteRT (timed apart) and run on the sample by
   `training.features.run_litert`, plain and with the training augmentation (one view);
2. phase 1: `training.head.train_head` on the sample's pooled features, tiled to the size of
   the training set, one epoch (warm-up) against a few more;
3. phase 2: training and validation steps of the top blocks (`training.model.top`, compiled as
   `training.finetune.fine_tune` compiles it) on the sample's cached activations, after warm-up;
4. test evaluation (`predict`, batch 32), model size (`.keras`, and the `.tflite` the exporter
   writes), CPU latency at batch 1 (Keras `predict_on_batch`; LiteRT through the app's `Classifier`).

The rates are then projected to the whole dataset for the recipe of configs/butterflies50.toml
(the defaults of training/config.py) and for the cheaper configs/cpu-profile.toml. Phase 1 stops
early on validation loss, phase 2 too: the projection uses their configured maximum numbers of
epochs. To check the method, the same measurement runs on the backbones with real weights, whose
full runs (`python -m training compare`, full recipe and profile) give measured times, epochs
as run, and the profile's cost in test accuracy. Everything is written under bench/results/card_cost
(git-ignored); the full mode records its section in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import sections  # bench/sections.py: this script's folder is first on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.config import Config, load_config  # noqa: E402  (no TensorFlow: the parent stays light)
from training.folder import scan  # noqa: E402

CONFIG = Path("configs/butterflies50.toml")
PROFILE = Path("configs/cpu-profile.toml")
WORK = Path("bench/results/card_cost")  # --quick: bench/results/card_cost-quick
CARD = ["resnet50", "vgg16", "inceptionv3", "mobilenet"]  # the four backbones the goals are set for
OTHERS = ["mobilenetv2", "efficientnetb0"]  # the rest of the registry, at their default widths
GOAL_CPU_S = 45 * 60  # the card's four on butterflies50, 2 CPU cores
GOAL_GPU_S = 5 * 60  # the same on one GPU
HEAD_BATCH = 256  # training.head.train_head's batch size
EVAL_BATCH = 32  # training.runner.BackboneRun.step_evaluate's batch size for the test split
WARMUP = 2  # calls before timing: the first ones trace the graph and allocate buffers
LATENCY_RUNS = 20


def log(message: str) -> None:
    """Progress to stderr; stdout carries the Markdown section."""
    print(message, file=sys.stderr, flush=True)


# --- One backbone, in its own process -------------------------------------------------------------


def spread(samples: list, count: int) -> list:
    """`count` samples spread over the whole list (every class), not the first classes only."""
    return samples[:: max(1, len(samples) // count)][:count]


def median_seconds(call, runs: int) -> float:
    """Median wall time of `call()` over `runs` calls, after WARMUP untimed ones."""
    import numpy as np

    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(spec: str, config: Config, weights_dir: Path, images: int, steps: int, work: Path) -> dict:
    """Per-phase rates of one backbone on a sample of `images` training images (see the module doc)."""
    import dataclasses

    import keras
    import numpy as np

    from app.inference import Classifier
    from training.backbones import parse_variant, resolve_weights
    from training.dataset import augmentation, image_dataset
    from training.evaluate import latency_ms
    from training.features import run_litert
    from training.head import train_head
    from training.losses import classification_loss, one_hot
    from training.model import bottom, build_classifier, top, unfreeze_top, with_class_maps
    from training.standin import is_stand_in

    started = time.perf_counter()
    variant = parse_variant(spec, config.image_size)
    weights = resolve_weights(variant, "imagenet", weights_dir)
    dataset = scan(config.data, config.seed, config.split)
    samples = spread(dataset.splits["train"], images)
    counts = {split: len(dataset.splits[split]) for split in ("train", "valid", "test")}
    folder = work / variant.id
    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    classifier = build_classifier(variant, len(dataset.classes), weights, config.dropout)
    frozen_until = config.frozen_until.get(variant.id, variant.backbone.frozen_until)
    frozen = bottom(classifier, frozen_until)

    # 1. Extraction: conversion, then the sample plain and as one augmented view.
    start = time.perf_counter()
    frozen.export(str(folder / "bottom.tflite"), format="litert", verbose=False)
    convert_s = time.perf_counter() - start
    extraction, outputs = {}, {}
    for view, augment in (("plain", None), ("augmented", augmentation(config, seed=config.seed + 1000))):
        pixels = image_dataset(samples, variant.size, config.batch_size, augment=augment)
        start = time.perf_counter()
        outputs[view] = run_litert(frozen, folder / "bottom.tflite", pixels, len(samples))
        extraction[view] = (time.perf_counter() - start) / len(samples)
    pooled, activations = outputs["plain"]["pooled"], outputs["plain"]["activations"]
    labels = np.array([sample.label for sample in samples], dtype="int32")

    # 2. Phase 1 on the pooled features tiled to the training set: 1 epoch, then 1 + `steps`.
    rows = counts["train"] * (1 + config.augment_views)
    train = (np.resize(pooled, (rows, pooled.shape[1])), np.resize(labels, rows))
    valid = (train[0][: counts["valid"]], train[1][: counts["valid"]])
    head_s = []
    for epochs in (1, 1 + steps):
        start = time.perf_counter()
        train_head(classifier, train, valid, dataclasses.replace(config, head_epochs=epochs, head_patience=epochs))
        head_s.append(time.perf_counter() - start)
    head_step_s = (head_s[1] - head_s[0]) / steps / math.ceil(rows / HEAD_BATCH)

    # 3. Test evaluation, size and latency, before phase 2 changes the model's trainable state.
    test_pixels = next(iter(image_dataset(samples, variant.size, EVAL_BATCH)))[0].numpy()
    test_batch = np.resize(test_pixels, (EVAL_BATCH, *test_pixels.shape[1:]))
    evaluate_s = median_seconds(lambda: classifier.predict_on_batch(test_batch), steps) / EVAL_BATCH
    classifier.save(folder / "model.keras")
    keras_ms = latency_ms(classifier, test_pixels, LATENCY_RUNS)
    start = time.perf_counter()
    with_class_maps(classifier).export(str(folder / "model.tflite"), format="litert", verbose=False)
    export_s = time.perf_counter() - start
    litert_ms = 1000 * litert_latency(Classifier, folder, dataset.classes, variant, test_pixels[0])

    # 4. Phase 2 steps on the cached activations, at the configured batch size.
    unfreeze_top(classifier, frozen_until)
    model = top(classifier, frozen_until)
    rate = config.fine_tune_learning_rate * variant.backbone.learning_rate_scale
    model.compile(optimizer=keras.optimizers.Adam(rate), loss=classification_loss(config), metrics=["accuracy"])
    batch = (np.resize(activations, (config.batch_size, *activations.shape[1:])).astype("float32"),
             one_hot(np.resize(labels, config.batch_size), classifier))
    train_step_s = median_seconds(lambda: model.train_on_batch(*batch), steps)
    valid_step_s = median_seconds(lambda: model.test_on_batch(*batch), steps)

    return {
        "spec": spec, "backbone": variant.id, "stand_in": is_stand_in(weights), "frozen_until": frozen_until,
        "images": len(samples), "steps": steps, "counts": counts,
        "convert_s": convert_s, "plain_s": extraction["plain"], "augmented_s": extraction["augmented"],
        "head_step_s": head_step_s, "train_step_s": train_step_s, "valid_step_s": valid_step_s,
        "evaluate_s": evaluate_s, "export_s": export_s,
        "activation_bytes": int(np.prod(activations.shape[1:])) * 2,  # cached as float16
        "params": int(classifier.count_params()),
        "params_trainable": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "keras_mb": (folder / "model.keras").stat().st_size / 1e6,
        "tflite_mb": (folder / "model.tflite").stat().st_size / 1e6,
        "keras_ms": keras_ms, "litert_ms": litert_ms,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": time.perf_counter() - started,
    }


def litert_latency(classifier_type, folder: Path, classes: list[str], variant, pixels) -> float:
    """Median seconds of the app's `Classifier.predict` on one image of the exported file.

    The app reads a model folder: the exported file, its labels and a model card. The card's
    metrics are left empty: stand-in weights have none worth stating.
    """
    (folder / "labels.json").write_text(json.dumps(classes))
    card = {"backbone": variant.id, "input_size": [variant.size, variant.size], "classes": classes,
            "quantization": "float32", "metrics": {}, "litert_metrics": {}}
    (folder / "model_card.json").write_text(json.dumps(card))
    classifier = classifier_type(folder)
    return median_seconds(lambda: classifier.predict(pixels), LATENCY_RUNS)


# --- Projection -----------------------------------------------------------------------------------


def recipe(config: Config) -> dict:
    """What the cost of a run depends on, from its config."""
    return {"views": config.augment_views if config.augment else 0, "head_epochs": config.head_epochs,
            "fine_tune_epochs": config.fine_tune_epochs if config.fine_tune else 0, "batch_size": config.batch_size}


def project(rates: dict, counts: dict, views: int, head_epochs: int, fine_tune_epochs: int, batch_size: int) -> dict:
    """Seconds of each phase of one backbone on the whole dataset, from the measured rates.

    Extraction caches the training split plain and as `views` augmented views, and the
    validation split plain; phase 1 trains on every cached training vector; phase 2 runs one
    validation pass for its baseline, then per epoch every training batch and a validation pass.
    """
    rows = counts["train"] * (1 + views)
    valid_pass = math.ceil(counts["valid"] / batch_size) * rates["valid_step_s"]
    epoch = math.ceil(rows / batch_size) * rates["train_step_s"] + valid_pass
    phases = {
        "extraction_s": rates["convert_s"] + (counts["train"] + counts["valid"]) * rates["plain_s"]
        + counts["train"] * views * rates["augmented_s"],
        "phase1_s": head_epochs * math.ceil(rows / HEAD_BATCH) * rates["head_step_s"],
        "phase2_s": valid_pass + fine_tune_epochs * epoch if fine_tune_epochs else 0.0,
        "evaluate_s": counts["test"] * rates["evaluate_s"],
    }
    return {**phases, "total_s": sum(phases.values())}


# --- Orchestration ---------------------------------------------------------------------------------


def run_logged(args: list[str], log_file: Path) -> float:
    """Run a Python job from the repository root, its output to `log_file`; return its wall seconds."""
    start = time.perf_counter()
    with open(log_file, "w") as output:
        job = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, check=False)
    if job.returncode:
        sys.exit(f"failed ({job.returncode}): {' '.join(args)}; see {log_file}")
    return time.perf_counter() - start


def measure_in_process(spec: str, weights_dir: Path, images: int, steps: int, work: Path) -> dict:
    """`measure` in a fresh process (its own peak memory, no graph left from the previous one)."""
    name = spec.replace(":", "_")
    out = work / f"{name}.json"
    log(f"  {spec} ({weights_dir})")
    run_logged([__file__, "--measure", spec, "--weights-dir", str(weights_dir), "--images", str(images),
                "--steps", str(steps), "--work-dir", str(work), "--out", str(out)], work / f"{name}.log")
    return json.loads(out.read_text())


def real_run(name: str, config_file: Path, backbones: list[str], work: Path) -> list[dict]:
    """A real `compare` run (resumed if already done), per backbone: metrics, timing and epochs run."""
    runs, cache = work / "runs", work / "cache" / name
    log(f"  compare --config {config_file} --run {name}")
    run_logged(["-m", "training", "compare", "--config", str(config_file), "--backbones", ",".join(backbones),
                "--weights-dir", str(load_config(CONFIG, {}).weights_dir), "--run", name,
                "--output-dir", str(runs), "--cache-dir", str(cache)], work / f"{name}.log")
    rows = []
    for row in json.loads((runs / name / "comparison.json").read_text()):
        folder = runs / name / row["backbone"]
        timing = json.loads((folder / "metrics.json").read_text())["timing"]
        head_epochs = len(json.loads((folder / "state.json").read_text())["steps"]["head"]["history"]["loss"])
        log_file = folder / "finetune_log.csv"
        fine_tune_epochs = len(log_file.read_text().splitlines()) - 1 if log_file.is_file() else 0
        rows.append({**row, **timing, "head_epochs": head_epochs, "fine_tune_epochs": fine_tune_epochs})
    return rows


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(row) + " |" for row in rows)])


def render(measured: list[dict], full: Config, profile: Config, checks: list[dict], real: dict, quick: bool) -> str:
    """The Markdown section."""
    card = [m for m in measured if m["spec"] in CARD]
    counts = measured[0]["counts"]
    full_r, profile_r = recipe(full), recipe(profile)
    views = 1 + full_r["views"]
    lines = [
        "## Cost of the full recipe per backbone on a CPU (the card's backbones, stand-in weights)",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {len(os.sched_getaffinity(0))} CPU cores (shared with other "
        f"jobs: load average {os.getloadavg()[1]:.1f} over the last 5 minutes at the end), Python "
        f"{platform.python_version()}. **GPU: not measured, no GPU machine was lent to this session.** "
        f"Reproduce: `.venv/bin/python bench/card_cost.py{' --quick' if quick else ''}`.",
        "",
        "Stand-in weights (random values in Keras' file format, `python -m training stand-in-weights`): "
        "cost does not depend on the weight values, accuracy does, so **no accuracy is reported for them**.",
        "",
        f"Each backbone was measured in its own process on {measured[0]['images']} training images spread over "
        "the classes, through the pipeline's own code: LiteRT extraction of the frozen bottom (plain, and with "
        f"the training augmentation), phase 1 (`train_head` on the pooled features tiled to {counts['train']:,} x "
        f"{views} vectors, 1 epoch against {1 + measured[0]['steps']}), phase 2 training and validation steps at "
        f"batch {full.batch_size} on the cached activations ({measured[0]['steps']} timed after {WARMUP} warm-up "
        f"steps), test evaluation (`predict_on_batch`, batch {EVAL_BATCH}). Latency: batch 1, median of "
        f"{LATENCY_RUNS} after {WARMUP} warm-up calls; LiteRT through the app's `Classifier` (2 threads) on "
        "the exported file (class maps included).",
        "",
        "### Measured rates and sizes",
        table(["backbone", "frozen until", "conversion s", "extraction ms/image, plain / augmented",
               "phase 1 ms/step (batch 256)", "phase 2 s/step, train / valid", "test eval ms/image",
               "peak RSS MiB (sample process)", ".keras MB", ".tflite MB", "Keras ms/image", "LiteRT ms/image"],
              [[m["backbone"], f"`{m['frozen_until']}`", f"{m['convert_s']:.1f}",
                f"{1000 * m['plain_s']:.0f} / {1000 * m['augmented_s']:.0f}", f"{1000 * m['head_step_s']:.1f}",
                f"{m['train_step_s']:.2f} / {m['valid_step_s']:.2f}", f"{1000 * m['evaluate_s']:.0f}",
                f"{m['peak_mib']:.0f}", f"{m['keras_mb']:.1f}", f"{m['tflite_mb']:.1f}", f"{m['keras_ms']:.1f}",
                f"{m['litert_ms']:.1f}"] for m in measured]),
        "",
        f"The pipeline also holds the cached activations of all {counts['train']:,} x {views} training views in "
        "memory for phase 2 (float16): "
        + ", ".join(f"{m['backbone']} {m['activation_bytes'] * (counts['train'] * views + counts['valid']) / 2**30:.1f} GiB"
                    for m in measured) + ", so a full run's peak memory is well above the sample process's.",
        "",
    ]
    for title, r in ((f"full recipe ({CONFIG}, the defaults)", full_r), (f"CPU profile ({PROFILE})", profile_r)):
        projected = [(m, project(m, counts, **r)) for m in measured]
        lines += [
            f"### Projected from measured rates: {title}",
            f"{counts['train']:,} training images x {1 + r['views']} view(s), {counts['valid']} validation, "
            f"{counts['test']} test; phase 1 {r['head_epochs']} epochs, phase 2 {r['fine_tune_epochs']} epochs: "
            "the configured maxima (both stop early on validation loss, so real runs may be shorter).",
            "",
            table(["backbone", "extraction min", "phase 1 min", "phase 2 min", "test eval min", "total min"],
                  [[m["backbone"], *(minutes(p[key]) for key in ("extraction_s", "phase1_s", "phase2_s", "evaluate_s",
                                                                    "total_s"))] for m, p in projected]),
            "",
        ]
        if card:
            total = sum(project(m, counts, **r)["total_s"] for m in card)
            verdict = "meets" if total <= GOAL_CPU_S else f"misses by {total / GOAL_CPU_S:.1f}x"
            lines += [f"The card's four ({', '.join(m['backbone'] for m in card)}): {minutes(total)} min projected "
                      f"against the goal of {minutes(GOAL_CPU_S)} min on 2 CPU cores: {verdict}. "
                      f"The GPU goal ({minutes(GOAL_GPU_S)} min) was not measured.", ""]
    if checks:
        lines += [
            "### Check of the projection against real runs (real ImageNet weights, full recipe)",
            "The same measurement on the backbones with real weights, projected with the epochs their real run "
            "actually took, against that run's own timings (`metrics.json`).",
            "",
            table(["backbone", "epochs run, phase 1 / 2", "extraction s, projected / real",
                   "phase 1 s (head), projected / real", "phase 2 s, projected / real"],
                  [[c["backbone"], f"{c['head_epochs']} / {c['fine_tune_epochs']}",
                    f"{c['projected']['extraction_s']:.0f} / {c['extract_s']:.0f}",
                    f"{c['projected']['phase1_s']:.0f} / {c['head_s']:.0f}",
                    f"{c['projected']['phase2_s']:.0f} / {c['phase2_s']:.0f}"] for c in checks]),
            "",
        ]
    if real:
        rows = []
        for full_row in real["full"]:
            other = next(r for r in real["profile"] if r["backbone"] == full_row["backbone"])
            rows.append([full_row["backbone"], f"{full_row['top1']:.1%}", f"{other['top1']:.1%}",
                         f"{100 * (other['top1'] - full_row['top1']):+.1f}", f"{full_row['train_s']:.0f}",
                         f"{other['train_s']:.0f}"])
        total = {name: sum(r["train_s"] for r in real[name]) for name in ("full", "profile")}
        lines += [
            "### The CPU profile's cost in accuracy, measured (real ImageNet weights)",
            "`python -m training compare` on butterflies50, same seed, each run with its own cold feature cache; "
            "time = extraction + phase 1 + phase 2 (`train_s`). Test split: 250 images (one image = 0.4 points).",
            "",
            table(["backbone", "test top-1, full recipe", "test top-1, CPU profile", "difference, points",
                   "full recipe s", "CPU profile s"], rows),
            "",
            f"All three: {total['full']:.0f} s full recipe, {total['profile']:.0f} s CPU profile "
            f"({total['profile'] / total['full']:.0%} of the time).",
            "",
        ]
    return "\n".join(lines).rstrip()


def main(args: argparse.Namespace) -> None:
    os.chdir(ROOT)  # the config's paths are relative to the repository root, as for `make run`
    full, profile = load_config(CONFIG, {}), load_config(PROFILE, {})
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    specs = ["mobilenet:0.25"] if args.quick else CARD + OTHERS
    real_specs = [] if args.quick else full.backbones
    stand_ins = work / "weights"
    log(f"stand-in weights for {', '.join(specs)} -> {stand_ins}")
    run_logged(["-m", "training", "stand-in-weights", str(stand_ins), "--backbones", ",".join(specs)],
               work / "stand-in-weights.log")
    log(f"measuring {args.images} images, {args.steps} steps per backbone")
    measured = [measure_in_process(spec, stand_ins, args.images, args.steps, work) for spec in specs]
    checks, real = [], {}
    if real_specs:
        checks = [measure_in_process(spec, Path(full.weights_dir), args.images, args.steps, work) for spec in real_specs]
        real = {"full": real_run("full", CONFIG, real_specs, work),
                "profile": real_run("cpu-profile", PROFILE, real_specs, work)}
        by_backbone = {row["backbone"]: row for row in real["full"]}
        checks = [{**by_backbone[c["backbone"]], "projected": project(
            c, c["counts"], full.augment_views, by_backbone[c["backbone"]]["head_epochs"],
            by_backbone[c["backbone"]]["fine_tune_epochs"], full.batch_size)} for c in checks]
    results = {"measured": measured, "checks": checks, "real": real}
    (work / "card_cost.json").write_text(json.dumps(results, indent=2))
    section = render(measured, full, profile, checks, real, args.quick)
    print(section)
    if not args.quick:
        sections.record("card_cost", section)
        log(f"recorded in {sections.BENCHMARKS.relative_to(ROOT)}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: one backbone, few images, nothing recorded")
    parser.add_argument("--images", type=int, help="training images measured per backbone (default 128; quick 8)")
    parser.add_argument("--steps", type=int, help="timed steps per phase (default 3; quick 2)")
    parser.add_argument("--work-dir", type=Path, help=f"where everything is written (default {WORK}[-quick])")
    parser.add_argument("--measure", metavar="BACKBONE", help=argparse.SUPPRESS)  # one backbone, in a child process
    parser.add_argument("--weights-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.images = args.images or (8 if args.quick else 128)
    args.steps = args.steps or (2 if args.quick else 3)
    args.work_dir = (args.work_dir or ROOT / f"{WORK}{'-quick' if args.quick else ''}").resolve()
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.measure:
        os.chdir(ROOT)
        result = measure(arguments.measure, load_config(CONFIG, {}), arguments.weights_dir, arguments.images,
                         arguments.steps, arguments.work_dir)
        arguments.out.write_text(json.dumps(result, indent=2))
    else:
        main(arguments)
