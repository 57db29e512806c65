"""bench/card_cost.py: the projection's arithmetic, the CPU profile, and a smoke run of the real measurement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import card_cost  # noqa: E402
import paths  # noqa: E402
import sections  # noqa: E402

from training.config import Config, load_config  # noqa: E402

RATES = {"convert_s": 10.0, "plain_s": 1.0, "augmented_s": 2.0, "head_step_s": 0.5,
         "train_step_s": 3.0, "valid_step_s": 1.0, "evaluate_s": 0.25}
COUNTS = {"train": 100, "valid": 10, "test": 8}


def test_projection_counts_every_pass_of_the_recipe():
    """100 training images and 1 augmented view: 200 training vectors, batch 64 -> 4 steps."""
    projected = card_cost.project(RATES, COUNTS, views=1, head_epochs=3, fine_tune_epochs=2, batch_size=64)
    assert projected["extraction_s"] == 10 + 110 * 1.0 + 100 * 2.0  # conversion, plain train + valid, the view
    assert projected["phase1_s"] == 3 * 1 * 0.5  # 200 vectors fit in one batch of 256
    assert projected["phase2_s"] == 1.0 + 2 * (4 * 3.0 + 1.0)  # baseline validation, then 2 epochs
    assert projected["evaluate_s"] == 8 * 0.25
    assert projected["total_s"] == pytest.approx(sum(v for k, v in projected.items() if k != "total_s"))


def test_cpu_profile_drops_the_augmented_view_and_phase_2():
    full = card_cost.recipe(Config(data="any"))  # configs/butterflies50.toml keeps the defaults' recipe
    profile = card_cost.recipe(load_config(ROOT / card_cost.PROFILE, {}))
    assert profile["views"] == 0 < full["views"]
    assert profile["fine_tune_epochs"] == 0 < full["fine_tune_epochs"]
    cheap, dear = (card_cost.project(RATES, COUNTS, **r) for r in (profile, full))
    assert cheap["phase2_s"] == 0
    assert cheap["extraction_s"] < dear["extraction_s"] and cheap["total_s"] < dear["total_s"]


@pytest.mark.heavy
@pytest.mark.skipif(not (ROOT / paths.settings(paths.DEFAULT_CONFIG)["data"]).is_dir(),
                    reason="needs the dataset of configs/butterflies50.toml (../shared, present in CI)")
def test_quick_run_measures_every_phase_and_records_nothing(tmp_path):
    """One backbone on stand-in weights, a few images: every rate, size and latency is measured."""
    marker = "<!-- card_cost:start -->"
    before = sections.BENCHMARKS.read_text(encoding="utf-8").partition(marker)[2]
    run = subprocess.run([sys.executable, "bench/card_cost.py", "--quick", "--work-dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    [measured] = json.loads((tmp_path / "card_cost.json").read_text())["measured"]
    assert measured["stand_in"] and measured["images"] == 32
    for key in ("convert_s", "train_step_s", "valid_step_s", "evaluate_s",
                "keras_mb", "tflite_mb", "keras_ms", "litert_ms", "peak_mib", "activation_bytes"):
        assert measured[key] > 0, key
    # Per-image extraction and a head step are differences of two timings: on a loaded machine and a small sample
    # they can come out at about zero, so only their presence is checked, and what they were measured on.
    assert all(isinstance(measured[key], float) for key in ("plain_s", "augmented_s", "head_step_s"))
    assert (tmp_path / measured["backbone"] / "bottom.tflite").is_file()
    assert "Projected from measured rates: full recipe" in run.stdout and "CPU profile" in run.stdout
    assert "GPU: not measured, no GPU machine was lent to this session" in run.stdout
    assert "no accuracy is reported" in run.stdout
    assert sections.BENCHMARKS.read_text(encoding="utf-8").partition(marker)[2] == before
