"""Record a benchmark's figures in docs/BENCHMARKS.md, each script between its own markers.

Every script owns one section (`<!-- name:start -->` ... `<!-- name:end -->`) and replaces only
that, so the scripts can run in any order. The file is written to a temporary name and renamed
over the original: an interrupted run never leaves a half-written document.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def record(name: str, section: str, path: Path = BENCHMARKS) -> None:
    """Replace the text between the `name` markers in `path` by `section`, adding them if absent."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if start not in text or end not in text:
        text = f"{text.rstrip()}\n\n{start}\n{end}\n"
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(f"{before}{start}\n{section}\n{end}{after}", encoding="utf-8")
    os.replace(temporary, path)


def machine() -> str:
    """"Machine: <CPU>, <n> cores (nproc), <OS> <arch>": what a section's timings were taken on."""
    return (f"Machine: {cpu_model()}, {len(os.sched_getaffinity(0))} cores (nproc), {platform.system()} "
            f"{platform.machine()}")


def cpu_model() -> str:
    """The CPU's marketing name, which says more about timings than the core count."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def reproduce(command: str) -> list[str]:
    """A section's closing lines: the command that measured it, as a shell block."""
    return ["", "Reproduce from the repository root:", "", "```sh", command, "```"]
