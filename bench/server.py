"""A Streamlit server for the benches and the browser tests: a free port, the wait until its
health endpoint answers, and a stop that leaves nothing behind.

bench/serving.py, bench/load.py and tests/app/test_app_browser.py each start the app as Heroku
does (`streamlit run`, its own process) and need the same three things from it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

HEALTH_TIMEOUT_S = 60  # Heroku's R10: the web process must bind $PORT within 60 s


class ServerError(RuntimeError):
    """The server died before it answered, or did not answer in time."""


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, log: Path | None = None,
                       timeout: float = HEALTH_TIMEOUT_S) -> float:
    """Seconds until Streamlit's health endpoint at `url` answers; `ServerError` (with the end of
    `log`, if given) if the process exits first or `timeout` passes."""
    def tail() -> str:
        return f":\n{log.read_text()[-3000:]}" if log is not None and log.is_file() else ""

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise ServerError(f"streamlit exited with status {process.returncode}{tail()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            time.sleep(0.1)
    raise ServerError(f"streamlit was not healthy after {timeout} s{tail()}")


def stop_process(process: subprocess.Popen, group: bool = False) -> None:
    """Terminate `process` (with `group`, its whole process group: a shell and Streamlit under
    it) and kill it if it lingers."""
    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)

    if process.poll() is not None:
        return
    send(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()
