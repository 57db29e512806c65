"""Fixtures for the app tests: a model root laid out exactly as the exporter lays one out.

`build_model_root` is the one place that makes model roots. Its two model folders hold tiny
Keras CNNs with a CAM head, exported by Keras' own LiteRT exporter (`tiny_models`), so the app is
tested against the same kind of file the pipeline produces. To test against the real pipeline
instead, make it call the pipeline's exporter and return that root.

Each card serves the pipeline's unknown score, max-softmax+kNN, measured as the trust step
measures one, on real scores: a feature bank of the model's features of a few random images, the
ranks of the fixture's photos (`photos.PHOTOS`) as the validation images, and a threshold at
their median score, so that about half of them get an answer and the others "Not sure".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from photos import PHOTOS
from PIL import Image
from sessions import once_per_session
from streamlit.testing.v1 import AppTest
from tiny_models import model_card, write_model_folder, write_test_results

from app.inference import Classifier, find_models
from runtime import second_look
from runtime.answer import Answer, answer, knn, logits, normalised, photo_score, unknown_score
from runtime.litert import LiteRTModel
from runtime.model_folder import BANK_FILE, CARD_FILE, FEATURES, MODEL_FILE, OUTPUTS, SAMPLES_FOLDER
from training.unknown import RankCombination

APP_SCRIPT = Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"
LABELS = ["admiral", "monarch", "morpho", "peacock", "swallowtail", "zebra longwing"]

# Two models whose cards disagree on accuracy, so that the app's default (best test top-1) is
# not simply the first folder.
MODELS = {"tiny_a": {"seed": 1, "top1": 0.80}, "tiny_b": {"seed": 2, "top1": 0.90}}
K = 3  # the cards' kNN: mean similarity to the 3 nearest of the bank


@pytest.fixture(scope="session")
def model_root(request: pytest.FixtureRequest) -> Path:
    """A model root with two model folders, sample photos and a comparison table; made once per
    session (`sessions`): tests only read it."""
    return once_per_session(request, "model-root", lambda folder: build_model_root(folder / "deploy")) / "deploy"


@pytest.fixture(scope="session")
def model_folder(model_root: Path) -> Path:
    """One model folder of the root, found without the app's own `find_models`."""
    return min(model_root.rglob(MODEL_FILE)).parent


@pytest.fixture(scope="session")
def default_model(model_root: Path) -> Classifier:
    """The model the app serves unless told otherwise: the best test top-1 of the model cards."""
    classifiers = [Classifier(folder) for folder in find_models(model_root)]
    return max(classifiers, key=lambda classifier: classifier.card["litert_metrics"]["top1"])


@pytest.fixture
def app(model_root: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    """The web app serving the fixture's model root, not yet run."""
    monkeypatch.setenv("MODEL_DIR", str(model_root))
    return AppTest.from_file(str(APP_SCRIPT), default_timeout=60)


@pytest.fixture(scope="session")
def expected_heading() -> Callable[[Classifier, str, bytes], str]:
    """The heading the page must show for a photo: the top class and its probability, or "Not sure"."""

    def heading(classifier: Classifier, name: str, data: bytes) -> str:
        result = answer_with_second_look(classifier, name, data)
        return f"{result.label} ({result.confidence:.1%})" if result.sure else "Not sure"

    return heading


@pytest.fixture(scope="session")
def expected_answer() -> Callable[[Classifier, str, bytes], Answer]:
    """The answer the page must give for a photo (`answer_with_second_look`)."""
    return answer_with_second_look


@pytest.fixture(scope="session")
def photos_by_answer() -> Callable[[Classifier, bool], dict[str, bytes]]:
    """The fixture photos (`photos.PHOTOS`) that a model answers (sure=True) or is not sure about."""

    def photos(classifier: Classifier, sure: bool) -> dict[str, bytes]:
        return {name: data for name, data in PHOTOS.items() if answer_with_second_look(classifier, name, data).sure == sure}

    return photos


def answer_with_second_look(classifier: Classifier, name: str, data: bytes) -> Answer:
    """The answer for a photo with the second look, computed with `runtime.second_look.look` itself."""
    image = second_look.decode(data, classifier.input_size, name)
    look = second_look.look(image, classifier.outputs, classifier.input_size)
    return answer(look.passes, classifier.card, classifier.bank)


def build_model_root(root: Path) -> Path:
    """Export the tiny models into `root`, with labels, cards, feature banks, samples and comparison files."""
    rows = []
    for name, spec in MODELS.items():
        card = model_card(LABELS, f"tiny_cnn_{name[-1]}", spec["top1"])
        folder = write_model_folder(root / name, LABELS, card, spec["seed"])
        card["unknown"] = served_unknown(folder, card["unknown"]["temperature"], spec["seed"])
        (folder / CARD_FILE).write_text(json.dumps(card, indent=2))
        write_test_results(folder, LABELS, spec["seed"])
        rows.append({"backbone": card["backbone"], **card["litert_metrics"], "params_total": 1000, "size_mb": 0.01,
                     "latency_ms": 0.1, "best": name == "tiny_b"})
    (root / "comparison.json").write_text(json.dumps(rows, indent=2))
    (root / "comparison.md").write_text(
        "| backbone | top1 |\n| --- | --- |\n" + "".join(f"| {r['backbone']} | {r['top1']} |\n" for r in rows)
    )
    write_samples(root / SAMPLES_FOLDER)
    return root


def served_unknown(folder: Path, temperature: float, seed: int) -> dict:
    """The card's max-softmax+kNN settings for the model in `folder`, whose feature bank (the
    features of 12 random images) this writes: ranks of the fixture's photos, threshold at their median."""
    model = LiteRTModel(folder / MODEL_FILE, (*OUTPUTS, FEATURES))
    rng = np.random.default_rng(seed)
    noise = [rng.integers(0, 256, size=(*model.input_size, 3)).astype(np.uint8) for _ in range(12)]
    bank = normalised(np.stack([model(pixels)["features"] for pixels in noise])).astype(np.float16)
    np.save(folder / BANK_FILE, bank)
    looks = [second_look.look(second_look.decode(data, model.input_size, name), model, model.input_size).passes
             for name, data in PHOTOS.items()]
    confidence = [unknown_score(logits(passes[0]), "max_softmax", temperature) for passes in looks]
    similarity = [float(knn(passes[0]["features"], bank, K)) for passes in looks]
    ranks = RankCombination.fit({"max_softmax": np.array(confidence), "knn": np.array(similarity)}).quantiles
    unknown = {"score": "max_softmax+knn", "temperature": temperature, "k": K,
               "ranks": {name: quantiles.tolist() for name, quantiles in ranks.items()}}
    scores = [photo_score(passes, unknown, bank) for passes in looks]
    return {**unknown, "threshold": float(np.median(scores))}


def write_samples(folder: Path) -> None:
    """Three sample photos named after their class, as the exporter writes them."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for label in LABELS[:3]:
        pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{label}.jpg", quality=90)
