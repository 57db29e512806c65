"""Shared fixtures: a generated dataset and one run trained on it, reused across test files.

Both are made once per `pytest` session, whatever the number of xdist workers (`sessions`):
tests read them and write their own outputs elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sessions import once_per_session
from shapes import make_dataset


@pytest.fixture(scope="session")
def tiny_dataset(request) -> Path:
    return once_per_session(request, "data", lambda folder: make_dataset(folder / "shapes")) / "shapes"


@pytest.fixture(scope="session")
def trained_run(request, tiny_dataset) -> Path:
    """A run with VGG16 trained from scratch (both phases) at 32x32 on the shapes dataset.

    VGG16 has no BatchNorm, so it learns this easy task from random weights in a few epochs.
    Phase 2 here fine-tunes the whole random network on 36 images, so it takes the smaller batch
    and rate of training from scratch: at the defaults tuned for ImageNet weights (batch 64,
    lr 2e-4) one step per epoch swings test top-1 between 0.33 and 1.0 across seeds; at batch 32
    and 1e-4 nine seeds out of nine reached 1.0."""

    def train(out: Path) -> None:
        from training.config import Config
        from training.runner import compare

        compare(Config(data=str(tiny_dataset), run="shapes", output_dir=str(out), cache_dir=str(out / "cache"),
                       backbones=["vgg16"], weights="none", image_size=32, head_epochs=40, fine_tune_epochs=3,
                       batch_size=32, fine_tune_learning_rate=1e-4))

    return once_per_session(request, "runs", train) / "shapes"



def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Scheduling for xdist: first one test that needs `trained_run` (its worker trains the session's
    run while the others start), then the tests marked `heavy` (tens of seconds each), then the rest.
    With `--dist load --maxschedchunk 1` (the Makefile's) xdist gives each worker its next test in
    this order as it frees up, so the long tests spread over the workers and start at once, the
    short ones fill the gaps at the end, and the tests that need the trained run find it ready:
    otherwise one worker can be left running long tests alone, or several wait on the same
    fixture, while cores sit idle. (Without `--maxschedchunk 1`, xdist hands out whole blocks of
    consecutive tests: one worker would get every heavy test.)"""
    heavy = [item for item in items if item.get_closest_marker("heavy")]
    trains = [item for item in items if "trained_run" in item.fixturenames and item not in heavy][:1]
    first = trains + heavy
    items[:] = first + [item for item in items if item not in first]
