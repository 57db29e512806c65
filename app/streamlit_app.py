"""A web page that says what is in a photo, or that it is not sure, and shows where the model looked.

Run it from the repository root with `streamlit run app/streamlit_app.py`. It serves the
models that `python -m training export` wrote to the *model root*: `$MODEL_DIR`, else the
`model_dir` Streamlit secret, else `saved_models/deploy` (relative paths are taken from the
repository root).

Every photo gets a second look (`runtime.second_look`): the model classifies the whole photo,
then a crop around where it found its evidence, and the probabilities come from both. With one
photo, the visitor sees that crop and can move it to frame the subject: the part framed is then
answered as a photo of its own. The answer names a class only when the model card's unknown
score of the (whole or framed) photo says the model is sure enough (`runtime.answer`);
otherwise it says "Not sure" and what it could be.

Streamlit reruns this whole script on every click. Loading a model is the only slow step,
so `st.cache_resource` does it once per process and shares the model between all visitors.
Nothing photo-sized is kept in `st.session_state`: each rerun decodes the upload again (a few
milliseconds) and the page only shows thumbnails. So that memory does not grow with each
visitor (bench/load.py measures 16 at once), photos are worked on one at a time, what their work
freed goes back to the system, and a closed tab's session and photos are freed within seconds
(`app.memory`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# `streamlit run` puts only this file's folder on the import path. The repository root is
# needed too: `runtime` (decoding shared with training) and the `app` package live there.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import streamlit as st  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from streamlit.errors import StreamlitSecretNotFoundError  # noqa: E402
from streamlit.runtime.scriptrunner import get_script_run_ctx  # noqa: E402
from streamlit.runtime.uploaded_file_manager import UploadedFile  # noqa: E402

from app.inference import Classifier, find_models, find_samples, heatmap  # noqa: E402
from app.memory import ClosedTabs, PhotoSlots, tune_allocator  # noqa: E402
from runtime import imaging, second_look  # noqa: E402
from runtime.answer import Answer, answer  # noqa: E402
from runtime.litert import ModelError  # noqa: E402
from runtime.model_folder import CONFUSION_FILE, METRICS_FILE  # noqa: E402

DEFAULT_MODEL_DIR = "saved_models/deploy"
# Photos are shown at most this big: a thumbnail per page element, never the decoded photo.
DISPLAY_SIZE = (512, 512)
UPLOAD_TYPES = [extension.lstrip(".") for extension in imaging.IMAGE_EXTENSIONS]
PREDICT, COMPARE, ABOUT = "Predict", "Compare models", "About the model"
NOT_SURE = "Not sure"
CSV_NAME = "answers.csv"


@dataclass(frozen=True)
class Seen:
    """What one model made of one photo: the answer, the box of the second look, the heatmap's map."""

    answer: Answer
    box: second_look.Box  # the crop that was classified with the photo (the whole photo: none)
    class_map: np.ndarray  # (h, w) first-pass class map of the answer's class


def model_root() -> Path:
    """The folder holding the exported models: $MODEL_DIR, the `model_dir` secret, or the default."""
    setting = os.environ.get("MODEL_DIR") or model_dir_secret() or DEFAULT_MODEL_DIR
    return REPO_ROOT / Path(setting).expanduser()


def model_dir_secret() -> str | None:
    """The `model_dir` entry of `.streamlit/secrets.toml`, if there is such a file."""
    try:
        return st.secrets.get("model_dir")
    except StreamlitSecretNotFoundError:  # no secrets file at all: the usual case
        return None


@st.cache_resource(show_spinner="Loading the model…")
def load_classifier(folder: Path) -> Classifier:
    """Load a model folder once per process; `Classifier.predict` is safe to share across sessions."""
    return Classifier(folder)


@st.cache_resource(show_spinner=False)
def photo_slots() -> PhotoSlots:
    """The process's photo slots: one photo decoded and classified at a time (`app.memory`)."""
    return PhotoSlots()


@st.cache_resource(show_spinner=False)
def closed_tabs() -> ClosedTabs:
    """The process's watch on closed tabs, whose sessions (and photos) it frees (`app.memory`); made
    on the first run, which also fixes malloc's mmap threshold before the first upload comes in."""
    tune_allocator()
    return ClosedTabs()


def watch_session() -> None:
    """Count this run's tab as open, so that its session is shut down soon after it closes."""
    if (context := get_script_run_ctx()) is not None:  # None: run outside a Streamlit server
        closed_tabs().visited(context.session_id)


def load_classifiers(root: Path) -> list[Classifier]:
    """Every servable model under `root`. A broken folder is reported on the page and skipped."""
    classifiers = []
    for folder in find_models(root):
        try:
            classifiers.append(load_classifier(folder))
        except ModelError as error:
            st.error(f"Skipping a model that cannot be served: {error}")
    return classifiers


def show_how_to_export(root: Path) -> None:
    """What to do when there is no model yet: train one and export it where the app looks."""
    st.title("No model to serve yet")
    st.warning(f"There is no `model.tflite` in `{root}` or its subfolders.")
    st.markdown("Train the backbones and export the best one, from the repository root:")
    st.code("make run\npython -m training export --run saved_models/<run> --best", language="bash")
    st.markdown("Then reload this page. To serve models from elsewhere, set `MODEL_DIR` or the `model_dir` secret.")


def best(classifiers: list[Classifier]) -> int:
    """The position of the model with the best test top-1: the one served unless the visitor picks another."""
    return max(range(len(classifiers)), key=lambda position: classifiers[position].card["litert_metrics"]["top1"])


def choose_model(classifiers: list[Classifier]) -> Classifier:
    """The model to use: the best on the test split unless the visitor picks another."""
    if len(classifiers) == 1:
        return classifiers[0]
    # The menu holds positions, not the models: Streamlit keeps a copy of the options per session.
    chosen = st.sidebar.selectbox(
        "Model", range(len(classifiers)), index=best(classifiers),
        format_func=lambda position: classifiers[position].name, key="model",
    )
    return classifiers[chosen]


def describe(classifier: Classifier) -> str:
    """A one-line summary of a model: name, backbone, quantization and test accuracy."""
    card = classifier.card
    accuracy = card["litert_metrics"]["top1"]
    return f"{classifier.name}: {card['backbone']}, {card['quantization']}, test top-1 {accuracy:.1%}"


# --- Photos in -----------------------------------------------------------------------------------


def choose_photos(root: Path) -> list[tuple[str, bytes]]:
    """The photos to classify as (name, bytes): uploads, else a camera shot, else a sample."""
    uploads = st.file_uploader("Upload photos", type=UPLOAD_TYPES, accept_multiple_files=True, key="upload")
    # The camera asks for permission as soon as it is shown, so it waits until the visitor asks for it.
    shot = st.camera_input("Take a photo", key="camera") if st.toggle("Use the camera", key="use_camera") else None
    samples = find_samples(root)
    sample = None
    if samples:
        sample = st.selectbox(
            "…or try a sample", samples, index=None, format_func=lambda path: path.stem,
            placeholder="Choose a sample photo", key="sample",
        )
    if uploads:
        return [photo for upload in uploads if (photo := read_upload(upload)) is not None]
    if shot is not None:
        return [(shot.name, shot.getvalue())]
    if sample is not None:
        return [(sample.name, sample.read_bytes())]
    st.info("Upload photos, take one with the camera or choose a sample to see what the model thinks.")
    return []


def read_upload(upload: UploadedFile) -> tuple[str, bytes] | None:
    """The upload's name and bytes, or None (with a message) when it is over the size limit.

    The browser already refuses files over `server.maxUploadSize` (.streamlit/config.toml);
    checking here too keeps the promise for any client, with a message naming the file.
    """
    limit_mb = st.get_option("server.maxUploadSize")
    if upload.size > limit_mb * 1024 * 1024:
        st.error(f"{upload.name}: the file is {upload.size / 2**20:.1f} MB, more than the {limit_mb} MB upload limit")
        return None
    return upload.name, upload.getvalue()


def decode(name: str, data: bytes, classifier: Classifier) -> Image.Image | None:
    """The upright photo at the size the second look needs, or None with a message naming the file."""
    try:
        return second_look.decode(data, classifier.input_size, name)
    except imaging.ImageError as error:
        st.error(str(error))
        return None


# --- The answer ----------------------------------------------------------------------------------


def first_look(image: Image.Image, classifier: Classifier) -> tuple[second_look.Outputs, second_look.Box]:
    """The first pass on the whole photo, and the crop the second look suggests around its evidence."""
    first = second_look.look(image, classifier.outputs, classifier.input_size, second=False)
    return first.full, first.box


def see(image: Image.Image, classifier: Classifier, full: second_look.Outputs, box: second_look.Box) -> Seen:
    """The answer for a photo from its first pass `full` and a second look at `box` (none for the whole photo).

    As in `second_look.look`, both passes count: their logits are averaged, and the card's unknown
    score is that of the better scoring pass (`runtime.answer.photo_score`).
    """
    passes = [full]
    if box != whole(image):
        passes.append(classifier.outputs(second_look.pixels(image, classifier.input_size, box)))
    result = answer(passes, classifier.card, classifier.bank)
    class_map = full["class_maps"][..., classifier.labels.index(result.label)]
    return Seen(result, box, class_map)


def whole(image: Image.Image) -> second_look.Box:
    """The box of the whole photo."""
    return 0, 0, *image.size


def headline(result: Answer) -> str:
    """The answer in a few words: the class and its probability, or "Not sure"."""
    return f"{result.label} ({result.confidence:.1%})" if result.sure else NOT_SURE


def could_be(result: Answer) -> str:
    """The candidates of an unsure answer, most probable first."""
    return ", ".join(f"{label} ({probability:.0%})" for label, probability in result.could_be)


def show_answer(photo: Image.Image, seen: Seen, classifier: Classifier) -> None:
    """The answer, the heatmap of where the model found its top class, and the top-5 probabilities."""
    result, subject = seen.answer, classifier.card["subject"]
    st.subheader(headline(result))
    if result.sure:
        # Measured (docs/BENCHMARKS.md, "Species held out of training altogether"): a species the
        # model never saw that looks like one it knows is named as that one, often with confidence.
        st.caption(f"The model names only the {len(classifier.labels)} it knows: "
                   f"a {subject} it does not know can be named as a look-alike among them.")
        caption = f"Where the model saw “{result.label}”"
    else:
        st.markdown(f"The model is not sure this is a {subject} it knows. Could be: {could_be(result)}.")
        caption = "Where the model looked"
    st.image(heatmap(thumbnail(photo), seen.class_map), caption=caption)
    # A Vega-Lite spec rather than st.bar_chart, which builds the same chart with Altair: importing
    # Altair costs the server some 25 MB for good, for a chart this simple.
    st.vega_lite_chart(
        {"class": [label for label, _ in result.could_be], "probability": [share for _, share in result.could_be]},
        {
            "mark": {"type": "bar", "tooltip": True},
            "encoding": {
                "y": {"field": "class", "type": "nominal", "sort": "-x", "title": None},
                "x": {"field": "probability", "type": "quantitative", "axis": {"format": "%"}},
            },
        },
        height=220,
    )


def thumbnail(image: Image.Image) -> Image.Image:
    """A copy of `image` no bigger than DISPLAY_SIZE: all the page needs, and all it sends.

    Resized straight from the photo, as `Image.thumbnail` resizes: not a full-size copy first
    (12 MB for a phone photo decoded for the second look) that only lives to be shrunk.
    """
    scale = min(DISPLAY_SIZE[0] / image.width, DISPLAY_SIZE[1] / image.height)
    if scale >= 1:
        return image.copy()
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


# --- The crop tool -------------------------------------------------------------------------------


def crop_tool(image: Image.Image, suggested: second_look.Box, key: str) -> second_look.Box:
    """Sliders framing the part of the photo to look at, preset to the suggested crop; the box in pixels.

    The sliders are in percent of the photo's width and height. Their keys carry `key` (the
    photo's name and size), so a new photo starts again from its own suggested crop.
    """
    width, height = image.size
    preset = percent_box(suggested, image.size)
    st.caption("The box is where the model looked closer. Move it to frame the subject yourself: "
               "the answer is then for the part you framed, as if you had uploaded it.")
    left, right = st.slider("Left and right edges (%)", 0, 100, (preset[0], preset[2]), key=f"crop-x-{key}")
    top, bottom = st.slider("Top and bottom edges (%)", 0, 100, (preset[1], preset[3]), key=f"crop-y-{key}")
    if (left, top, right, bottom) == preset:
        return suggested  # untouched: the exact suggested crop, not its rounding to whole percents
    if right - left < 1 or bottom - top < 1:
        st.warning("The crop is empty; the whole photo is used.")
        return whole(image)
    return round(left * width / 100), round(top * height / 100), round(right * width / 100), round(bottom * height / 100)


def percent_box(box: second_look.Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """`box` in whole percents of the photo's width and height."""
    width, height = size
    left, top, right, bottom = box
    return round(100 * left / width), round(100 * top / height), round(100 * right / width), round(100 * bottom / height)


def with_box(image: Image.Image, box: second_look.Box) -> Image.Image:
    """A thumbnail of the photo with the crop drawn on it."""
    small = thumbnail(image)
    scale = small.width / image.width
    outline = [round(edge * scale) for edge in box]
    ImageDraw.Draw(small).rectangle(outline, outline=(255, 200, 0), width=max(2, small.width // 150))
    return small


# --- Pages ---------------------------------------------------------------------------------------


def predict_page(root: Path, classifier: Classifier) -> None:
    """Classify one photo, with the crop tool, or several, as a table and a CSV file."""
    subject = classifier.card["subject"]
    st.title(f"Which {subject} is it?")
    st.caption(describe(classifier))
    with st.expander(f"Which {subject} it knows ({len(classifier.labels)})"):
        st.markdown(", ".join(sorted(classifier.labels)))
    photos = choose_photos(root)
    if not photos:
        return
    # One photo in work at a time, whatever the number of visitors (`app.memory`).
    with photo_slots().slot():
        if len(photos) == 1:
            one_photo(*photos[0], classifier)
        else:
            many_photos(photos, classifier)


def one_photo(name: str, data: bytes, classifier: Classifier) -> None:
    """One photo: the photo with its crop box and the crop tool beside the answer."""
    image = decode(name, data, classifier)
    if image is None:
        return
    full, suggested = first_look(image, classifier)
    left, right = st.columns(2)
    with left:
        box = crop_tool(image, suggested, key=f"{name}-{image.width}x{image.height}")
        st.image(with_box(image, box), caption=name)
    with right:
        if box == suggested:
            show_answer(image, see(image, classifier, full, box), classifier)
        else:  # the visitor framed the subject: what they framed is the photo, as if they had uploaded it
            framed = image.crop(box)
            show_answer(framed, see(framed, classifier, *first_look(framed, classifier)), classifier)


def many_photos(photos: list[tuple[str, bytes]], classifier: Classifier) -> None:
    """Several photos: one row per photo (each with its suggested second look), and the rows as CSV."""
    rows = []
    for name, data in photos:
        image = decode(name, data, classifier)
        if image is not None:
            rows.append(answer_row(name, see(image, classifier, *first_look(image, classifier)).answer))
    if not rows:
        return
    st.dataframe(
        rows, hide_index=True,
        column_config={
            "confidence": st.column_config.NumberColumn("confidence", format="percent"),
            "score": st.column_config.NumberColumn("unknown score", format="%.3f"),
        },
    )
    st.download_button("Download the answers (CSV)", to_csv(rows), file_name=CSV_NAME, mime="text/csv", key="csv")


def answer_row(name: str, result: Answer) -> dict[str, object]:
    """One photo's row of the answers table and CSV file."""
    return {
        "photo": name,
        "answer": result.label if result.sure else NOT_SURE,
        "confidence": result.confidence,
        "could be": "; ".join(f"{label} {probability:.1%}" for label, probability in result.could_be),
        "score": result.score,
    }


def to_csv(rows: list[dict[str, object]]) -> str:
    """The rows as CSV text, a header line first."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def compare_page(root: Path, classifiers: list[Classifier]) -> None:
    """Run every model on the same photo, side by side."""
    st.title("Compare models")
    photos = choose_photos(root)
    if not photos:
        return
    name, data = photos[0]
    if len(photos) > 1:
        st.info(f"The models are compared on the first photo, {name}.")
    with photo_slots().slot():
        side_by_side(name, data, classifiers)


def side_by_side(name: str, data: bytes, classifiers: list[Classifier]) -> None:
    """Each model's answer for the photo, in a column of its own."""
    images = [decode(name, data, classifier) for classifier in classifiers]
    if any(image is None for image in images):
        return
    st.image(thumbnail(images[0]), caption=name, width=320)
    for column, classifier, image in zip(st.columns(len(classifiers)), classifiers, images):
        with column:
            st.markdown(f"**{describe(classifier)}**")
            show_answer(image, see(image, classifier, *first_look(image, classifier)), classifier)


def about_page(root: Path, classifier: Classifier) -> None:
    """How the backbones compared in training, and the chosen model's card and per-class results."""
    st.title("About the model")
    st.header("Backbones compared")
    show_comparison(root)
    st.header(f"Model card: {classifier.name}")
    show_metrics(classifier.card)
    show_per_class(classifier.folder)
    st.json(classifier.card, expanded=1)


# How the comparison table's columns are shown: rates as percents, then units by name.
PERCENT_COLUMNS = ("top1", "top5", "macro_f1", "ece", "fpr", "answered", "right", "not_sure")


def column_format(name: str) -> str | None:
    """The NumberColumn format of a comparison column, or None to leave it as it is."""
    if any(part in name for part in PERCENT_COLUMNS):
        return "percent"
    if name.endswith("_ms"):
        return "%.1f ms"
    if name.endswith("_s"):
        return "%.0f s"
    if name.endswith("_mb"):
        return "%.1f MB"
    if name.startswith("params"):
        return "compact"
    if "auroc" in name:
        return "%.3f"
    return None


def show_comparison(root: Path) -> None:
    """The training run's comparison table (formatted) and a chart of test top-1, else comparison.md."""
    table, summary = root / "comparison.json", root / "comparison.md"
    if table.is_file():
        rows = json.loads(table.read_text(encoding="utf-8"))
        formats = {name: column_format(name) for row in rows for name in row}
        st.dataframe(
            rows, hide_index=True,
            column_config={name: st.column_config.NumberColumn(format=form) for name, form in formats.items() if form},
        )
        st.vega_lite_chart(
            [{"backbone": row["backbone"], "test top-1": row["top1"]} for row in rows],
            {
                "mark": {"type": "bar", "tooltip": True},
                "encoding": {
                    "y": {"field": "backbone", "type": "nominal", "sort": "-x"},
                    "x": {"field": "test top-1", "type": "quantitative", "axis": {"format": "%"}},
                },
            },
            height=80 + 40 * len(rows),
        )
    elif summary.is_file():
        st.markdown(summary.read_text(encoding="utf-8"))
    else:
        st.info("The model folder has no comparison table (comparison.json or comparison.md).")


def show_metrics(card: dict) -> None:
    """Test-split metrics of the exported file, with the change from the Keras model it came from."""
    names = {"top1": "Test top-1", "top5": "Test top-5", "macro_f1": "Test macro F1"}
    for column, (key, name) in zip(st.columns(len(names)), names.items()):
        exported, original = card["litert_metrics"][key], card["metrics"][key]
        # Rounded so that float noise does not show as a change (a zero delta is shown grey).
        column.metric(name, exported, round(exported - original, 4), format="percent", delta_description="vs Keras")


def show_per_class(folder: Path) -> None:
    """The model's per-class precision and recall and its confusion matrix on the test split, when exported."""
    metrics, confusion = folder / METRICS_FILE, folder / CONFUSION_FILE
    if not metrics.is_file() and not confusion.is_file():
        st.info(f"This model folder has no per-class results ({METRICS_FILE}, {CONFUSION_FILE}).")
        return
    if metrics.is_file():
        st.subheader("Per class (test split)")
        per_class = json.loads(metrics.read_text(encoding="utf-8"))["test"]["per_class"]
        st.dataframe(
            [{"class": name, **values} for name, values in per_class.items()], hide_index=True,
            column_config={
                "precision": st.column_config.NumberColumn(format="percent"),
                "recall": st.column_config.NumberColumn(format="percent"),
            },
        )
    if confusion.is_file():
        st.subheader("Confusion matrix (test split)")
        show_confusion(confusion)


def show_confusion(path: Path) -> None:
    """The confusion matrix CSV as a heat map: true class down, predicted class across."""
    with path.open(newline="", encoding="utf-8") as file:
        header, *lines = list(csv.reader(file))
    cells = [
        {"true": line[0], "predicted": predicted, "images": int(count)}
        for line in lines for predicted, count in zip(header[1:], line[1:])
    ]
    st.vega_lite_chart(
        cells,
        {
            "mark": {"type": "rect", "tooltip": True},
            "encoding": {
                "x": {"field": "predicted", "type": "nominal", "sort": header[1:]},
                "y": {"field": "true", "type": "nominal", "sort": header[1:]},
                "color": {"field": "images", "type": "quantitative", "scale": {"scheme": "blues"}},
            },
        },
        height=max(200, 14 * len(lines)),
    )


def main() -> None:
    """Lay out the page the visitor chose in the sidebar."""
    root = model_root()
    watch_session()
    classifiers = load_classifiers(root)
    subject = classifiers[best(classifiers)].card["subject"] if classifiers else None
    st.set_page_config(page_title=f"Which {subject} is it?" if subject else "Classifier", page_icon="🔎", layout="wide")
    if not classifiers:
        show_how_to_export(root)
        return
    page = st.sidebar.radio("Page", [PREDICT, COMPARE, ABOUT], key="page")
    if page == COMPARE:
        compare_page(root, classifiers)
        return
    classifier = choose_model(classifiers)
    if page == PREDICT:
        predict_page(root, classifier)
    else:
        about_page(root, classifier)


if __name__ == "__main__":  # what `streamlit run` sets; importing the module runs nothing
    main()
