"""runtime.answer: the unknown scores, the sure / not sure decision, and logits read off the class maps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from tiny_models import model_card, write_model_folder

from runtime import model_folder
from runtime.answer import SCORES, TOP_K, answer, logits, softmax, unknown_score
from runtime.litert import ModelError
from runtime.model_folder import CARD_FILE, LABELS_FILE

LABELS = [f"class {index}" for index in range(7)]
LOGITS = np.array([0.5, 3.0, -1.0, 2.0, 0.0, 1.0, -2.0])


def card(score: str = "max_softmax", temperature: float = 2.0, threshold: float = 0.5) -> dict:
    return {"classes": LABELS, "unknown": {"score": score, "temperature": temperature, "threshold": threshold}}


def test_each_score_by_its_definition() -> None:
    temperature = 2.0
    exp = [math.exp(value / temperature) for value in LOGITS]
    assert unknown_score(LOGITS, "max_softmax", temperature) == pytest.approx(max(exp) / sum(exp))
    assert unknown_score(LOGITS, "max_logit", temperature) == pytest.approx(3.0)
    assert unknown_score(LOGITS, "energy", temperature) == pytest.approx(temperature * math.log(sum(exp)))
    with pytest.raises(ValueError, match="max_softmax, max_logit, energy"):
        unknown_score(LOGITS, "entropy", temperature)


def test_huge_logits_do_not_overflow() -> None:
    huge = np.array([1000.0, 999.0, -1000.0])
    assert softmax(huge).tolist() == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.e), 0.0])
    assert unknown_score(huge, "energy", 1.0) == pytest.approx(1000 + math.log(1 + math.exp(-1)))


@pytest.mark.parametrize("score", SCORES)
def test_sure_exactly_at_and_above_the_threshold(score: str) -> None:
    value = unknown_score(LOGITS, score, 2.0)
    assert answer(LOGITS, card(score, threshold=value)).sure
    assert not answer(LOGITS, card(score, threshold=np.nextafter(value, math.inf))).sure


def test_the_answer_is_calibrated_by_the_temperature() -> None:
    result = answer(LOGITS, card(temperature=2.0, threshold=0.0))
    probabilities = softmax(LOGITS / 2.0)
    assert result.sure and result.label == "class 1"
    assert result.confidence == pytest.approx(probabilities[1]) and result.score == pytest.approx(probabilities[1])
    assert [label for label, _ in result.could_be] == ["class 1", "class 3", "class 5", "class 0", "class 4"]
    assert len(result.could_be) == TOP_K
    assert [share for _, share in result.could_be] == pytest.approx(sorted(probabilities, reverse=True)[:TOP_K])
    hotter = answer(LOGITS, card(temperature=4.0, threshold=0.0))
    assert hotter.label == result.label and hotter.confidence < result.confidence


def test_logits_are_the_mean_of_the_class_maps_and_passes_are_averaged() -> None:
    maps = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    assert logits({"class_maps": maps}).tolist() == pytest.approx(maps.reshape(6, 4).mean(axis=0).tolist())
    other = {"class_maps": -maps}
    assert logits({"class_maps": maps}, other).tolist() == pytest.approx([0.0] * 4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CAM model exported by Keras' LiteRT exporter, as the pipeline exports one."""
    labels = LABELS[:4]
    return write_model_folder(tmp_path_factory.mktemp("answer") / "model", labels, model_card(labels, "tiny", 0.9), 3)


def test_the_exported_class_maps_give_the_models_logits(exported: Path) -> None:
    """The head is linear: softmax(mean of class_maps) is the model's own probabilities output."""
    model = model_folder.load(exported).model
    for seed in range(3):
        pixels = np.random.default_rng(seed).integers(0, 256, size=(*model.input_size, 3)).astype(np.uint8)
        outputs = model(pixels)
        assert softmax(logits(outputs)) == pytest.approx(outputs["probabilities"], abs=1e-5)


@pytest.mark.parametrize(
    ("unknown", "problem"),
    [
        ({"score": "entropy", "temperature": 1.0, "threshold": 0.5}, "one of max_softmax, max_logit, energy"),
        ({"score": "energy", "temperature": "1", "threshold": 0.5}, "numbers for temperature and threshold"),
        ({"score": "energy", "temperature": 0, "threshold": 0.5}, "temperature must be positive"),
        ("max_softmax", "one of max_softmax, max_logit, energy"),
    ],
)
def test_a_card_with_bad_unknown_settings_is_refused_at_load(exported: Path, tmp_path: Path, unknown, problem) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    for path in exported.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    labels = json.loads((folder / LABELS_FILE).read_text())
    card = model_card(labels, "tiny", 0.9)
    card["unknown"] = unknown
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelError, match=f"{CARD_FILE}: unknown .*{problem}"):
        model_folder.load(folder)
