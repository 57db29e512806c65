"""Many visitors at once: are they all answered, and does the server's memory come back after?

A 512 MB dyno cannot afford memory that grows with each visitor. This script starts the web app
as the Procfile does (the `web:` command, setup.sh included, on a free port, `MODEL_DIR` set to
the model root) and sends it `--tabs` visitors at once: real Chromium tabs, one browser
context each (so each is its own Streamlit session), each uploading `--per-tab` field photos
one after the other and waiting for the page's answer to each (a species heading or "Not
sure", for that photo's name, once the run is over). Meanwhile it reads the resident memory
of the server's process tree every 0.1 s (psutil):

1. idle: a few seconds after the health check answers, before any visitor;
2. after one visit: one tab views the page and gets one photo answered (which loads the model
   and imports what the first answer needs), then leaves; read `--settle` seconds later;
3. peak while the tabs are open, and the time until every photo was answered;
4. after the tabs closed: at once, and again `--settle` seconds later.

Targets (issue #8): every photo answered, peak <= 300 MB, and memory after the visitors left
no more than after one visit plus `AFTER_MARGIN_MIB` (see there). It exits with status 1 when
one is missed, and records its figures between the load markers of docs/BENCHMARKS.md
(`--no-record` to skip).

    .venv/bin/python bench/load.py [--model-root DIR | --stand-in] [--tabs 16] [--per-tab 3]
        [--photos DIR] [--as-is] [--settle S] [--json FILE] [--before FILE] [--dry-run] [--no-record]

Photos: `--photos` (default: leeds-field's images), a spread of files across its folders. Those
are web-sized (150-750 px, tens of kB), so by default each is enlarged to a phone camera's size
(long side 4032, 3264, 2560 or 1600 px in turn, with sensor-like noise: 0.5-4 MB JPEGs), written
to a temporary folder outside the repository; `--as-is` uploads the files unchanged.

Model root: `--model-root`, else saved_models/deploy when it holds a model, else the best backbone
of a finished run exported there as bench/serving.py does (`python -m training export --best`).
With none of these it stops and says what to run (`make run`, then `make export`); `--stand-in`
instead builds, once, a model folder the exporter's way (MobileNetV2 0.5 at 224x224, 50 classes)
with random weights under build/load/: its answers mean nothing, but the server holds, decodes
and runs what a real export makes it hold, decode and run.

Memory is in MiB (what dyno quotas count).
"""

from __future__ import annotations

import argparse
import asyncio
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
import tempfile
import threading
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import paths  # bench/paths.py, sections.py and server.py: this script's folder is first on sys.path
import sections
from server import ServerError, free_port, stop_process, wait_until_healthy

REPO_ROOT = paths.ROOT
sys.path.insert(0, str(REPO_ROOT))  # for `app` and `runtime`, as app/streamlit_app.py does

from app.inference import find_models  # noqa: E402
from runtime.imaging import IMAGE_EXTENSIONS  # noqa: E402

DEPLOY_ROOT = Path("saved_models/deploy")
STAND_IN_ROOT = Path("build/load/stand-in")
PHOTOS = Path("../shared/datasets/leeds-field/images")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]

TABS = 16
PER_TAB = 3
PHONE_SIDES = (4032, 3264, 2560, 1600)  # long sides of the enlarged photos, in turn: 12 MP down to 2 MP
NOISE = 10  # +-levels of uniform noise on the enlarged photos, so that they compress like camera photos
SAMPLE_S = 0.1
BROWSER_NICE = 10  # the browsers' (and this script's) niceness: the server goes first on the shared cores
IDLE_S = 3  # let the server finish starting before reading its idle memory
SETTLE_S = 30  # after a visit or the load, wait this long before reading the memory that stays
LEVEL_S = 1.0  # a memory level is the median of the samples of the last second
ANSWER_TIMEOUT_S = int(os.environ.get("LOAD_TIMEOUT", 180))  # per photo, with every tab at work on 2 cores

PEAK_TARGET_MIB = 300
# What "back near its idle figure" allows over the memory after one visit. Freed memory is not
# all handed back to the system at once: glibc keeps up to its trim threshold (128 KiB, raised up
# to 64 MiB by big frees) free at the top of each arena, and Python keeps partly used pymalloc
# pools. 25 MiB is a few such remnants, a tenth of the 250 MB the app may use after a page view,
# and well under what one visitor's photos cost (the upload, the decoded photo, its thumbnails).
AFTER_MARGIN_MIB = 25
MIB = 2**20

# The page has answered `name` when the app is not running, its image caption says `name` and a
# heading gives the answer ("<class> (<p>%)" or "Not sure"), all from the current run (elements
# of an earlier run are marked data-stale until replaced). A message naming the file counts as
# a refusal.
ANSWERED_JS = r"""
(name) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') === 'running') return null;
  const fresh = [...document.querySelectorAll('[data-testid="stElementContainer"]')]
    .filter((element) => element.getAttribute('data-stale') !== 'true');
  const refusal = fresh.find((element) =>
    element.querySelector('[data-testid="stAlert"]') && element.innerText.trim().startsWith(name + ':'));
  if (refusal) return {refused: refusal.innerText.trim()};
  const shown = fresh.some((element) => {
    const caption = element.querySelector('[data-testid="stImageCaption"]');
    return caption && caption.innerText.trim() === name;
  });
  if (!shown) return null;
  for (const element of fresh) {
    const heading = element.querySelector('h3');
    const text = heading ? heading.innerText.trim() : '';
    if (text === 'Not sure' || /\(\d+(\.\d+)?%\)$/.test(text)) return {heading: text};
  }
  return null;
}
"""

# The page holds no file and has finished the run that removing one started (its prompt to upload
# is shown, not stale): ready for the next photo. Uploading before that run is over can lose the
# upload to the page's update from the run.
SETTLED_JS = r"""
() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-testid="stFileChip"]')) return false;
  return [...document.querySelectorAll('[data-testid="stElementContainer"]')].some((element) =>
    element.getAttribute('data-stale') !== 'true' && element.querySelector('[data-testid="stAlert"]')
    && element.innerText.trim().startsWith('Upload photos'));
}
"""

# The state of a page, for the message of a tab that got no answer.
SHOWING_JS = r"""
() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const texts = (selector) => [...document.querySelectorAll(selector)].map((e) =>
    (e.closest('[data-stale="true"]') ? '(stale) ' : '') + e.innerText.trim().slice(0, 80));
  return JSON.stringify({state: app && app.getAttribute('data-test-script-state'),
    captions: texts('[data-testid="stImageCaption"]'), headings: texts('h1, h3'),
    alerts: texts('[data-testid="stAlert"]'), files: texts('[data-testid="stFileChipName"]')});
}
"""

# A model folder laid out and converted as the exporter does (training.model.build_classifier,
# with_class_maps, to_litert), from random weights: what the server holds and runs is real size.
STAND_IN_PROBE = """
import json, sys
from pathlib import Path
import keras
import numpy as np
from runtime.answer import normalised
from runtime.model_folder import BANK_FILE, CARD_FILE, LABELS_FILE, MODEL_FILE, ModelCard
from training.unknown import BANK_PER_CLASS
from training.backbones import parse_variant
from training.model import build_classifier, to_litert, with_class_maps
folder, labels = Path(sys.argv[1]), sys.argv[2:]
keras.utils.set_random_seed(0)
variant = parse_variant("mobilenetv2:0.5")
model = with_class_maps(build_classifier(variant, len(labels), None, 0.2))
folder.mkdir(parents=True, exist_ok=True)
to_litert(model, folder / MODEL_FILE)
zero = {"top1": 0.0, "top5": 0.0, "macro_f1": 0.0}
# The served unknown score, with a feature bank of the exporter's size (random rows: memory, not meaning).
channels = model.predict_on_batch(np.zeros((1, variant.size, variant.size, 3)))["features"].shape[-1]
bank = normalised(np.random.default_rng(0).normal(size=(BANK_PER_CLASS * len(labels), channels)))
np.save(folder / BANK_FILE, bank.astype(np.float16))
levels = np.linspace(0, 1, 201).tolist()
unknown = {"score": "max_softmax+knn", "temperature": 1.0, "threshold": 0.0, "k": 5,
           "ranks": {"max_softmax": levels, "knn": levels}}
card = ModelCard(backbone=variant.id, input_size=[variant.size, variant.size], classes=labels, quantization="float32",
                 metrics=zero, litert_metrics=zero, unknown=unknown, subject="butterfly species"
                 ).to_json(stand_in_weights=True, source="bench/load.py --stand-in")
(folder / LABELS_FILE).write_text(json.dumps(labels))
(folder / CARD_FILE).write_text(json.dumps(card, indent=2))
"""


def log(message: str) -> None:
    """Progress goes to stderr, so that stdout carries only the Markdown section."""
    print(message, file=sys.stderr, flush=True)


# --- Options and paths ---------------------------------------------------------------------------


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a number of seconds, not negative."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value <= 600:
        raise argparse.ArgumentTypeError(f"expected 0 to 600 seconds, got {text}")
    return value


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-root", type=Path,
                        help=f"the model root to serve, from the repository root (default: {DEPLOY_ROOT} if it "
                             "holds a model, else the best backbone of a finished run, exported there)")
    parser.add_argument("--stand-in", action="store_true",
                        help=f"with no model to serve, build a random-weight MobileNetV2 export in {STAND_IN_ROOT}")
    parser.add_argument("--tabs", type=positive, default=TABS, help="visitors at once (default: %(default)s)")
    parser.add_argument("--per-tab", type=positive, default=PER_TAB,
                        help="photos each visitor uploads, one after the other (default: %(default)s)")
    parser.add_argument("--photos", type=Path, default=PHOTOS,
                        help="a folder of photos, searched recursively (default: %(default)s)")
    parser.add_argument("--as-is", action="store_true", help="upload the photos unchanged, not enlarged to phone size")
    parser.add_argument("--settle", type=seconds, default=SETTLE_S,
                        help="seconds to wait before reading the memory that stays (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the figures (and the memory samples) to this file")
    parser.add_argument("--before", type=Path,
                        help="a --json file of an earlier run, shown beside this one in the recorded section")
    parser.add_argument("--dry-run", action="store_true", help="check the options and paths, print the plan, and exit")
    parser.add_argument("--no-record", action="store_true", help="print the section instead of recording it")
    return parser.parse_args(argv)


def photo_files(folder: Path) -> list[Path]:
    """The images under `folder` (recursively), sorted; stops the bench, named, if there are none."""
    path = REPO_ROOT / folder
    if not path.is_dir():
        sys.exit(f"--photos {folder}: no such folder")
    found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not found:
        sys.exit(f"--photos {folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in it or its subfolders")
    return found


def spread(files: list[Path], count: int) -> list[Path]:
    """`count` files spaced evenly through `files` (so every class folder gets its turn), repeating if short."""
    step = len(files) / count
    return [files[int(index * step) % len(files)] for index in range(count)]


def model_root(args: argparse.Namespace) -> tuple[Path, str]:
    """The model root to serve and what it is; or the finished run to export first; stops if there is none."""
    if args.model_root is not None:
        root = REPO_ROOT / args.model_root
        if not root.is_dir():
            sys.exit(f"--model-root {args.model_root}: no such folder")
        if not find_models(root):
            sys.exit(f"--model-root {args.model_root}: no exported model (model.tflite) in it or its subfolders")
        return root, "given"
    if find_models(REPO_ROOT / DEPLOY_ROOT):
        return REPO_ROOT / DEPLOY_ROOT, "exported"
    if run := finished_run():
        return REPO_ROOT / DEPLOY_ROOT, f"export of {paths.shown(run)}"
    if args.stand_in:
        return REPO_ROOT / STAND_IN_ROOT, "stand-in"
    sys.exit(f"{DEPLOY_ROOT}: no exported model, and no finished run to export: run `make run`, then `make export` "
             "(or pass --model-root DIR, or --stand-in to measure with a random-weight model)")


def finished_run() -> Path | None:
    """A finished training run to export, as bench/serving.py looks for one: the config's, then the bench's."""
    settings = paths.settings(paths.DEFAULT_CONFIG)
    run = settings.get("run") or Path(settings.get("data", "")).name
    runs = [REPO_ROOT / settings.get("output_dir", "saved_models") / run, REPO_ROOT / "bench" / "results" / "cold"]
    return next((run for run in runs if (run / "comparison.json").is_file()), None)


def export_best(run: Path) -> None:
    """Export the best backbone of `run` into saved_models/deploy, as `make export` does."""
    command = [sys.executable, "-m", "training", "export", "--run", paths.shown(run), "--best"]
    log(f"nothing exported yet: {shlex.join(command)}")
    if subprocess.run(command, cwd=REPO_ROOT, check=False).returncode:
        sys.exit(f"exporting {paths.shown(run)} failed (see above)")


def build_stand_in(root: Path) -> None:
    """The stand-in model folder (once; a later run reuses it), labelled with butterflies50's classes if at hand."""
    folder = root / "mobilenetv2_0.5"
    if find_models(root):
        return
    data = paths.settings(paths.DEFAULT_CONFIG).get("data", "")
    train = REPO_ROOT / data / "train"
    labels = sorted(p.name for p in train.iterdir() if p.is_dir()) if data and train.is_dir() else []
    labels = labels or [f"species {number:02d}" for number in range(1, 51)]
    log(f"building the stand-in model (random weights) in {paths.shown(folder)}")
    result = subprocess.run([sys.executable, "-c", STAND_IN_PROBE, str(folder), *labels], cwd=REPO_ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"building the stand-in model failed:\n{result.stderr[-3000:]}")


def upload_limit_mb() -> int:
    """The app's upload limit (server.maxUploadSize in .streamlit/config.toml, else Streamlit's 200 MB)."""
    config = REPO_ROOT / ".streamlit" / "config.toml"
    settings = tomllib.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    return int(settings.get("server", {}).get("maxUploadSize", 200))


# --- Photos --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Photo:
    path: Path  # what the tab uploads
    source: str  # where it came from, from the repository root
    size: tuple[int, int]
    megabytes: float


def prepare_photos(sources: list[Path], folder: Path, as_is: bool, limit_mb: int) -> list[Photo]:
    """The photos to upload, each under a name of its own (the page shows it: how an answer is recognised)."""
    import numpy as np
    from PIL import Image, ImageOps

    rng = np.random.default_rng(0)
    photos = []
    for index, source in enumerate(sources):
        target = folder / f"{index:03d}-{source.stem}{source.suffix.lower() if as_is else '.jpg'}"
        with Image.open(source) as opened:
            image = ImageOps.exif_transpose(opened)
            if as_is:
                target.write_bytes(source.read_bytes())
                size = image.size
            else:
                side = PHONE_SIDES[index % len(PHONE_SIDES)]
                scale = side / max(image.size)
                big = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)),
                                                  Image.Resampling.BICUBIC)
                pixels = np.asarray(big, dtype=np.int16) + rng.integers(-NOISE, NOISE + 1, (big.height, big.width, 3),
                                                                        dtype=np.int16)
                big = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
                for quality in (92, 85, 75):  # under the upload limit, which the page would refuse
                    big.save(target, "JPEG", quality=quality)
                    if target.stat().st_size <= limit_mb * 1e6 * 0.9:
                        break
                size = big.size
        photos.append(Photo(target, paths.shown(source), size, target.stat().st_size / 1e6))
    return photos


# --- The server and its memory -------------------------------------------------------------------


def procfile_command() -> str:
    """The Procfile's web command, bound to the loopback interface instead of every interface."""
    procfile = REPO_ROOT / "Procfile"
    for line in procfile.read_text(encoding="utf-8").splitlines():
        kind, _, command = line.partition(":")
        if kind.strip() == "web":
            return command.strip().replace("--server.address=0.0.0.0", "--server.address=127.0.0.1")
    sys.exit(f"{paths.shown(procfile)}: no web: line")


class Server:
    """The Procfile's web command in a process group of its own, with a scratch $HOME (setup.sh writes
    its credentials file there, and no personal ~/.streamlit settings change what is measured)."""

    def __init__(self, root: Path, scratch: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = scratch / "streamlit.log"
        home = scratch / "home"
        home.mkdir()
        env = {**os.environ, "PORT": str(self.port), "MODEL_DIR": str(root), "HOME": str(home),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        with self.log.open("w") as output:
            self.process = subprocess.Popen(["sh", "-c", procfile_command()], cwd=REPO_ROOT, env=env,
                                            stdout=output, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_until_healthy(self) -> float:
        """Seconds until Streamlit's health endpoint answers; stops the bench if the server dies or is late."""
        try:
            return wait_until_healthy(self.url, self.process, self.log)
        except ServerError as error:
            sys.exit(str(error))

    def stop(self) -> None:
        """Stop the whole group (the shell and Streamlit under it)."""
        stop_process(self.process, group=True)


class Sampler(threading.Thread):
    """Reads the resident memory of a process and all its children every SAMPLE_S seconds."""

    def __init__(self, pid: int) -> None:
        import psutil

        super().__init__(daemon=True)
        self._psutil = psutil
        self._root = psutil.Process(pid)
        self._done = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (monotonic seconds, MiB)
        self.marks: list[tuple[float, str]] = []

    def rss_mib(self) -> float:
        total = 0
        try:
            processes = [self._root, *self._root.children(recursive=True)]
        except self._psutil.NoSuchProcess:
            return 0.0
        for process in processes:
            with contextlib.suppress(self._psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total / MIB

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append((time.monotonic(), self.rss_mib()))
            self._done.wait(SAMPLE_S)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def mark(self, what: str) -> float:
        now = time.monotonic()
        self.marks.append((now, what))
        return now

    def level(self) -> float:
        """The memory now: the median of the last second's samples (one read may catch a passing buffer)."""
        now = time.monotonic()
        recent = [mib for when, mib in self.samples if when >= now - LEVEL_S] or [self.rss_mib()]
        return statistics.median(recent)

    def peak(self, since: float, until: float) -> float:
        return max((mib for when, mib in self.samples if since <= when <= until), default=0.0)


# --- Visitors ------------------------------------------------------------------------------------


@dataclass
class Visit:
    """What one tab saw: per photo, the answer (or refusal) and the seconds from upload to answer."""

    tab: int
    answers: list[dict] = field(default_factory=list)
    failure: str | None = None

    def answered(self, photos: int) -> bool:
        return self.failure is None and len(self.answers) == photos and all("heading" in a for a in self.answers)


async def visit(browser, url: str, tab: int, photos: list[Photo]) -> Visit:
    """One visitor in a browser context of its own: open the page, upload each photo, wait for its answer, leave."""
    from playwright.async_api import Error as PlaywrightError

    result = Visit(tab)
    context = await browser.new_context(viewport={"width": 1280, "height": 1200})
    try:
        page = await context.new_page()
        await page.goto(url, timeout=ANSWER_TIMEOUT_S * 1000)
        uploader = page.locator("input[type=file]")
        await uploader.wait_for(state="attached", timeout=ANSWER_TIMEOUT_S * 1000)
        for index, photo in enumerate(photos):
            if index:  # the uploader takes several files: remove the last photo first, as a visitor would
                await page.get_by_test_id("stFileChipDeleteBtn").get_by_role("button").click(
                    timeout=ANSWER_TIMEOUT_S * 1000)
                await page.wait_for_function(SETTLED_JS, polling=100, timeout=ANSWER_TIMEOUT_S * 1000)
            started = time.monotonic()
            await uploader.set_input_files(photo.path, timeout=ANSWER_TIMEOUT_S * 1000)
            handle = await page.wait_for_function(ANSWERED_JS, arg=photo.path.name, polling=100,
                                                  timeout=ANSWER_TIMEOUT_S * 1000)
            seen = await handle.json_value()
            result.answers.append({"photo": photo.path.name, "seconds": time.monotonic() - started, **seen})
    except PlaywrightError as error:
        result.failure = f"{str(error).strip().splitlines()[0]}; the page showed: {await showing(page)}"
    finally:
        await context.close()
    return result


async def showing(page) -> str:
    """What the page shows, in a few words: for a failure's message."""
    try:
        return await page.evaluate(SHOWING_JS)
    except Exception as error:  # noqa: BLE001 (a closed or crashed page says so instead)
        return f"nothing readable ({error.__class__.__name__})"


async def drive(server: Server, sampler: Sampler, tabs: list[list[Photo]], first: Photo, settle: float) -> dict:
    """The visits, in order: one page view with one photo, then every tab at once; memory read between."""
    from playwright.async_api import async_playwright

    figures: dict = {"idle_mib": sampler.level()}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            log("one visitor: the page and one photo")
            sampler.mark("one visit")
            warm = await visit(browser, server.url, 0, [first])
            if not warm.answered(1):
                sys.exit(f"the first visitor got no answer: {warm.failure or warm.answers}\n"
                         f"{server.log.read_text()[-3000:]}")
            await asyncio.sleep(settle)
            figures["one_visit_mib"] = sampler.level()
            log(f"{len(tabs)} visitors at once, {sum(map(len, tabs))} photos")
            began = sampler.mark("load")
            visits = await asyncio.gather(*(visit(browser, server.url, tab + 1, photos)
                                            for tab, photos in enumerate(tabs)))
            ended = sampler.mark("tabs closed")
            figures["load_s"] = ended - began
            figures["peak_mib"] = sampler.peak(began, ended)
            await asyncio.sleep(LEVEL_S)
            figures["closed_mib"] = sampler.level()
            await asyncio.sleep(max(0.0, settle - LEVEL_S))
            sampler.mark("settled")
            figures["after_mib"] = sampler.level()
        finally:
            await browser.close()
    figures["visits"] = [asdict(each) for each in visits]
    figures["answered_tabs"] = sum(each.answered(len(photos)) for each, photos in zip(visits, tabs))
    figures["answered_photos"] = sum("heading" in answer for each in visits for answer in each.answers)
    figures["answer_s"] = [answer["seconds"] for each in visits for answer in each.answers if "heading" in answer]
    return figures


def measure(root: Path, tabs: list[list[Photo]], first: Photo, settle: float, scratch: Path) -> dict:
    """Start the server, read its idle memory, drive the visitors, stop it; the figures."""
    server = Server(root, scratch)
    try:
        healthy_s = server.wait_until_healthy()
        # The visitors' browsers would run on their own machines: here they share the server's cores,
        # so they (this process, the Playwright driver and Chromium, started from here) yield first.
        os.nice(BROWSER_NICE)
        sampler = Sampler(server.process.pid)
        sampler.start()
        try:
            time.sleep(IDLE_S)
            figures = asyncio.run(drive(server, sampler, tabs, first, settle))
        finally:
            sampler.stop()
    finally:
        server.stop()
    start = sampler.samples[0][0] if sampler.samples else 0.0
    figures |= {
        "healthy_s": healthy_s,
        "samples": [(round(when - start, 2), round(mib, 1)) for when, mib in sampler.samples],
        "marks": [(round(when - start, 2), what) for when, what in sampler.marks],
    }
    return figures


# --- Report --------------------------------------------------------------------------------------


def targets(figures: dict) -> list[tuple[str, str, str, bool | None]]:
    """(measure, figure, target, passed) per row; passed is None where there is no target."""
    tabs, photos = figures["tabs"], figures["tabs"] * figures["per_tab"]
    answers = figures["answer_s"] or [float("nan")]
    allowed = figures["one_visit_mib"] + AFTER_MARGIN_MIB
    return [
        ("Tabs with every photo answered", f"{figures['answered_tabs']}/{tabs}", f"{tabs}/{tabs}",
         figures["answered_tabs"] == tabs),
        ("Photos answered", f"{figures['answered_photos']}/{photos}", f"{photos}/{photos}",
         figures["answered_photos"] == photos),
        ("Time until every tab was done", f"{figures['load_s']:.1f} s", "", None),
        ("Upload to answer, per photo", f"median {statistics.median(answers):.1f} s, "
         f"max {max(answers):.1f} s", "", None),
        ("RSS idle (after start)", f"{figures['idle_mib']:.0f} MB", "", None),
        ("RSS after one visit (page + 1 photo, tab closed)", f"{figures['one_visit_mib']:.0f} MB", "", None),
        ("RSS peak while the tabs were open", f"{figures['peak_mib']:.1f} MB", f"<= {PEAK_TARGET_MIB} MB",
         figures["peak_mib"] <= PEAK_TARGET_MIB),
        ("RSS 1 s after the tabs closed", f"{figures['closed_mib']:.0f} MB", "", None),
        (f"RSS {figures['settle_s']:g} s after the tabs closed", f"{figures['after_mib']:.0f} MB",
         f"<= {allowed:.0f} MB (one visit + {AFTER_MARGIN_MIB})", figures["after_mib"] <= allowed),
    ]


def render(figures: dict, rows: list, command: str, before: dict | None) -> str:
    """The Markdown section: what ran, the table (beside an earlier run's, if given), how, where, how to rerun."""
    verdicts = {True: "pass", False: "**FAIL**", None: ""}
    versions = {"Python": platform.python_version()}
    versions |= {name: importlib.metadata.version(name) for name in ("streamlit", "ai-edge-litert", "pillow", "playwright")}
    sizes = [photo["megabytes"] for photo in figures["photos"]]
    model = {"stand-in": "a stand-in export (`--stand-in`: nothing was trained or exported on this machine; "
                         "MobileNetV2 0.5 at 224x224 with random weights, converted as the exporter converts: its "
                         "answers mean nothing, its memory and work are real)",
             "given": f"the models in `{figures['model_root']}`"}.get(figures["model_kind"], f"`{figures['model_root']}`")
    header = ["| Measure | Result | Target | |", "| --- | --- | --- | --- |"]
    lines = [f"| {m} | {f} | {t} | {verdicts[p]} |" for m, f, t, p in rows]
    if before:
        old = {measure: figure for measure, figure, *_ in targets(before)}
        header = ["| Measure | Before | After | Target | |", "| --- | --- | --- | --- | --- |"]
        lines = [f"| {m} | {old.get(m, '')} | {f} | {t} | {verdicts[p]} |" for m, f, t, p in rows]
    text = [
        "## Load: many visitors at once (`bench/load.py`)",
        "",
        f"{figures['tabs']} Chromium tabs at once against `streamlit run` started by the Procfile's command, "
        f"each a session of its own uploading {figures['per_tab']} photos one after the other and waiting for each "
        f"answer; served model: {model}.",
        "",
        *header,
        *lines,
        "",
    ]
    if before:
        text += [f"Before: the app as of {before['commit']}, measured {before['when']} by this script with the same "
                 f"options (there with `--json FILE`, here `--before FILE`). After: {figures['commit']}.", ""]
    text += [
        f"Photos: {len(sizes)} from `{figures['photos_folder']}`"
        + (" uploaded as they are" if figures["as_is"] else
           f", enlarged to phone size (long side {', '.join(map(str, PHONE_SIDES))} px in turn, with noise)")
        + f", {min(sizes):.1f}-{max(sizes):.1f} MB each; one more for the first visit. RSS: the server's process "
        f"tree (the Procfile's shell and Streamlit) read every {SAMPLE_S:g} s with psutil, in MiB; a level is the "
        f"median of a second's samples. Idle is read {IDLE_S} s after the health check answered; the first visit "
        f"loads the model and what the first answer imports, so that the figure after it is the server's working "
        f"size; the memory after the tabs closed may exceed it by {AFTER_MARGIN_MIB} MB (freed memory that the "
        "allocators keep for reuse, see `AFTER_MARGIN_MIB`). Both are read `--settle` seconds after the tabs "
        "closed: Streamlit keeps a closed tab's session, its photo included, for a reconnection, which the app "
        "allows for 15 s before it shuts the session down (`app.memory.ClosedTabs`).",
        "",
        f"{sections.machine()}; Chromium and the bench share the server's cores, at niceness {BROWSER_NICE} so "
        "that the server goes first. Versions: "
        f"{', '.join(f'{name} {version}' for name, version in versions.items())}. Measured {figures['when']}; "
        f"the server was healthy {figures['healthy_s']:.1f} s after its start.",
        *sections.reproduce(command),
    ]
    return "\n".join(text)


def commit() -> str:
    """The checked-out commit, marked when the app's files differ from it."""
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return result.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown commit"
    changed = git("status", "--porcelain", "--", "app", "runtime", "Procfile", "setup.sh", ".streamlit")
    return f"{head} with uncommitted app changes" if changed else head


def read_before(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads((REPO_ROOT / path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        sys.exit(f"--before {path}: cannot read it as a --json file of this bench ({error})")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    before = read_before(args.before)
    files = photo_files(args.photos)
    root, kind = model_root(args)
    if not CHROMIUM.exists():
        sys.exit(f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
    count = args.tabs * args.per_tab
    if args.dry_run:
        log(f"server: {procfile_command()} (Procfile), MODEL_DIR={paths.shown(root)} ({kind})")
        log(f"visitors: {args.tabs} Chromium tabs at once, {args.per_tab} photos each, after one first visit")
        log(f"photos: {count + 1} of the {len(files)} in {paths.shown(REPO_ROOT / args.photos)}"
            + (" as they are" if args.as_is else ", enlarged to phone size"))
        log(f"targets: all answered, peak <= {PEAK_TARGET_MIB} MB, after <= one visit + {AFTER_MARGIN_MIB} MB; "
            + ("prints the section" if args.no_record else f"records in {paths.shown(sections.BENCHMARKS)}"))
        return 0
    if kind.startswith("export of"):
        export_best(finished_run())
    elif kind == "stand-in":
        build_stand_in(root)

    with tempfile.TemporaryDirectory(prefix="load-bench-") as scratch:
        log(f"preparing {count + 1} photos")
        photos = prepare_photos(spread(files, count + 1), Path(scratch), args.as_is, upload_limit_mb())
        tabs = [photos[1 + tab * args.per_tab: 1 + (tab + 1) * args.per_tab] for tab in range(args.tabs)]
        log(f"serving {paths.shown(root)}")
        figures = measure(root, tabs, photos[0], args.settle, Path(scratch))
    figures |= {
        "tabs": args.tabs, "per_tab": args.per_tab, "settle_s": args.settle, "as_is": args.as_is,
        "model_root": paths.shown(root), "model_kind": kind, "photos_folder": paths.shown(REPO_ROOT / args.photos),
        "photos": [{"source": p.source, "size": p.size, "megabytes": round(p.megabytes, 2)} for p in photos],
        "commit": commit(), "when": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
    }
    rows = targets(figures)
    words = [".venv/bin/python", "bench/load.py"] + (argv if argv is not None else sys.argv[1:])
    command = shlex.join(word for word in words if word != "--no-record")
    section = render(figures, rows, command, before)
    for measure_, figure, target, passed in rows:
        log(f"{measure_}: {figure}" + (f" (target {target}: {'pass' if passed else 'FAIL'})" if target else ""))
    for each in figures["visits"]:
        if each["failure"]:
            log(f"tab {each['tab']}: {each['failure']}")
    if args.json:
        (REPO_ROOT / args.json).parent.mkdir(parents=True, exist_ok=True)
        (REPO_ROOT / args.json).write_text(json.dumps(figures, indent=1), encoding="utf-8")
    if args.no_record:
        print(section)
    else:
        sections.record("load", section)
        log(f"written to {paths.shown(sections.BENCHMARKS)}")
    return 1 if any(passed is False for *_, passed in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
