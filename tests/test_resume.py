"""Interrupted runs: killed with SIGKILL mid fine-tuning or between any two steps, the same
command resumes and finishes with the result of an uninterrupted run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from shapes import ROOT, make_dataset

from training.__main__ import main
from training.runner import STEPS

ARGS = ["--backbones", "vgg16", "--weights", "none", "--image-size", "32", "--head-epochs", "2",
        "--fine-tune-epochs", "5", "--run", "resumable"]


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


@pytest.mark.heavy
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
    while len(epochs_logged(log)) < 2 and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # no chance to clean up: like a power cut
    first.wait()
    killed_after = epochs_logged(log)
    assert 2 <= len(killed_after) < 5, "the run must be killed mid fine-tuning"
    assert not (folder / "metrics.json").exists()

    second = run(command(data, out))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "phase 1 already done" in second.stdout
    logged = epochs_logged(log)
    assert sorted(set(logged)) == list(range(5))  # every epoch, once finished
    assert len(logged) <= 6  # resumed, not restarted: at most the epoch cut short runs twice
    assert logged[len(killed_after)] >= len(killed_after) - 1

    # No temporary or corrupt file anywhere; every result reads back.
    assert not [p for p in (out / "resumable").rglob("*") if p.name.startswith(".tmp-")]
    for path in (out / "resumable").rglob("*.json"):
        json.loads(path.read_text())
    keras.models.load_model(folder / "model.keras")


@pytest.mark.heavy
def test_killed_at_every_step_boundary_resumes_to_the_uninterrupted_result(tmp_path, trained_run):
    """One run per boundary, each killed there (right before, then right after, a step is
    recorded), the next one resuming; then a last run. Same table and model as the session's
    `trained_run`: one uninterrupted run with the same settings."""
    settings = json.loads((trained_run / "run.json").read_text())["config"]
    args = ["compare", "--data", settings["data"], "--run", "killed", "--output-dir", str(tmp_path / "runs"),
            "--cache-dir", str(tmp_path / "cache"), "--backbones", "vgg16", "--weights", "none", "--image-size", "32",
            "--head-epochs", "40", "--fine-tune-epochs", "3", "--batch-size", "32", "--fine-tune-learning-rate", "1e-4"]
    folder = tmp_path / "runs" / "killed" / "vgg16"
    points = [f"{moment}:{step}" for step in STEPS for moment in ("before", "after")] + ["none"]  # the last: no kill
    chain = run([sys.executable, str(ROOT / "tests" / "kill_chain.py"), str(folder / "state.json"), ",".join(points),
                 *args])
    assert chain.returncode == 0, chain.stdout[-3000:] + chain.stderr[-3000:]
    expected = [{"kill_at": f"{moment}:{step}", "status": -signal.SIGKILL,
                 "recorded": list(STEPS[:number + (moment == "after")])}
                for number, step in enumerate(STEPS) for moment in ("before", "after")]
    expected.append({"kill_at": "none", "status": 0, "recorded": list(STEPS)})
    assert json.loads(chain.stdout.splitlines()[-1]) == expected, chain.stdout[-3000:] + chain.stderr[-3000:]
    assert "already trained" in chain.stdout  # the last kill came right after the last step was recorded

    columns = ("backbone", "top1", "top5", "macro_f1")
    resumed = json.loads((folder.parent / "comparison.json").read_text())
    reference = json.loads((trained_run / "comparison.json").read_text())
    assert [{c: row[c] for c in columns} for row in resumed] == [{c: row[c] for c in columns} for row in reference]
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(keras.models.load_model(folder / "model.keras").predict(pixels, verbose=0),
                               keras.models.load_model(trained_run / "vgg16" / "model.keras")
                               .predict(pixels, verbose=0), atol=1e-5)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".tmp-")]
    for path in folder.parent.rglob("*.json"):
        json.loads(path.read_text())


def test_resuming_with_other_settings_is_refused(trained_run, capsys):
    """The command in this process: a message and status 2, no exception, nothing written."""
    before = (trained_run / "run.json").read_text()
    data = json.loads(before)["config"]["data"]
    code = main(["compare", "--data", data, "--output-dir", str(trained_run.parent),
                 "--run", "shapes", "--backbones", "vgg16", "--weights", "none", "--image-size", "32",
                 "--head-epochs", "40", "--fine-tune-epochs", "3", "--batch-size", "32",
                 "--fine-tune-learning-rate", "1e-4", "--seed", "99"])
    assert code == 2
    assert "was trained with other settings (weights_id, seed)" in capsys.readouterr().err
    assert (trained_run / "run.json").read_text() == before  # refused before writing anything
