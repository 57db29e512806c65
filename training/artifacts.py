"""Writing result files so that an interrupted run never leaves a corrupt one.

Every file is written next to its destination under a temporary name, flushed, and renamed
over the destination in one step (`os.replace` is atomic on POSIX and Windows): a reader, or a
resumed run, sees either the old complete file or the new complete file, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, else delete it.

    The temporary name keeps `path`'s suffixes, because Keras picks its format from them
    (`.keras`, `.weights.h5`) and LiteRT wants `.tflite`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield temporary
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


def save_figure(path: str | Path, figure) -> None:
    """Save a matplotlib figure atomically and free it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)


def remove_orphans(folder: str | Path) -> None:
    """Delete temporary files left under `folder` by processes that were killed mid-write.

    Each temporary name carries its writer's process id; a file whose writer is still alive
    (another run working here right now) is left alone.
    """
    for path in Path(folder).rglob(".tmp-*"):
        pid = int(path.name.split("-")[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:  # alive, but another user's
            pass
