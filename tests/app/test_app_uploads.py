"""Every kind of upload, through the page itself: odd photos are classified, bad files explained."""

from __future__ import annotations

import mimetypes

import pytest
from photos import BAD_UPLOADS, GOOD_UPLOADS, jpeg
from streamlit import config
from streamlit.testing.v1 import AppTest


def upload(app: AppTest, name: str, data: bytes) -> AppTest:
    """Put a file in the page's uploader, as a browser would, and rerun the page."""
    mime_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return app.file_uploader(key="upload").set_value((name, data, mime_type)).run()


@pytest.mark.parametrize("name", GOOD_UPLOADS)
def test_odd_but_valid_photos_are_classified(app: AppTest, default_model, expected_heading, name: str) -> None:
    data = GOOD_UPLOADS[name]()
    upload(app.run(), name, data)
    assert not app.exception
    assert not app.error
    assert [heading.value for heading in app.subheader] == [expected_heading(default_model, name, data)]


@pytest.mark.parametrize("name", BAD_UPLOADS)
def test_bad_files_get_a_message_naming_them(app: AppTest, name: str) -> None:
    make, problem = BAD_UPLOADS[name]
    upload(app.run(), name, make())
    assert not app.exception
    assert len(app.error) == 1
    message = app.error[0].value
    assert message.startswith(f"{name}: ") and problem in message
    assert not app.subheader, "no prediction for a bad file"


def test_files_over_the_upload_limit_are_refused(app: AppTest) -> None:
    limit_mb = config.get_option("server.maxUploadSize")  # as the app reads it
    upload(app.run(), "panorama.jpg", jpeg() + bytes(limit_mb * 2**20))
    assert not app.exception
    assert [error.value for error in app.error] == [
        f"panorama.jpg: the file is {limit_mb:.1f} MB, more than the {limit_mb} MB upload limit"
    ]


def test_the_page_keeps_serving_after_a_bad_upload(app: AppTest, default_model, expected_heading) -> None:
    upload(app.run(), "notes.jpg", b"Remember to buy milk.")
    assert len(app.error) == 1 and not app.subheader

    upload(app, "photo.jpg", jpeg())
    assert not app.exception and not app.error
    assert app.subheader[0].value == expected_heading(default_model, "photo.jpg", jpeg())
