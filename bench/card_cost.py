"""What the full recipe costs per backbone on a CPU: measured per phase, projected to the whole dataset.

Run from the repository root (about 30 minutes on 2 cores; `--quick`: a smoke run of one backbone
on a few images that records nothing; `--dry-run` only checks the paths):

    .venv/bin/python bench/card_cost.py [--config configs/butterflies50.toml] [--quick] [--dry-run]

The card's four backbones (ResNet50, VGG16, InceptionV3, MobileNet 1.0) and the registry's
others have no ImageNet weights offline here, so they start from stand-in weights
(`training/standin.py`: random values in Keras' file format). Cost does not depend on the weight
values; accuracy does, so no accuracy is measured on them. A full run of the recipe on the card's
backbones would take hours on 2 cores, so each is measured on a fixed sample of training images,
through the pipeline's own code, in a process of its own (so that its peak memory is its own):

1. extraction: the frozen bottom converted to LiteRT (timed apart), then run by
   `training.features.run_litert`, plain and with the training augmentation; the cost of an
   image is the difference between the whole sample and its first half, so that what each call
   pays once drops out as it does over thousands of images;
2. phase 1: `training.head.train_head` on the sample's pooled features tiled to the size of the
   training set, one epoch against a few more;
3. test evaluation (`predict_on_batch`, batch 32), model size (`.keras`, and the `.tflite` the
   exporter writes), CPU latency at batch 1 (Keras; LiteRT through `runtime.litert.LiteRTModel`, as the app);
4. phase 2: one epoch of `fit` on the sample's cached activations, batched by
   `training.finetune.batches` and compiled as `fine_tune` compiles it, each step timed after a warm-up.

The rates are then projected to the whole dataset for the config's recipe (configs/butterflies50.toml:
the defaults of training/config.py) and for the cheaper configs/cpu-profile.toml. Both phases stop
early on validation loss: the projection takes their configured maximum numbers of epochs. To
check the method, the same measurement runs on the config's backbones, which have real weights;
their real runs (`python -m training compare`, full recipe and profile) give measured times,
the epochs actually run, and the profile's cost in test accuracy. Everything is written under
bench/results/card_cost (git-ignored); the full mode records its section in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import paths  # bench/paths.py and bench/sections.py: this script's folder is first on sys.path
import sections

ROOT = paths.ROOT
sys.path.insert(0, str(ROOT))

from training.config import Config, load_config  # noqa: E402  (no Keras: --help and --dry-run answer at once)

PROFILE = Path("configs/cpu-profile.toml")  # the cheaper recipe offered for CPUs
EXTRACTION_REPEATS = 3  # each half and whole sample extracted 3 times, the fastest kept: a difference of
# two single timings of a few images went negative under other load (a negative cost per image)
WORK = Path("bench/results/card_cost")  # --quick: bench/results/card_cost-quick
CARD = ["resnet50", "vgg16", "inceptionv3", "mobilenet"]  # the four backbones the goals are set for
OTHERS = ["mobilenetv2", "efficientnetb0"]  # the rest of the registry, at their default widths
GOAL_CPU_S = 45 * 60  # the card's four on butterflies50, 2 CPU cores
GOAL_GPU_S = 5 * 60  # the same on one GPU
HEAD_BATCH = 256  # training.head.train_head's batch size
EVAL_BATCH = 32  # training.runner.BackboneRun.step_evaluate's batch size for the test split
WARMUP = 1  # calls or steps before timing: the first traces the graph and allocates buffers
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


def step_timer():
    """A Keras callback that times each training and validation step as `fit` runs them (input
    pipeline included), in `.seconds["train"]` and `.seconds["test"]`."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self.started = {"train": [], "test": []}, 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self.started = time.perf_counter()

        on_test_batch_begin = on_train_batch_begin

        def on_train_batch_end(self, batch, logs=None):
            self.seconds["train"].append(time.perf_counter() - self.started)

        def on_test_batch_end(self, batch, logs=None):
            self.seconds["test"].append(time.perf_counter() - self.started)

    return StepTimer()


def measure(spec: str, config: Config, weights_dir: Path, images: int, steps: int, work: Path) -> dict:
    """Per-phase rates of one backbone on a sample of `images` training images (see the module doc)."""
    import keras
    import numpy as np

    from training.backbones import parse_variant, resolve_weights
    from training.dataset import augmentation, image_dataset
    from training.evaluate import latency_ms
    from training.features import run_litert
    from training.finetune import batches
    from training.folder import scan
    from training.head import train_head
    from training.losses import classification_loss, one_hot
    from training.model import bottom, build_classifier, to_litert, top, unfreeze_top, with_class_maps
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
    to_litert(frozen, folder / "bottom.tflite")
    convert_s = time.perf_counter() - start
    run_litert(frozen, folder / "bottom.tflite", image_dataset(samples[:2], variant.size, 2), 2)  # warm-up
    extraction, outputs = {}, {}
    for view, augment in (("plain", None), ("augmented", augmentation(config, seed=config.seed + 1000))):
        seconds = []
        for part in (samples[: len(samples) // 2], samples):
            pixels = image_dataset(part, variant.size, config.batch_size, augment=augment)
            timed = []
            for _ in range(EXTRACTION_REPEATS):
                start = time.perf_counter()
                outputs[view] = run_litert(frozen, folder / "bottom.tflite", pixels, len(part))
                timed.append(time.perf_counter() - start)
            seconds.append(min(timed))  # the least disturbed of the repeats, on a shared machine
        # The marginal cost of an image: what each call pays once (loading the interpreter,
        # starting the input pipeline) drops out, as it does over thousands of images.
        extraction[view] = (seconds[1] - seconds[0]) / (len(samples) - len(samples) // 2)
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
    to_litert(with_class_maps(classifier), folder / "model.tflite")
    export_s = time.perf_counter() - start
    litert_ms = 1000 * litert_latency(folder / "model.tflite", test_pixels[0])

    # 4. Phase 2: one epoch of `fit` on the cached activations, fed as fine_tune feeds them, each step timed.
    unfreeze_top(classifier, frozen_until)
    model = top(classifier, frozen_until)
    rate = config.fine_tune_learning_rate * variant.backbone.learning_rate_scale
    model.compile(optimizer=keras.optimizers.Adam(rate), loss=classification_loss(config), metrics=["accuracy"])
    rows = config.batch_size * (WARMUP + steps)
    data = (np.resize(activations, (rows, *activations.shape[1:])), one_hot(np.resize(labels, rows), classifier))
    timer = step_timer()
    model.fit(batches(data, config.batch_size, seed=config.seed), validation_data=batches(data, config.batch_size),
              epochs=1, callbacks=[timer], verbose=0)
    train_step_s, valid_step_s = (float(np.median(timer.seconds[kind][WARMUP:])) for kind in ("train", "test"))

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


def litert_latency(path: Path, pixels) -> float:
    """Median seconds of the exported file on one image through the runtime's runner, with the
    app's outputs (probabilities and class maps) and the app's 2 threads."""
    from runtime.litert import LiteRTModel
    from runtime.model_folder import OUTPUTS

    model = LiteRTModel(path, OUTPUTS, num_threads=2)
    return median_seconds(lambda: model(pixels), LATENCY_RUNS)


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


def run_logged(args: list[str], log_file: Path) -> None:
    """Run a Python job from the repository root, its output to `log_file`; stop the bench if it fails."""
    with open(log_file, "w") as output:
        job = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, check=False)
    if job.returncode:
        sys.exit(f"failed ({job.returncode}): {' '.join(args[:3])} ...; see {paths.shown(log_file)}")


def measure_in_process(spec: str, config: Path, weights_dir: Path, images: int, steps: int, work: Path,
                       reuse: bool = False) -> dict:
    """`measure` in a fresh process (its own peak memory, no graph left from the previous one);
    with `reuse`, an earlier measurement of the same backbone, weights, images and steps is kept."""
    name = f"{spec.replace(':', '_')}-{weights_dir.name}"
    out = work / f"{name}.json"
    if reuse and out.is_file():
        earlier = json.loads(out.read_text())
        if (earlier["images"], earlier["steps"]) == (images, steps):
            log(f"  {spec}, weights from {paths.shown(weights_dir)}: reusing {paths.shown(out)}")
            return earlier
    log(f"  {spec}, weights from {paths.shown(weights_dir)}")
    run_logged([__file__, "--measure", spec, "--config", str(config), "--weights-dir", str(weights_dir),
                "--images", str(images), "--steps", str(steps), "--work-dir", str(work), "--out", str(out)],
               work / f"{name}.log")
    return json.loads(out.read_text())


def real_run(name: str, config: Path, options: list[str], work: Path) -> list[dict]:
    """A real `compare` run (resumed, so skipped if already done), per backbone: its table row,
    its timing and the epochs each phase actually ran. Every run shares one feature cache: the
    features a cheaper recipe needs are those of the full recipe, computed once."""
    runs, cache = work / "runs", work / "cache"
    log(f"  compare --config {paths.shown(config)} --run {name}")
    run_logged(["-m", "training", "compare", "--config", str(config), *options, "--run", name,
                "--output-dir", paths.shown(runs), "--cache-dir", paths.shown(cache)], work / f"{name}.log")
    rows = []
    for row in json.loads((runs / name / "comparison.json").read_text()):
        if row["ensemble"]:  # the members' averaged row: no folder, no steps of its own
            continue
        folder = runs / name / row["backbone"]
        timing = json.loads((folder / "metrics.json").read_text())["timing"]
        steps = json.loads((folder / "state.json").read_text())["steps"]
        rows.append({**row, **timing, "head_epochs": len(steps["head"]["history"]["loss"]),
                     "fine_tune_epochs": len(steps["fine_tune"]["history"])})
    return rows


def check_projection(measured: dict, real: dict, config: Config) -> dict:
    """A real run's timings beside the projection of its measured rates with the epochs it ran."""
    projected = project(measured, measured["counts"], recipe(config)["views"], real["head_epochs"],
                        real["fine_tune_epochs"], config.batch_size)
    return {**real, "projected": projected}


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(row) + " |" for row in rows)])


def render(measured: list[dict], args: argparse.Namespace, full: Config, profile: Config, checks: list[dict],
           real: dict) -> str:
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
        f"Reproduce: `.venv/bin/python bench/card_cost.py --config {paths.shown(args.config)}"
        f"{' --quick' if args.quick else ''} --images {measured[0]['images']} --steps {measured[0]['steps']}"
        f"{'' if checks else ' --no-check'}`.",
        "",
        "Stand-in weights (random values in Keras' file format, `python -m training stand-in-weights`): "
        "cost does not depend on the weight values, accuracy does, so **no accuracy is reported for them**.",
        "",
        f"Each backbone was measured in its own process on {measured[0]['images']} training images spread over "
        "the classes, through the pipeline's own code: LiteRT extraction of the frozen bottom (plain, and with "
        f"the training augmentation), phase 1 (`train_head` on the pooled features tiled to {counts['train']:,} x "
        f"{views} vectors, 1 epoch against {1 + measured[0]['steps']}), phase 2 (one epoch of `fit` on the cached "
        f"activations at batch {full.batch_size}: median of {measured[0]['steps']} training and validation steps after "
        f"{WARMUP} warm-up step), test evaluation (`predict_on_batch`, batch {EVAL_BATCH}). Extraction per image: "
        "the whole sample minus its first half, after a warm-up call. Latency: batch 1, median of "
        f"{LATENCY_RUNS}; LiteRT: the exported file (class maps included) through the runtime's `LiteRTModel`, 2 threads as "
        "in the app. Noisy machine: read the figures as orders of magnitude.",
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
        "Extraction per image is the difference of two timings on a machine shared with other jobs: the plain "
        "and the augmented view run the same network (the augmentation adds a few ms), so the gap between the two "
        "columns shows how noisy these rates are.",
        "",
        f"The pipeline also holds the cached activations of all {counts['train']:,} x {views} training views in "
        "memory for phase 2 (float16): "
        + ", ".join(f"{m['backbone']} {m['activation_bytes'] * (counts['train'] * views + counts['valid']) / 2**30:.1f} GiB"
                    for m in measured) + ", so a full run's peak memory is well above the sample process's.",
        "",
    ]
    for title, r in ((f"full recipe ({paths.shown(args.config)})", full_r),
                     (f"CPU profile ({paths.shown(args.profile)})", profile_r)):
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
                         f"{100 * (other['top1'] - full_row['top1']):+.1f}",
                         f"{full_row['extract_s']:.0f} / {full_row['head_s']:.0f} / {full_row['phase2_s']:.0f}",
                         f"{other['head_s']:.0f} / {other['phase2_s']:.0f}"])
        lines += [
            "### The CPU profile's cost in accuracy, measured (real ImageNet weights)",
            f"`python -m training compare` on butterflies50 with `--config {paths.shown(args.config)}` (full recipe), "
            f"then with `--config {paths.shown(args.profile)}` and the same data, backbones, weights and seed, on the "
            "same feature cache: the profile's features (the plain view of each image) are the full recipe's, so "
            "its extraction is not timed again (projected above). Test split: 250 images (one image = 0.4 points).",
            "",
            table(["backbone", "test top-1, full recipe", "test top-1, CPU profile", "difference, points",
                   "full recipe: extraction / phase 1 / phase 2 s", "CPU profile: phase 1 / phase 2 s"], rows),
            "",
        ]
    return "\n".join(lines).rstrip()


def benchmark(args: argparse.Namespace, data: Path, weights: Path | None) -> None:
    """Measure every backbone, run the real comparisons, print the section and (full mode) record it."""
    full, profile = load_config(args.config, {}), load_config(args.profile, {"data": str(data)})
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    specs = ["mobilenet:0.25"] if args.quick else CARD + OTHERS
    stand_ins = work / "weights"
    log(f"stand-in weights for {', '.join(specs)} in {paths.shown(stand_ins)}")
    run_logged(["-m", "training", "stand-in-weights", str(stand_ins), "--backbones", ",".join(specs)],
               work / "stand-in-weights.log")
    log(f"measuring {args.images} images, {args.steps} steps per backbone")
    measured = [measure_in_process(spec, args.config, stand_ins, args.images, args.steps, work, args.reuse)
                for spec in specs]
    checks, real = [], {}
    if weights is not None and not args.quick:
        log("the config's backbones, real weights: the full recipe and the profile for real")
        options = ["--data", paths.shown(data), "--backbones", ",".join(full.backbones), "--weights-dir", paths.shown(weights)]
        real = {"full": real_run("full", args.config, options, work),
                "profile": real_run("cpu-profile", args.profile, options, work)}
        if not args.no_check:
            log("the same backbones measured as above, to check the projection against their real runs")
            rates = [measure_in_process(spec, args.config, weights, args.images, args.steps, work, args.reuse)
                     for spec in full.backbones]
            by_backbone = {row["backbone"]: row for row in real["full"]}
            checks = [check_projection(m, by_backbone[m["backbone"]], full) for m in rates]
    (work / "card_cost.json").write_text(json.dumps({"measured": measured, "checks": checks, "real": real}, indent=2))
    section = render(measured, args, full, profile, checks, real)
    print(section)
    if not args.quick:
        sections.record("card_cost", section)
        log(f"recorded in {paths.shown(sections.BENCHMARKS)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    paths.add_options(parser)
    parser.add_argument("--profile", type=Path, default=PROFILE,
                        help="the cheaper recipe projected beside the config's (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one backbone, few images, nothing recorded")
    parser.add_argument("--images", type=int, help="training images measured per backbone (default 64; quick 32)")
    parser.add_argument("--steps", type=int, help="timed steps per phase (default 3; quick 2)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip measuring the real-weight backbones to check the projection (about 10 minutes)")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the measurements already in the work folder (same images and steps)")
    parser.add_argument("--work-dir", type=Path, help=f"where everything is written (default {WORK}[-quick])")
    parser.add_argument("--measure", metavar="BACKBONE", help=argparse.SUPPRESS)  # one backbone, in a child process
    parser.add_argument("--weights-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.images = args.images or (32 if args.quick else 64)
    args.steps = args.steps or (2 if args.quick else 3)
    args.work_dir = Path(os.path.abspath(ROOT / (args.work_dir or f"{WORK}{'-quick' if args.quick else ''}")))
    os.chdir(ROOT)  # the config's paths are relative to the repository root, as for `make run`
    if args.measure:
        result = measure(args.measure, load_config(args.config, {}), args.weights_dir, args.images, args.steps,
                         args.work_dir)
        args.out.write_text(json.dumps(result, indent=2))
        return
    data = paths.folder(args.config, "data")
    weights = paths.folder(args.config, "weights_dir", required=False)
    log(f"{paths.shown(args.config)}: data {paths.shown(data)}, weights {paths.shown(weights) if weights else 'none here'}; "
        f"profile {paths.shown(args.profile)}; results in {paths.shown(args.work_dir)}")
    if not args.dry_run:
        benchmark(args, data, weights)


if __name__ == "__main__":
    main()
