"""Does the exported model serve within a Heroku dyno's budget? Measure it, side by side with Keras.

The app serves a LiteRT export instead of the Keras model so that the dyno (512 MB, and 60 s to
bind $PORT) never loads TensorFlow. This script checks that the bet pays off, in one run:

1. per-image latency of the export (`app.inference.Classifier.predict`) against Keras
   `predict_on_batch` on the same 50 test images, one at a time, after a warm-up;
2. cold start: a fresh `python -c` that imports the app's modules, loads the model and
   classifies one photo, timed from outside and broken down from inside (target 2 s);
3. peak memory of a serving process after 200 photos through the app's own code path (decode,
   predict, heatmap, with Streamlit imported), and of the real `streamlit run` server
   (target 250 MB);
4. the Heroku slug size, built by bench/slug.py (target 150 MB compressed).

Keras runs in a subprocess, and items 2 and 3 in fresh subprocesses that never import
TensorFlow, so each figure is what a process doing only that job costs. The Markdown section it
prints also replaces the text between the serving markers in docs/BENCHMARKS.md.

    .venv/bin/python bench/serving.py [--config configs/butterflies50.toml] [--dry-run]
        [--model saved_models/deploy/<name>] [--keras saved_models/<run>/<name>] [--images <test split>]

The test images are the config's `data`/test unless `--images` says otherwise. With no `--model`
and nothing exported in saved_models/deploy yet, it first exports (`python -m training export
--best`) the best backbone of a finished run: the config's (`make run`), else bench/results/cold
(bench/train_compare.py); with neither, it says which target to run. Paths are taken from, and
recorded relative to, the repository root.

It exits with status 1 when a target is missed. Memory is in MiB (what `ru_maxrss` and dyno
quotas count), slug sizes in decimal MB (what Heroku reports).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paths  # bench/paths.py, sections.py, server.py and slug.py: this script's folder is first on sys.path
import psutil
import sections
import slug
from server import HEALTH_TIMEOUT_S, free_port, stop_process, wait_until_healthy
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.sync.client import connect

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # for `app` and `runtime`, as app/streamlit_app.py does

from app.inference import CARD_FILE, Classifier, find_models  # noqa: E402
from runtime import imaging  # noqa: E402

DEPLOY_ROOT = REPO_ROOT / "saved_models" / "deploy"
BENCH_RUN = REPO_ROOT / "bench" / "results" / "cold"  # the full recipe, as bench/train_compare.py trains it

LATENCY_IMAGES = 50
WARMUP_RUNS = 5  # the first calls allocate buffers (and, in Keras, trace the graph)
COLD_START_RUNS = 3
MEMORY_IMAGES = 200
IDLE_SECONDS = 3  # let the server finish starting up before reading its memory

COLD_START_TARGET_S = 2.0
RSS_TARGET_MIB = 250
MIB = 2**20

# Keras `predict_on_batch` on the images given, one at a time; prints the seconds per image.
KERAS_PROBE = """
import json, sys, time
import keras, tensorflow as tf
from runtime import imaging
model = keras.models.load_model(sys.argv[1])
warmup, paths = int(sys.argv[2]), sys.argv[3:]
images = [imaging.load_pixels(path, tuple(model.input.shape[1:3])) for path in paths]
for _ in range(warmup):
    model.predict_on_batch(images[0][None].astype("float32"))
seconds = []
for pixels in images:
    start = time.perf_counter()
    model.predict_on_batch(pixels[None].astype("float32"))
    seconds.append(time.perf_counter() - start)
print(json.dumps({"seconds": seconds, "tensorflow": tf.__version__, "keras": keras.__version__}))
"""

# What a dyno does before it can answer its first visitor, each step timed; `started` and
# `predicted` are wall-clock times, so the parent can add Python's own start-up.
COLD_START_PROBE = """
import time
started = time.time()
import json, sys
from pathlib import Path
from app.inference import Classifier
from runtime import imaging
imported = time.time()
classifier = Classifier(Path(sys.argv[1]))
loaded = time.time()
classifier.predict(imaging.load_pixels(sys.argv[2], classifier.input_size))
predicted = time.time()
print(json.dumps({"started": started, "imported": imported, "loaded": loaded, "predicted": predicted}))
"""

# The app's own functions on many different photos: decode for display and for the model,
# predict, draw the heatmap. Importing app.streamlit_app imports Streamlit, as `streamlit run` does.
MEMORY_PROBE = """
import json, resource, sys
from pathlib import Path
import app.streamlit_app as web
from app.inference import heatmap
classifier = web.load_classifier(Path(sys.argv[1]))
for path in map(Path, sys.argv[2:]):  # what the page does for one photo, minus the widgets
    photo = web.decode(path.name, path.read_bytes(), classifier)
    full, box = web.first_look(photo, classifier)
    heatmap(photo, web.see(photo, classifier, full, box).class_map)
heavy = sorted({name.split(".")[0] for name in sys.modules} & {"tensorflow", "keras"})
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "heavy_modules": heavy}))
"""


def log(message: str) -> None:
    """Progress goes to stderr, so that stdout carries only the Markdown section."""
    print(message, file=sys.stderr, flush=True)


def run_probe(code: str, *args: str) -> dict:
    """Run `code` in a fresh `python -c` from the repository root; return the JSON it printed last."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"probe failed with status {result.returncode}:\n{result.stderr}")
    return json.loads(result.stdout.splitlines()[-1])


def read_card(folder: Path) -> dict:
    """The model card of an exported model folder."""
    return json.loads((folder / CARD_FILE).read_text(encoding="utf-8"))


def best_model(root: Path) -> Path:
    """The model the app shows first: the export with the best test top-1 on its card."""
    folders = find_models(root)
    if not folders:
        sys.exit(f"{paths.shown(root)}: no exported model; run `make export` first")
    return max(folders, key=lambda folder: read_card(folder)["litert_metrics"]["top1"])


def trained_runs(config: Path) -> list[Path]:
    """Where a finished run may be: the config's own (what `make run` trains), then the bench's."""
    settings = paths.settings(config)
    run = settings.get("run") or Path(settings.get("data", "")).name  # as training.config.Config.run_dir
    return [REPO_ROOT / settings.get("output_dir", "saved_models") / run, BENCH_RUN]


def run_to_export(deploy_root: Path, runs: list[Path]) -> Path | None:
    """The first finished run of `runs`, when `deploy_root` holds no exported model yet (None when it
    does). With neither, stop and say which target makes one."""
    if find_models(deploy_root):
        return None
    for run in runs:
        if (run / "comparison.json").is_file():
            return run
    sys.exit(f"{paths.shown(deploy_root)}: no exported model, and no finished run to export "
             f"({', '.join(paths.shown(run) for run in runs)}): run `make run` (or bench/train_compare.py), "
             "then this again")


def export_best(run: Path) -> None:
    """Export the best backbone of `run` into saved_models/deploy, as `make export` does."""
    command = [sys.executable, "-m", "training", "export", "--run", paths.shown(run), "--best"]
    log(f"nothing exported yet: {shlex.join(command)}")
    if subprocess.run(command, cwd=REPO_ROOT, check=False).returncode:
        sys.exit(f"exporting {paths.shown(run)} failed (see above)")


def test_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """One image per class for latency, and MEMORY_IMAGES distinct ones for the memory run."""
    if not folder.is_dir():
        sys.exit(f"{folder}: no such folder; pass the test split with --images")
    by_class = [sorted(classes.glob("*.jpg")) for classes in sorted(folder.iterdir()) if classes.is_dir()]
    everything = sorted(path for paths in by_class for path in paths)
    one_each = [paths[0] for paths in by_class if paths][:LATENCY_IMAGES]
    if len(one_each) < LATENCY_IMAGES or len(everything) < MEMORY_IMAGES:
        sys.exit(f"{folder}: need {LATENCY_IMAGES} classes and {MEMORY_IMAGES} images, "
                 f"found {len(one_each)} and {len(everything)}")
    return one_each, everything[:MEMORY_IMAGES]


def litert_latencies(model: Path, images: list[Path]) -> list[float]:
    """Seconds per image through Classifier.predict, the call the app makes, decoding excluded."""
    classifier = Classifier(model)
    pixels = [imaging.load_pixels(path, classifier.input_size) for path in images]
    for _ in range(WARMUP_RUNS):
        classifier.predict(pixels[0])
    seconds = []
    for image in pixels:
        start = time.perf_counter()
        classifier.predict(image)
        seconds.append(time.perf_counter() - start)
    return seconds


def cold_starts(model: Path, image: Path) -> list[dict]:
    """COLD_START_RUNS fresh processes, each timed from just before it is spawned."""
    runs = []
    for _ in range(COLD_START_RUNS):
        spawned = time.time()
        times = run_probe(COLD_START_PROBE, str(model), str(image))
        exited = time.time()
        runs.append({
            "to_prediction": times["predicted"] - spawned,
            "python": times["started"] - spawned,
            "imports": times["imported"] - times["started"],
            "load": times["loaded"] - times["imported"],
            "predict": times["predicted"] - times["loaded"],
            "process": exited - spawned,
        })
    return runs


def rss_mib(process: psutil.Process) -> float:
    """Resident memory of a process and all its children."""
    return sum(each.memory_info().rss for each in [process, *process.children(recursive=True)]) / MIB


def view_page(port: int) -> None:
    """Open one session over the websocket, as a browser tab does, and wait for the page to render.

    Streamlit runs the app script (and so loads the model) only when a session asks for it:
    the idle figure alone would leave out the model and the app's imports.
    """
    request = BackMsg()
    request.rerun_script.query_string = ""
    with connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"]) as socket_:
        socket_.send(request.SerializeToString())
        message = ForwardMsg()
        while message.WhichOneof("type") != "script_finished":
            message.ParseFromString(socket_.recv(timeout=HEALTH_TIMEOUT_S))


def streamlit_server(model_root: Path) -> dict:
    """`streamlit run` as the Procfile starts it: time to healthy, RSS idle, RSS after one page view."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "streamlit"), "run", "app/streamlit_app.py",
        f"--server.port={port}", "--server.address=127.0.0.1", "--server.headless=true",
    ]
    server = subprocess.Popen(
        command, cwd=REPO_ROOT, env={**os.environ, "MODEL_DIR": str(model_root)},
        stdout=subprocess.DEVNULL,  # its log (stderr) joins this script's progress messages
    )
    try:
        healthy_s = wait_until_healthy(f"http://127.0.0.1:{port}", server)
        time.sleep(IDLE_SECONDS)
        process = psutil.Process(server.pid)
        idle = rss_mib(process)
        view_page(port)
        return {"healthy_s": healthy_s, "idle_mib": idle, "page_mib": rss_mib(process)}
    finally:
        stop_process(server)


def slug_sizes() -> tuple[float, float]:
    """Compressed and unpacked slug size in MB, built by bench/slug.py from a fresh install."""
    with contextlib.redirect_stdout(sys.stderr):
        built = slug.build(fresh=True)
        slug.report(built)
    return built.compressed_mb, built.unpacked_mb


def milliseconds(seconds: list[float]) -> str:
    """Median and 90th percentile of per-image times, in ms."""
    return f"median {np.median(seconds) * 1000:.1f} ms, p90 {np.percentile(seconds, 90) * 1000:.1f} ms"


def table_rows(results: dict) -> list[tuple[str, str, str, bool | None]]:
    """(measure, figure, target, passed) per line of the table; passed is None where there is no target."""
    litert, keras, memory, server = results["litert"], results["keras"]["seconds"], results["memory"], results["server"]
    starts = results["cold_starts"]
    start = {key: statistics.median(run[key] for run in starts) for key in starts[0]}
    each_start = ", ".join(f"{run['to_prediction']:.2f}" for run in starts)
    speedup = float(np.median(keras) / np.median(litert))
    peak = memory["peak_kib"] / 1024
    compressed, unpacked = results["slug"]
    return [
        ("Latency, LiteRT `Classifier.predict` (batch 1)", milliseconds(litert), "", None),
        ("Latency, Keras `predict_on_batch` (batch 1)", milliseconds(keras), "", None),
        ("Keras / LiteRT median latency", f"{speedup:.1f}x", "> 1x", speedup > 1),
        (f"Cold start: process start to first prediction (median of {len(starts)})",
         f"{start['to_prediction']:.2f} s ({each_start})", f"<= {COLD_START_TARGET_S:g} s",
         start["to_prediction"] <= COLD_START_TARGET_S),
        ("Cold start breakdown (medians)",
         f"Python start-up {start['python']:.2f} s, imports {start['imports']:.2f} s, model load "
         f"{start['load']:.2f} s, decode + predict {start['predict']:.2f} s; whole process {start['process']:.2f} s",
         "", None),
        (f"Peak RSS after {MEMORY_IMAGES} photos with heatmaps (`ru_maxrss`)", f"{peak:.0f} MB",
         f"<= {RSS_TARGET_MIB} MB", peak <= RSS_TARGET_MIB),
        ("TensorFlow or Keras imported by that process", ", ".join(memory["heavy_modules"]) or "no", "no",
         not memory["heavy_modules"]),
        ("`streamlit run`: start to healthy", f"{server['healthy_s']:.1f} s", f"<= {HEALTH_TIMEOUT_S} s (R10)",
         server["healthy_s"] <= HEALTH_TIMEOUT_S),
        ("`streamlit run`: RSS idle after start", f"{server['idle_mib']:.0f} MB", f"<= {RSS_TARGET_MIB} MB",
         server["idle_mib"] <= RSS_TARGET_MIB),
        ("`streamlit run`: RSS after one page view (model loaded)", f"{server['page_mib']:.0f} MB",
         f"<= {RSS_TARGET_MIB} MB", server["page_mib"] <= RSS_TARGET_MIB),
        ("Slug, compressed", f"{compressed:.1f} MB", f"<= {slug.TARGET_MB} MB", compressed <= slug.TARGET_MB),
        ("Slug, unpacked", f"{unpacked:.1f} MB", "", None),
    ]


def render(results: dict, rows: list[tuple[str, str, str, bool | None]], command: str) -> str:
    """The Markdown section: what was compared, the table, how it was measured, where, and how to rerun."""
    verdicts = {True: "pass", False: "**FAIL**", None: ""}
    versions = {"Python": platform.python_version(), "TensorFlow": results["keras"]["tensorflow"],
                "Keras": results["keras"]["keras"]}
    versions |= {package: importlib.metadata.version(package)
                 for package in ("ai-edge-litert", "streamlit", "numpy", "pillow")}
    return "\n".join([
        "## Serving",
        "",
        f"The exported model `{results['model']}` (LiteRT) against the Keras model it came from, "
        f"`{results['keras_folder']}`.",
        "",
        "| Measure | Result | Target | |",
        "| --- | --- | --- | --- |",
        *(f"| {measure} | {figure} | {target} | {verdicts[passed]} |" for measure, figure, target, passed in rows),
        "",
        f"Latency: the same {LATENCY_IMAGES} test images (one per class), already decoded, one at a time after "
        f"{WARMUP_RUNS} warm-up calls; the LiteRT model also returns the class maps for the heatmap, the Keras "
        "model only the probabilities. Cold start: a fresh `python -c` importing `app.inference` and `runtime.imaging`, "
        "loading the model and classifying one photo, timed from just before it is spawned. Peak RSS: a fresh "
        "process importing `app.streamlit_app` (so Streamlit too) and running what its page does for one photo "
        "(`decode`, `first_look`, `see`, `heatmap`) on "
        f"{MEMORY_IMAGES} different test photos. The server is measured {IDLE_SECONDS} s after its health check "
        "answers, then after one session (a websocket `rerun_script`, as a browser tab sends) has run the app "
        "script, which loads the model. Memory in MiB, slug sizes in decimal MB (bench/slug.py).",
        "",
        f"{sections.machine()}. Versions: {', '.join(f'{name} {version}' for name, version in versions.items())}. "
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; "
        f"the whole run took {results['duration_s']:.0f} s.",
        *sections.reproduce(command),
    ])


def measure(model: Path, keras_folder: Path, images: Path) -> dict:
    """Run every measurement, one after the other so that none competes with another for the CPU."""
    began = time.monotonic()
    latency_images, memory_images = test_images(images)
    log(f"1/4 latency: {paths.shown(model)} (LiteRT), {paths.shown(keras_folder)} (Keras), {LATENCY_IMAGES} images")
    litert = litert_latencies(model, latency_images)
    keras = run_probe(KERAS_PROBE, str(keras_folder / "model.keras"), str(WARMUP_RUNS), *map(str, latency_images))
    log(f"2/4 cold start: {COLD_START_RUNS} fresh processes")
    starts = cold_starts(model, latency_images[0])
    log(f"3/4 memory: {MEMORY_IMAGES} photos through the app's code, then `streamlit run`")
    memory = run_probe(MEMORY_PROBE, str(model), *map(str, memory_images))
    server = streamlit_server(model.parent)
    log("4/4 slug: bench/slug.py")
    sizes = slug_sizes()
    return {
        "model": paths.shown(model), "keras_folder": paths.shown(keras_folder), "litert": litert, "keras": keras,
        "cold_starts": starts, "memory": memory, "server": server, "slug": sizes,
        "duration_s": time.monotonic() - began,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    paths.add_options(parser)
    parser.add_argument("--model", type=Path,
                        help="exported model folder, from the repository root (default: the best in saved_models/deploy)")
    parser.add_argument("--keras", type=Path, help="Keras model folder (default: the `source` on the model card)")
    parser.add_argument("--images", type=Path,
                        help="test split, one folder per class, from the repository root (default: the config's data/test)")
    args = parser.parse_args(argv)
    images = REPO_ROOT / args.images if args.images else paths.folder(args.config, "data", "test")
    run = None if args.model else run_to_export(DEPLOY_ROOT, trained_runs(args.config))
    if args.dry_run:
        model = paths.shown(args.model) if args.model else f"the best in {paths.shown(DEPLOY_ROOT)}"
        log(f"model: {model}" + (f", once the best backbone of {paths.shown(run)} is exported" if run else ""))
        log(f"test images: {paths.shown(images)}")
        return 0
    if run:
        export_best(run)
    model = (REPO_ROOT / args.model).resolve() if args.model else best_model(DEPLOY_ROOT)
    keras_folder = (REPO_ROOT / (args.keras or read_card(model)["source"])).resolve()

    results = measure(model, keras_folder, images)
    rows = table_rows(results)
    command = shlex.join([".venv/bin/python", "bench/serving.py", "--model", results["model"],
                          "--keras", results["keras_folder"], "--images", paths.shown(images)])
    section = render(results, rows, command)
    print(section)
    sections.record("serving", section)
    log(f"written to {paths.shown(sections.BENCHMARKS)}")
    return 1 if any(passed is False for *_, passed in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
