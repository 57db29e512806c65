"""A web page that names the species in a photo and shows where the model looked.

Run it from the repository root with `streamlit run app/streamlit_app.py`. It serves the
models that `python -m training export` wrote to the *model root*: `$MODEL_DIR`, else the
`model_dir` Streamlit secret, else `saved_models/deploy` (relative paths are taken from the
repository root).

Streamlit reruns this whole script on every click. Loading a model is the only slow step,
so `st.cache_resource` does it once per process and shares the model between all visitors.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# `streamlit run` puts only this file's folder on the import path. The repository root is
# needed too: `runtime` (decoding shared with training) and the `app` package live there.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import streamlit as st  # noqa: E402
from PIL import Image  # noqa: E402
from streamlit.errors import StreamlitSecretNotFoundError  # noqa: E402
from streamlit.runtime.uploaded_file_manager import UploadedFile  # noqa: E402

from app.inference import Classifier, Prediction, find_models, find_samples, heatmap  # noqa: E402
from runtime import imaging  # noqa: E402
from runtime.litert import ModelError  # noqa: E402

DEFAULT_MODEL_DIR = "saved_models/deploy"
TOP_K = 5
# Photos are shown at most this big; JPEGs are decoded straight at about this size (draft mode).
DISPLAY_SIZE = (768, 768)
UPLOAD_TYPES = [extension.lstrip(".") for extension in imaging.IMAGE_EXTENSIONS]
PREDICT, COMPARE, ABOUT = "Predict", "Compare models", "About the model"


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


def choose_model(classifiers: list[Classifier]) -> Classifier:
    """The model to use: the best on the test split unless the visitor picks another."""
    if len(classifiers) == 1:
        return classifiers[0]
    # The menu holds positions, not the models: Streamlit keeps a copy of the options per session.
    positions = range(len(classifiers))
    best = max(positions, key=lambda position: classifiers[position].card["litert_metrics"]["top1"])
    chosen = st.sidebar.selectbox(
        "Model", positions, index=best, format_func=lambda position: classifiers[position].name, key="model"
    )
    return classifiers[chosen]


def describe(classifier: Classifier) -> str:
    """A one-line summary of a model: name, backbone, quantization and test accuracy."""
    card = classifier.card
    accuracy = card["litert_metrics"]["top1"]
    return f"{classifier.name}: {card['backbone']}, {card['quantization']}, test top-1 {accuracy:.1%}"


def choose_photo(root: Path) -> tuple[str, bytes] | None:
    """The photo to classify as (name, bytes): an upload, else a sample from `<root>/samples`."""
    upload = st.file_uploader("Upload a photo", type=UPLOAD_TYPES, key="upload")
    samples = find_samples(root)
    sample = None
    if samples:
        sample = st.selectbox(
            "…or try a sample", samples, index=None, format_func=lambda path: path.stem,
            placeholder="Choose a sample photo", key="sample",
        )
    if upload is not None:
        return read_upload(upload)
    if sample is not None:
        return sample.name, sample.read_bytes()
    st.info("Upload a photo or choose a sample to see what the model thinks.")
    return None


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


def run_models(name: str, data: bytes, classifiers: list[Classifier]) -> tuple[Image.Image, list[Prediction]] | None:
    """Decode the photo and classify it with each model, or show why the file cannot be used.

    The model input comes from `imaging.load_pixels`, the very function training used, so a photo
    is decoded, turned upright and resized here exactly as the model saw its training images.
    """
    try:
        photo = imaging.open_rgb(data, name, draft_size=DISPLAY_SIZE)
        predictions = [model.predict(imaging.load_pixels(data, model.input_size, name)) for model in classifiers]
    except imaging.ImageError as error:
        st.error(str(error))
        return None
    photo.thumbnail(DISPLAY_SIZE)
    return photo, predictions


def show_prediction(photo: Image.Image, prediction: Prediction) -> None:
    """The top class, the heatmap of where the model found it, and the top-5 probabilities."""
    label, probability = prediction.top_k(1)[0]
    st.subheader(f"{label} ({probability:.1%})")
    st.image(heatmap(photo, prediction.top_class_map()), caption=f"Where the model saw “{label}”")
    top = prediction.top_k(TOP_K)
    st.bar_chart(
        {"class": [name for name, _ in top], "probability": [share for _, share in top]},
        x="class", y="probability", horizontal=True, sort="-probability", height=220,
    )


def predict_page(root: Path, classifier: Classifier) -> None:
    """Classify one photo with the chosen model."""
    st.title("Which butterfly is it?")
    st.caption(describe(classifier))
    photo = choose_photo(root)
    if photo is None:
        return
    result = run_models(*photo, [classifier])
    if result is None:
        return
    image, (prediction,) = result
    left, right = st.columns(2)
    left.image(image, caption=photo[0])
    with right:
        show_prediction(image, prediction)


def compare_page(root: Path, classifiers: list[Classifier]) -> None:
    """Run every model on the same photo, side by side."""
    st.title("Compare models")
    photo = choose_photo(root)
    if photo is None:
        return
    result = run_models(*photo, classifiers)
    if result is None:
        return
    image, predictions = result
    st.image(image, caption=photo[0], width=320)
    for column, classifier, prediction in zip(st.columns(len(classifiers)), classifiers, predictions):
        with column:
            st.markdown(f"**{describe(classifier)}**")
            show_prediction(image, prediction)


def about_page(root: Path, classifier: Classifier) -> None:
    """How the backbones compared in training, and the chosen model's card."""
    st.title("About the model")
    st.header("Backbones compared")
    show_comparison(root)
    st.header(f"Model card: {classifier.name}")
    show_metrics(classifier.card)
    st.json(classifier.card, expanded=1)


def show_comparison(root: Path) -> None:
    """The training run's comparison table: comparison.json as a table, else comparison.md."""
    table, summary = root / "comparison.json", root / "comparison.md"
    if table.is_file():
        st.dataframe(json.loads(table.read_text(encoding="utf-8")), hide_index=True)
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


def main() -> None:
    """Lay out the page the visitor chose in the sidebar."""
    st.set_page_config(page_title="Butterfly classifier", page_icon="🦋", layout="wide")
    root = model_root()
    classifiers = load_classifiers(root)
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
