"""Run `python -m training ARGS` once per kill point, each run killed there by SIGKILL.

    python tests/kill_chain.py STATE_FILE POINT[,POINT...] ARGS...

Each run is a child process that `TRAINING_KILL_AT=POINT` kills (see training/runner.py), the
next one resuming where it died. The children are forked from this process, which has imported
TensorFlow but run nothing with it: each then starts in a fraction of a second instead of the
several seconds of a fresh interpreter, which is most of the cost of a chain this long.

The last line printed is a JSON list, one entry per run: the kill point, the exit status
(-9: killed; a point that names no moment, such as `none`, lets the run finish: 0) and the
steps recorded in STATE_FILE afterwards.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from training.__main__ import main
from training.runner import KILL_AT


def run_killed_at(point: str, args: list[str]) -> int:
    """Run the command in a forked child that dies at `point`; its exit status (negative: a signal)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into the loop of its parent
        code = 1
        try:
            os.environ[KILL_AT] = point
            code = main(args)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def recorded(state_file: Path) -> list[str]:
    return list(json.loads(state_file.read_text())["steps"]) if state_file.is_file() else []


if __name__ == "__main__":
    state_file, points, args = Path(sys.argv[1]), sys.argv[2].split(","), sys.argv[3:]
    results = [{"kill_at": point, "status": run_killed_at(point, args), "recorded": recorded(state_file)}
               for point in points]
    print(json.dumps(results))
