"""Interrupted runs: killed with SIGKILL mid fine-tuning, the same command resumes and finishes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
from shapes import ROOT, make_dataset

ARGS = ["--backbones", "vgg16", "--weights", "none", "--image-size", "32", "--head-epochs", "5",
        "--fine-tune-epochs", "40", "--run", "resumable"]


def command(data, out) -> list[str]:
    # patient.toml: a huge patience keeps early stopping away, so the run is going when killed.
    return [sys.executable, "-m", "training", "compare", "--data", str(data), "--output-dir", str(out),
            "--cache-dir", str(out / "cache"), "--config", str(out / "patient.toml"), *ARGS]


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def epochs_logged(path) -> list[int]:
    if not path.is_file():
        return []
    with open(path) as file:
        return [int(row["epoch"]) for row in csv.DictReader(file)]


def test_killed_run_resumes_where_it_stopped(tmp_path):
    data = make_dataset(tmp_path / "data", counts=(6, 2, 2))
    out = tmp_path / "runs"
    out.mkdir()
    (out / "patient.toml").write_text("fine_tune_patience = 1000\n")
    folder = out / "resumable" / "vgg16"
    log = folder / "finetune_log.csv"

    first = subprocess.Popen(command(data, out), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while len(epochs_logged(log)) < 3 and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # no chance to clean up: like a power cut
    first.wait()
    killed_after = epochs_logged(log)
    assert 3 <= len(killed_after) < 40, "the run must be killed mid fine-tuning"
    assert not (folder / "metrics.json").exists()

    second = run(command(data, out))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "phase 1 already done" in second.stdout
    logged = epochs_logged(log)
    assert sorted(set(logged)) == list(range(40))  # every epoch, once finished
    assert len(logged) <= 41  # resumed, not restarted: at most the epoch cut short runs twice
    assert logged[len(killed_after)] >= len(killed_after) - 1

    # No temporary or corrupt file anywhere; every result reads back.
    assert not [p for p in (out / "resumable").rglob("*") if p.name.startswith(".tmp-")]
    for path in (out / "resumable").rglob("*.json"):
        json.loads(path.read_text())
    keras.models.load_model(folder / "model.keras")

    third = run(command(data, out))
    assert third.returncode == 0 and "already trained" in third.stdout


def test_resuming_with_other_settings_is_refused(tmp_path, trained_run):
    before = (trained_run / "run.json").read_text()
    data = json.loads(before)["config"]["data"]
    result = run([sys.executable, "-m", "training", "compare", "--data", data, "--output-dir", str(trained_run.parent),
                  "--run", "shapes", "--backbones", "vgg16", "--weights", "none", "--image-size", "32",
                  "--head-epochs", "40", "--fine-tune-epochs", "3", "--batch-size", "32",
                  "--fine-tune-learning-rate", "1e-4", "--seed", "99"])
    assert result.returncode == 2
    assert "was trained with other settings (weights_id, seed)" in result.stderr and "Traceback" not in result.stderr
    assert (trained_run / "run.json").read_text() == before  # refused before writing anything
