"""Shared fixtures: a generated dataset and one run trained on it, reused across test files.

Both are made once per `pytest` session, even with several pytest-xdist workers: the first
worker to need them builds them in the session's shared temporary folder, under a lock, and
the others read what it left there. Tests read them and write their own outputs elsewhere.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from shapes import make_dataset


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block."""
    with open(path, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def once_per_session(factory: pytest.TempPathFactory, worker_id: str, name: str,
                     build: Callable[[Path], None]) -> Path:
    """`build(folder)` run once for the whole session, whichever worker asks first; the folder.

    A `name.done` marker, written after `build` returns, tells the later workers (and a worker
    that finds a half-built folder left by a failed build) whether the folder is complete."""
    if worker_id == "master":  # no xdist workers: this process is the whole session
        folder = factory.mktemp(name)
        build(folder)
        return folder
    shared = factory.getbasetemp().parent  # pytest-N/, above each worker's popen-gwK/
    folder, done = shared / name, shared / f"{name}.done"
    with locked(shared / f"{name}.lock"):
        if not done.exists():
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, worker_id) -> Path:
    return once_per_session(tmp_path_factory, worker_id, "data", lambda folder: make_dataset(folder / "shapes")) / "shapes"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, worker_id, tiny_dataset) -> Path:
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

    return once_per_session(tmp_path_factory, worker_id, "runs", train) / "shapes"
