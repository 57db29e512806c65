"""The benchmarks start, parse their options and find their paths: cheap checks, no measuring.

A benchmark that no test runs is broken by the next change, so each bench script is imported
here (every name it takes from `training`, `app` and `runtime` must still exist), asked for
--help, and dry-run against a config: paths come from the config and are shown relative to the
repository root. The measurements themselves take minutes each and run with `make bench`.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from shapes import BUTTERFLIES, ROOT, WEIGHTS

BENCHES = ["extraction", "train_compare", "serving", "card_cost"]


@pytest.fixture
def bench(monkeypatch):
    """Import a bench script as a module, as it imports its neighbours: bench/ first on sys.path."""
    monkeypatch.syspath_prepend(ROOT / "bench")

    def load(name: str) -> ModuleType:
        return importlib.import_module(name)

    return load


def write_config(folder: Path, data: Path, **settings: str) -> Path:
    """A bench config in `folder` naming `data` and a weights folder that both exist (unless removed)."""
    (folder / "weights").mkdir(exist_ok=True)
    lines = [f'data = "{data}"', f'weights_dir = "{folder / "weights"}"', 'backbones = ["mobilenet:0.25"]']
    lines += [f'{key} = "{value}"' for key, value in settings.items()]
    config = folder / "bench.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def shown(path: Path) -> str:
    """How the benches must name `path`: from the repository root."""
    return os.path.relpath(path, ROOT)


@pytest.mark.parametrize("name", BENCHES)
def test_every_bench_starts_and_explains_its_options(bench, name: str, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        bench(name).main(["--help"])
    assert stop.value.code == 0
    usage = capsys.readouterr().out
    assert "--config" in usage and "--dry-run" in usage


@pytest.mark.parametrize("name", BENCHES)
def test_a_dry_run_finds_the_config_paths_and_names_them_from_the_repository_root(
        bench, name: str, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    (data / "test" / "a class").mkdir(parents=True)
    finished_run = tmp_path / "runs" / "tiny"  # for serving, when nothing is exported here
    finished_run.mkdir(parents=True)
    (finished_run / "comparison.json").write_text("[]")
    config = write_config(tmp_path, data, output_dir=str(tmp_path / "runs"), run="tiny")

    assert not bench(name).main(["--config", str(config), "--dry-run"])
    said = capsys.readouterr().err
    assert shown(data) in said
    assert not [word for word in said.split() if word.startswith("/")]  # no machine path


@pytest.mark.parametrize("name", BENCHES)
def test_a_missing_data_folder_stops_the_bench_with_a_message(bench, name: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "nowhere")
    with pytest.raises(SystemExit) as stop:
        bench(name).main(["--config", str(config), "--dry-run"])
    message = str(stop.value.code)
    assert message.startswith(f"{config}: data = ") and "no such folder" in message and "nowhere" in message


@pytest.mark.skipif(not (BUTTERFLIES.is_dir() and WEIGHTS.is_dir()), reason="needs ../shared (butterflies50 and weights)")
@pytest.mark.parametrize("name", ["extraction", "train_compare"])
def test_the_default_config_names_the_shared_data_beside_the_repository(bench, name: str, capsys) -> None:
    assert not bench(name).main(["--dry-run"])
    said = capsys.readouterr().err
    assert "configs/butterflies50.toml: data ../shared/datasets/butterflies50, weights ../shared/weights" in said


def test_serving_exports_the_first_finished_run_when_nothing_is_exported(bench, tmp_path: Path) -> None:
    serving = bench("serving")
    deploy, runs = tmp_path / "deploy", [tmp_path / "make-run", tmp_path / "bench-run"]
    for run in runs:
        run.mkdir()
    (runs[1] / "comparison.json").write_text("[]")
    assert serving.run_to_export(deploy, runs) == runs[1]  # the first is unfinished

    (runs[0] / "comparison.json").write_text("[]")
    assert serving.run_to_export(deploy, runs) == runs[0]

    model = deploy / "mobilenet_0.25"
    model.mkdir(parents=True)
    for name in (serving.CARD_FILE, "labels.json", "model.tflite"):
        (model / name).write_text("{}")
    assert serving.run_to_export(deploy, runs) is None  # an exported model: serve it


def test_serving_says_which_target_to_run_when_there_is_nothing_to_serve(bench, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        bench("serving").run_to_export(tmp_path / "deploy", [tmp_path / "make-run"])
    assert "no exported model, and no finished run to export" in str(stop.value.code)
    assert "make run" in str(stop.value.code)


@pytest.mark.heavy
def test_the_suite_bench_runs_some_tests_and_records_nothing_for_a_part(bench) -> None:
    """bench/suite.py on two small test files, as `make bench` runs it on all of them: the
    section names the tests counted and the slowest steps; a part of the suite is never recorded."""
    before = bench("sections").BENCHMARKS.read_text(encoding="utf-8")
    files = ["tests/test_calibration.py", "tests/test_unknown.py"]  # no parametrized tests: one test per function
    result = subprocess.run([sys.executable, "bench/suite.py", "--workers", "1", "--only", *files], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    count = sum(len(re.findall(r"^def test_", (ROOT / file).read_text(), re.MULTILINE)) for file in files)
    assert f"{count} tests passed (0 skipped)" in result.stdout and "with 1 pytest-xdist workers" in result.stdout
    assert "| `tests/test_" in result.stdout and "not recorded" in result.stdout
    assert bench("sections").BENCHMARKS.read_text(encoding="utf-8") == before


def test_the_suite_bench_refuses_a_missing_test_file() -> None:
    result = subprocess.run([sys.executable, "bench/suite.py", "--only", "tests/nope.py"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--only: no such test file: tests/nope.py" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_comparison_section_is_the_cold_runs_table_with_its_commands(bench, tmp_path: Path, monkeypatch) -> None:
    """train_compare records the table `compare` wrote for its cold run, and how to make it again."""
    train_compare = bench("train_compare")
    monkeypatch.setattr(train_compare, "OUT", tmp_path)
    (tmp_path / "cold").mkdir()
    (tmp_path / "cold" / "run.json").write_text('{"config": {"data": "/x/butterflies50", "field_share": 0.25}}')
    (tmp_path / "cold" / "comparison.md").write_text("| # | backbone |\n|---|---|\n| 1 | mobilenet_0.25 |\n")
    field = ROOT.parent / "shared" / "datasets" / "leeds-field"
    section = train_compare.comparison_section(ROOT / "configs" / "butterflies50.toml", field)
    assert section.startswith("## Comparison table: butterflies50 with the leeds-field field set")
    assert "| 1 | mobilenet_0.25 |" in section and "`field_share` 0.25" in section
    assert ("--field-data ../shared/datasets/leeds-field/images --field-map ../shared/datasets/leeds-field/mapping.json"
            in section)
    assert "--field-data" not in train_compare.comparison_section(ROOT / "configs" / "butterflies50.toml", None)


def test_the_field_set_is_measured_on_each_run_with_that_runs_own_options(bench, tmp_path: Path) -> None:
    """compare refuses a finished run asked with other settings: measuring the field set on the
    no-field run without its `--field-share 0` stopped `make bench` after 50 minutes once."""
    train_compare = bench("train_compare")
    config, cache, field = Path("configs/butterflies50.toml"), tmp_path / "cache", Path("../shared/datasets/leeds-field")
    jobs = train_compare.field_jobs(config, cache, field)
    options = train_compare.run_options(config)
    assert list(jobs) == ["field-cold", "field-no-smoothing", "field-no-field", "field-shallow", "field-native-size"]
    for run, job in zip(("cold", "no-smoothing", "no-field", "shallow", "native-size"), jobs.values(), strict=True):
        training = train_compare.compare(config, run, cache, *options[run])
        assert job[:len(training)] == training  # the run's own training options, then the field set's
        assert job[len(training):] == train_compare.field_options(field)
    assert train_compare.field_jobs(config, cache, None) == {}


def test_the_shallow_run_fine_tunes_the_configs_mobilenetv2s_from_the_former_layer(bench, tmp_path: Path) -> None:
    """The fine-tuning depth ablation: only for the config's backbones whose family went deeper,
    and no run at all for a config without them."""
    train_compare = bench("train_compare")
    options = train_compare.run_options(Path("configs/butterflies50.toml"))
    assert options["shallow"] == ["--backbones=mobilenetv2:0.35,mobilenetv2:0.5", "--frozen-until=mobilenetv2:0.35=block_12_add",
                                  "--frozen-until=mobilenetv2:0.5=block_12_add"]
    config = tmp_path / "resnet.toml"
    config.write_text('data = "data"\nbackbones = ["resnet50", "mobilenet:0.25"]\n')
    assert list(train_compare.run_options(config)) == list(train_compare.RUNS)


def test_the_native_size_run_trains_at_the_backbones_own_size_when_the_config_asks_another(bench, tmp_path: Path) -> None:
    """The input size ablation: the config's backbones at their registry size, only when the config
    sets `image_size` to another and they share one size (--image-size is one number for all)."""
    train_compare = bench("train_compare")
    assert train_compare.run_options(Path("configs/butterflies50.toml"))["native-size"] == ["--image-size=224"]
    configs = {"unset": "", "own": "image_size = 224\n",
               "mixed": 'image_size = 288\nbackbones = ["inceptionv3", "mobilenet"]\n'}
    for name, text in configs.items():
        config = tmp_path / f"{name}.toml"
        config.write_text(f'data = "data"\n{text}')
        assert "native-size" not in train_compare.run_options(config), name


def test_train_compare_resumes_after_the_last_recorded_job(bench, tmp_path: Path, monkeypatch) -> None:
    """Each job's time is recorded as it ends; `--resume` runs only the jobs not recorded, each
    from the start (its run folder removed), and keeps the cache once the cold run is recorded."""
    train_compare = bench("train_compare")
    monkeypatch.setattr(train_compare, "OUT", tmp_path)
    config, cache, field = Path("configs/butterflies50.toml"), tmp_path / "cache", Path("../shared/datasets/leeds-field")
    names = list(train_compare.jobs(config, cache, field))
    assert names == [*train_compare.RUNS, "shallow", "native-size", "field-cold", "field-no-smoothing", "field-no-field",
                     "field-shallow", "field-native-size", "baseline"]
    ran, failures = [], ["no-smoothing"]

    def fake_job(args: list[str]) -> tuple[float, float]:
        name = next(name for name, job in train_compare.jobs(config, cache, field).items() if job == args)
        ran.append(name)
        if name in failures:
            failures.remove(name)
            raise SystemExit("job failed (1)")  # once: a failure half way through the list
        cache.mkdir(exist_ok=True)
        (tmp_path / name).mkdir(exist_ok=True)
        return float(len(ran)), 100.0

    monkeypatch.setattr(train_compare, "run_job", fake_job)
    with pytest.raises(SystemExit, match="job failed"):
        train_compare.run_jobs(config, cache, field, resume=False)
    recorded = json.loads((tmp_path / "jobs.json").read_text())
    assert list(recorded) == ["cold", "warm", "warm-phase1"]
    (tmp_path / "no-smoothing" / "half-trained").mkdir(parents=True)
    (cache / "features.npz").write_text("kept")

    timings = train_compare.run_jobs(config, cache, field, resume=True)
    assert ran == ["cold", "warm", "warm-phase1", "no-smoothing", *names[3:]]
    assert timings["cold"] == recorded["cold"] and list(timings) == names
    assert not (tmp_path / "no-smoothing" / "half-trained").exists()  # rerun from the start
    assert (cache / "features.npz").is_file()
    assert json.loads((tmp_path / "jobs.json").read_text()) == timings

    ran.clear()
    train_compare.run_jobs(config, cache, field, resume=False)  # without --resume: everything, on an empty cache
    assert ran == names and not (cache / "features.npz").exists()


def test_the_depth_section_sets_each_shallow_backbone_beside_the_default(bench, tmp_path: Path, monkeypatch) -> None:
    train_compare = bench("train_compare")
    monkeypatch.setattr(train_compare, "OUT", tmp_path)
    row = {key: None for _, key, _ in train_compare.ABLATION_COLUMNS} | {"ensemble": False}
    rows = {"cold": [row | {"backbone": "mobilenetv2_0.5", "top1": 0.984, "phase2_s": 524.0, "field_answered": 0.821},
                     row | {"backbone": "mobilenet_0.25", "top1": 0.972, "phase2_s": 97.0}],
            "shallow": [row | {"backbone": "mobilenetv2_0.5", "top1": 0.98, "phase2_s": 297.0, "field_answered": 0.75}]}
    for run, table in rows.items():
        (tmp_path / run).mkdir()
        (tmp_path / run / "comparison.json").write_text(json.dumps(table))
    section = train_compare.depth_section(Path("configs/butterflies50.toml"), Path("../shared/datasets/leeds-field"))
    assert "| mobilenetv2_0.5 | 98.4% / 98.0% | – / – |" in section  # no held-out species measured here
    assert "| 82.1% / 75.0% |" in section and "| 524 / 297 |" in section
    assert "mobilenet_0.25" not in section  # not fine-tuned shallower: nothing to set beside it
    assert "--run shallow --backbones=mobilenetv2:0.35,mobilenetv2:0.5 --frozen-until=mobilenetv2:0.35=block_12_add" in section
    assert section.count("--field-map ../shared/datasets/leeds-field/mapping.json") == 2  # both runs measured on it


def test_the_size_section_sets_each_backbone_at_its_own_size_beside_the_configs(bench, tmp_path: Path, monkeypatch) -> None:
    train_compare = bench("train_compare")
    monkeypatch.setattr(train_compare, "OUT", tmp_path)
    row = {key: None for _, key, _ in train_compare.ABLATION_COLUMNS} | {"ensemble": False}
    v2 = row | {"backbone": "mobilenetv2_0.5"}
    rows = {"cold": [v2 | {"top1": 0.988, "field_unknown_auroc": 0.917, "latency_ms": 17.9}],
            "native-size": [v2 | {"top1": 0.992, "field_unknown_auroc": 0.887, "latency_ms": 10.4}]}
    for run, table in rows.items():
        (tmp_path / run).mkdir()
        (tmp_path / run / "comparison.json").write_text(json.dumps(table))
    (tmp_path / "cold" / "run.json").write_text('{"config": {"image_size": 288}}')
    section = train_compare.size_section(Path("configs/butterflies50.toml"), None)
    assert section.startswith("## Input size: the config's 288x288 vs the backbones' own 224x224")
    assert "| test top-1, 288 / 224 |" in section
    assert "| mobilenetv2_0.5 | 98.8% / 99.2% |" in section and "| 0.917 / 0.887 |" in section and "| 17.9 / 10.4 |" in section
    assert "--run native-size --image-size=224 --config configs/butterflies50.toml" in section
    assert "--field-data" not in section


def test_the_smoothing_section_sets_each_backbone_trained_without_smoothing_beside_the_configs(
        bench, tmp_path: Path, monkeypatch) -> None:
    """Label smoothing is judged by what it does to telling unknown species apart, not by test top-1 alone."""
    train_compare = bench("train_compare")
    monkeypatch.setattr(train_compare, "OUT", tmp_path)
    row = {key: None for _, key, _ in train_compare.ABLATION_COLUMNS} | {"ensemble": False}
    v2 = row | {"backbone": "mobilenetv2_0.5"}
    rows = {"cold": [v2 | {"top1": 0.988, "unknown_auroc": 0.984, "field_unknown_auroc": 0.917},
                     row | {"backbone": "mobilenet_0.25", "top1": 0.98}],
            "no-smoothing": [v2 | {"top1": 0.98, "unknown_auroc": 0.922, "field_unknown_auroc": 0.861}]}
    for run, table in rows.items():
        (tmp_path / run).mkdir()
        (tmp_path / run / "comparison.json").write_text(json.dumps(table))
    (tmp_path / "cold" / "run.json").write_text('{"config": {"label_smoothing": 0.1}}')
    section = train_compare.smoothing_section(Path("configs/butterflies50.toml"), Path("../shared/datasets/leeds-field"))
    assert section.startswith("## Label smoothing: 0.1 (the config's) vs off")
    assert "| held-out species AUROC, 0.1 / off |" in section
    assert "| mobilenetv2_0.5 | 98.8% / 98.0% | 0.984 / 0.922 |" in section and "| 0.917 / 0.861 |" in section
    assert "mobilenet_0.25" not in section  # not in the no-smoothing run: nothing to set beside it
    assert "--run no-smoothing --label-smoothing 0 --config configs/butterflies50.toml" in section
