"""End to end in a real browser: `streamlit run` serving the fixture models, driven by Chromium.

This is the only test that runs the app the way Heroku does (the `streamlit` command, a
separate process, a websocket to a browser), so it also checks what that process costs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from photos import encode, scene
from playwright.sync_api import expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO_ROOT / "test-artifacts" / "app.png"
# A Heroku basic dyno has 512 MB; the server must leave room for a few sessions and big photos.
MAX_SERVER_RSS_MB = 300

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
)


@pytest.fixture
def server(model_root: Path, tmp_path: Path) -> Iterator[tuple[str, psutil.Process]]:
    """`streamlit run app/streamlit_app.py` on a free port, as the Procfile starts it; always stopped."""
    port = free_port()
    log = tmp_path / "streamlit.log"
    command = [
        str(Path(sys.executable).parent / "streamlit"), "run", "app/streamlit_app.py",
        f"--server.port={port}", "--server.address=127.0.0.1", "--server.headless=true",
    ]
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env={**os.environ, "MODEL_DIR": str(model_root)}, stdout=output, stderr=output
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url, process, log)
        yield url, psutil.Process(process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    """Wait for Streamlit's health endpoint to answer, failing early if the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.25)
    pytest.fail(f"streamlit was not healthy after {timeout} s:\n{log.read_text()}")


def test_a_visitor_uploads_a_photo_and_sees_the_top_class(
    server: tuple[str, psutil.Process], default_model, expected_heading, tmp_path: Path
) -> None:
    url, process = server
    photo = tmp_path / "meadow.jpg"
    photo.write_bytes(encode(scene(640, 480), "JPEG", quality=90))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1200})
            page.goto(url)
            page.locator("input[type=file]").set_input_files(photo)
            heading = expected_heading(default_model, photo.name, photo.read_bytes())
            expect(page.get_by_role("heading", name=heading)).to_be_visible(timeout=60_000)
            expect(page.get_by_test_id("stVegaLiteChart")).to_be_visible()
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=SCREENSHOT, full_page=True)
        finally:
            browser.close()

    rss_mb = process.memory_info().rss / 2**20
    assert rss_mb < MAX_SERVER_RSS_MB, f"the server uses {rss_mb:.0f} MB after one prediction"
    heavy = {Path(m.path).name for m in process.memory_maps() if "/tensorflow/" in m.path or "/keras/" in m.path}
    assert not heavy, f"the server loaded TensorFlow or Keras: {sorted(heavy)}"
