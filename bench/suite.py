"""How long does `make test` take? Run the suite as the Makefile does and record it.

The target (issue #9) is under 5 minutes of tests on 2 cores from a warm set-up (the virtual
environment and the slug's install already there). This runs pytest with the Makefile's workers
(one per core, plus one), times it from start to end, and records the wall time, the number of
tests and the slowest ones in docs/BENCHMARKS.md, with the machine's load: on a shared machine
the same suite varies by a tenth from run to run, so read one figure with that in mind.

Run from the repository root (`--only` runs some tests instead, `--no-record` records nothing):

    .venv/bin/python bench/suite.py [--workers N] [--only PATH ...] [--no-record]
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import time

import paths  # bench/paths.py and sections.py: this script's folder is first on sys.path
import sections

SLOWEST = 10
DURATION = re.compile(r"^(\d+\.\d+)s (call|setup|teardown)\s+(\S.*)$")  # ids may hold spaces
SUMMARY = re.compile(r"(\d+) passed(?:, (\d+) skipped)?.* in [\d.]+s")  # pytest's last line


def run_suite(workers: int, only: list[str]) -> dict:
    """Run pytest once; its wall time, counts and slowest steps, and the machine's load after."""
    command = [sys.executable, "-m", "pytest", "-n", str(workers), "--dist", "load", "--maxschedchunk", "1", "-q",
               f"--durations={SLOWEST}", "-p", "no:cacheprovider", *only]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=paths.ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    lines = result.stdout.splitlines()
    summary = next((SUMMARY.search(line) for line in reversed(lines) if SUMMARY.search(line)), None)
    if result.returncode != 0 or summary is None:
        sys.exit(f"the suite failed (status {result.returncode}):\n" + "\n".join(lines[-40:]) + result.stderr[-2000:])
    slowest = [(float(m[1]), m[2], m[3]) for m in map(DURATION.match, lines) if m]
    return {"wall_s": wall, "passed": int(summary[1]), "skipped": int(summary[2] or 0), "workers": workers,
            "slowest": slowest, "load": os.getloadavg()[1],
            "when": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"}


def render(figures: dict, command: str) -> str:
    """The docs/BENCHMARKS.md section."""
    minutes, seconds = divmod(round(figures["wall_s"]), 60)
    verdict = "pass" if figures["wall_s"] < 300 else "over"
    text = [
        "## Test suite (`make test`)",
        "",
        f"{figures['passed']} tests passed ({figures['skipped']} skipped) in **{minutes} min {seconds:02d} s** of wall "
        f"time with {figures['workers']} pytest-xdist workers, from a warm set-up; target under 5 min on 2 cores: "
        f"{verdict}. Load average over the last 5 minutes at the end: {figures['load']:.1f}.",
        "",
        f"| slowest {SLOWEST} steps | phase | seconds |",
        "|---|---|---|",
        *[f"| `{test}` | {phase} | {seconds:.1f} |" for seconds, phase, test in figures["slowest"]],
        "",
        f"{sections.machine()}. Measured {figures['when']}.",
        *sections.reproduce(command),
    ]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)) + 1,
                        help="pytest-xdist workers (default: as the Makefile, one per core plus one)")
    parser.add_argument("--only", nargs="+", default=[], metavar="PATH", help="run these tests instead of all")
    parser.add_argument("--no-record", action="store_true", help="print the section, leave docs/BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, not {args.workers}")
    missing = [path for path in args.only if not (paths.ROOT / path.split("::")[0]).exists()]
    if missing:
        parser.error(f"--only: no such test file: {', '.join(missing)}")
    figures = run_suite(args.workers, args.only)
    section = render(figures, ".venv/bin/python bench/suite.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])))
    print(section)
    if args.only:
        print("\n(--only: a part of the suite, not recorded)")
    elif not args.no_record:
        sections.record("suite", section)


if __name__ == "__main__":
    main()
