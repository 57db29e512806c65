"""End to end in a real browser: `streamlit run` serving the fixture models, driven by Chromium.

This is the only test that runs the app the way Heroku does (the `streamlit` command, a
separate process, a websocket to a browser), so it also checks what that process costs and what
a visitor sees of the toolbar. One server serves both tests.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from photos import PHOTOS, encode, scene
from playwright.sync_api import Page, expect, sync_playwright

from runtime import second_look
from runtime.answer import answer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "bench"))
from server import ServerError, free_port, stop_process, wait_until_healthy  # noqa: E402  (the benches' own)

SCREENSHOT = REPO_ROOT / "test-artifacts" / "app.png"
# A Heroku basic dyno has 512 MB; the server must leave room for a few sessions and big photos.
MAX_SERVER_RSS_MB = 300

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)"
)


@pytest.fixture(scope="module")
def server(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, psutil.Process]]:
    """`streamlit run app/streamlit_app.py` on a free port, as the Procfile starts it; always stopped."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "streamlit.log"
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
        try:
            wait_until_healthy(url, process, log)
        except ServerError as error:
            pytest.fail(str(error))
        yield url, psutil.Process(process.pid)
    finally:
        stop_process(process)


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


def test_a_visitor_gets_not_sure_moves_the_crop_and_uploads_several_photos(
    server: tuple[str, psutil.Process], default_model, expected_answer, photos_by_answer, tmp_path: Path
) -> None:
    url, _ = server
    unsure = next(iter(photos_by_answer(default_model, sure=False)))
    sure = next(iter(photos_by_answer(default_model, sure=True)))
    for name in (unsure, sure):
        (tmp_path / name).write_bytes(PHOTOS[name])

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1200})
            page.goto(url)
            expect(page).to_have_title(f"Which {default_model.card['subject']} is it?", timeout=60_000)
            expect(page.get_by_test_id("stMainMenu")).to_be_visible()
            expect(page.get_by_test_id("stAppDeployButton")).to_have_count(0)

            # A photo the model is not sure about: no species named, the candidates listed.
            page.locator("input[type=file]").set_input_files(tmp_path / unsure)
            expect(page.get_by_role("heading", name="Not sure")).to_be_visible(timeout=60_000)
            top = expected_answer(default_model, unsure, PHOTOS[unsure]).could_be[0]
            expect(page.get_by_text("Could be:")).to_contain_text(f"{top[0]} ({top[1]:.0%})")

            # The crop (in a new session, with one photo): the sliders start at the suggested box;
            # moving one changes the answer.
            page.goto(url)
            page.locator("input[type=file]").set_input_files(tmp_path / sure)
            before = heading_for(default_model, PHOTOS[sure], slider_values(page))
            expect(page.get_by_role("heading", name=before)).to_be_visible(timeout=60_000)
            page.get_by_role("slider").first.focus()
            for _ in range(15):
                page.keyboard.press("ArrowLeft")
            after = heading_for(default_model, PHOTOS[sure], slider_values(page))
            assert after != before, "moving the crop should change the answer"
            expect(page.get_by_role("heading", name=after)).to_be_visible(timeout=60_000)

            # Several photos at once: a table, and the same answers as a CSV file.
            page.goto(url)
            page.locator("input[type=file]").set_input_files([tmp_path / unsure, tmp_path / sure])
            with page.expect_download(timeout=60_000) as download:
                page.get_by_role("button", name="Download the answers (CSV)").click()
            rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
            expected = [expected_answer(default_model, name, PHOTOS[name]) for name in (unsure, sure)]
            assert [(row["photo"], row["answer"]) for row in rows] == [(unsure, "Not sure"), (sure, expected[1].label)]
            expect(page.get_by_test_id("stDataFrame")).to_be_visible()
        finally:
            browser.close()


def slider_values(page: Page) -> list[int]:
    """The four crop edges the page's sliders show, in percent: left, right, top, bottom."""
    thumbs = page.get_by_role("slider")
    expect(thumbs).to_have_count(4, timeout=60_000)
    page.wait_for_timeout(500)  # let a moved thumb settle before reading where it is
    return [int(thumbs.nth(index).input_value()) for index in range(4)]


def heading_for(classifier, data: bytes, edges: list[int]) -> str:
    """The heading the page must show for the photo cropped to `edges` (percent), computed here."""
    image = second_look.decode(data, classifier.input_size)
    first = second_look.look(image, classifier.outputs, classifier.input_size, second=False)
    left, right, top, bottom = edges
    preset = [round(100 * first.box[i] / image.size[i % 2]) for i in (0, 2, 1, 3)]
    if edges == preset:  # the suggested crop: the whole photo and the crop, as the second look sees them
        crop = classifier.outputs(second_look.pixels(image, classifier.input_size, first.box))
        result = answer([first.full, crop], classifier.card, classifier.bank)
    else:  # framed by the visitor: the framed part answered as a photo of its own
        framed = image.crop((round(left * image.width / 100), round(top * image.height / 100),
                             round(right * image.width / 100), round(bottom * image.height / 100)))
        result = answer(second_look.look(framed, classifier.outputs, classifier.input_size).passes,
                        classifier.card, classifier.bank)
    return f"{result.label} ({result.confidence:.1%})" if result.sure else "Not sure"
