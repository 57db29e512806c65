"""Fixtures' outputs made once per `pytest` session, even with several pytest-xdist workers: the
first worker to need one builds it in the session's shared temporary folder, under a lock, and
the others read what it left there."""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the block; closing the file frees it."""
    with open(path, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        yield


def once_per_session(request: pytest.FixtureRequest, name: str, build: Callable[[Path], None]) -> Path:
    """`build(folder)` run once for the whole session, whichever worker asks first; the folder.

    A `name.done` marker, written after `build` returns, tells the later workers (and a worker
    that finds a half-built folder left by a failed build) whether the folder is complete."""
    factory = request.getfixturevalue("tmp_path_factory")
    if not hasattr(request.config, "workerinput"):  # no xdist workers: this process is the whole session
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
