"""bench/load.py, run for real but small: the Procfile's server, a few Chromium tabs, its memory read.

The full measurement (16 tabs, phone-sized photos) takes minutes and is recorded in
docs/BENCHMARKS.md; here 4 tabs with one small photo each check that the bench drives the page to
its answers, reads the server's memory and judges it, and that its options fail with one clear
message. Skipped only where Debian's Chromium is missing, as the browser test is.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from photos import encode, scene

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH = REPO_ROOT / "bench" / "load.py"
CHROMIUM = Path("/usr/bin/chromium")
TABS = 4


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """bench/load.py with `args`, from the repository root, as its docstring runs it."""
    return subprocess.run([sys.executable, str(BENCH), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of class folders of small JPEG photos, laid out as leeds-field's images/."""
    folder = tmp_path_factory.mktemp("photos")
    for index in range(TABS + 1):
        kind = folder / f"{index % 2:03d}_species"
        kind.mkdir(exist_ok=True)
        (kind / f"photo{index}.jpg").write_bytes(encode(scene(320 + 40 * index, 240, seed=index), "JPEG", quality=90))
    return folder


@pytest.mark.heavy
@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)")
def test_every_tab_is_answered_and_the_memory_figures_are_within_the_targets(
        model_root: Path, photo_folder: Path, tmp_path: Path) -> None:
    figures_file = tmp_path / "load.json"
    result = bench("--model-root", str(model_root), "--photos", str(photo_folder), "--tabs", str(TABS),
                   "--per-tab", "1", "--as-is", "--settle", "2", "--no-record", "--json", str(figures_file))
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    assert figures["answered_tabs"] == TABS and figures["answered_photos"] == TABS
    assert all(each["failure"] is None for each in figures["visits"])
    memory = {name: figures[name] for name in ("idle_mib", "one_visit_mib", "peak_mib", "closed_mib", "after_mib")}
    assert 0 < memory["idle_mib"] <= memory["one_visit_mib"] <= memory["peak_mib"], memory
    assert memory["peak_mib"] <= 300, memory
    assert memory["after_mib"] <= memory["one_visit_mib"] + 25, memory
    assert len(figures["samples"]) > 10 * figures["load_s"] / 2  # about one sample per 0.1 s
    # The section it would record: the table, the command to reproduce it, no machine path.
    section = result.stdout
    assert section.startswith("## Load") and f"| Tabs with every photo answered | {TABS}/{TABS} |" in section
    assert ".venv/bin/python bench/load.py --model-root" in section


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"the dry run checks for Chromium at {CHROMIUM} (apt-get install chromium)")
def test_a_dry_run_checks_the_paths_and_prints_the_plan_without_a_browser(
        model_root: Path, photo_folder: Path) -> None:
    result = bench("--model-root", str(model_root), "--photos", str(photo_folder), "--dry-run", timeout=60)
    assert result.returncode == 0, result.stderr
    plan = result.stderr
    assert "streamlit run app/streamlit_app.py" in plan and "--server.address=127.0.0.1" in plan
    assert "16 Chromium tabs at once, 3 photos each" in plan
    assert f"of the {TABS + 1} in" in plan and "enlarged to phone size" in plan
    assert not result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--tabs", "0"], "argument --tabs: expected at least 1, got 0"),
    (["--per-tab", "many"], "argument --per-tab: expected a whole number, got 'many'"),
    (["--settle", "-1"], "argument --settle: expected 0 to 600 seconds, got -1"),
    (["--photos", "no/such/folder"], "--photos no/such/folder: no such folder"),
    (["--model-root", "no/such/root"], "--model-root no/such/root: no such folder"),
    (["--model-root", "docs"], "--model-root docs: no exported model (model.tflite) in it or its subfolders"),
    (["--before", "no/such.json"], "--before no/such.json: cannot read it as a --json file of this bench"),
])
def test_bad_options_and_missing_paths_get_one_clear_message(args: list[str], message: str) -> None:
    result = bench(*args, "--dry-run", timeout=60)
    assert result.returncode in (1, 2)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_with_no_model_to_serve_it_says_what_to_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    load = importlib.import_module("load")
    monkeypatch.setattr(load, "DEPLOY_ROOT", tmp_path / "deploy")
    monkeypatch.setattr(load, "finished_run", lambda: None)
    with pytest.raises(SystemExit) as stop:
        load.main(["--dry-run"])
    assert "no exported model, and no finished run to export: run `make run`, then `make export`" in str(stop.value)
    assert not capsys.readouterr().out


def test_photos_are_enlarged_to_phone_size_under_the_upload_limit(photo_folder: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        load = importlib.import_module("load")
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    sources = load.spread(load.photo_files(photo_folder), 2)
    photos = load.prepare_photos(sources, tmp_path, as_is=False, limit_mb=10)
    assert [max(photo.size) for photo in photos] == list(load.PHONE_SIDES[:2])
    assert all(0.3 < photo.megabytes < 9 for photo in photos), [photo.megabytes for photo in photos]
    assert len({photo.path.name for photo in photos}) == 2  # each its own name: how the page's answer is found


def test_help_names_every_option() -> None:
    result = bench("--help", timeout=60)
    assert result.returncode == 0
    for option in ("--model-root", "--stand-in", "--tabs", "--per-tab", "--photos", "--as-is", "--settle", "--json",
                   "--before", "--dry-run", "--no-record"):
        assert option in result.stdout
