"""runtime.answer: the unknown scores, the sure / not sure decision, and logits read off the class maps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from tiny_models import model_card, write_model_folder

from runtime import model_folder
from runtime.answer import NEEDS_BANK, SCORES, TOP_K, answer, logits, pass_score, photo_score, softmax, unknown_score
from runtime.litert import ModelError
from runtime.model_folder import CARD_FILE, LABELS_FILE

LABELS = [f"class {index}" for index in range(7)]
LOGITS = np.array([0.5, 3.0, -1.0, 2.0, 0.0, 1.0, -2.0])


def card(score: str = "max_softmax", temperature: float = 2.0, threshold: float = 0.5) -> dict:
    return {"classes": LABELS, "unknown": {"score": score, "temperature": temperature, "threshold": threshold, **BANKED}}


def seen(logits: np.ndarray, features: list[float] = (1.0, 0.0, 0.0)) -> list[dict]:
    """One pass whose class maps average to `logits` (a 1x1 map) and whose features are `features`."""
    return [{"class_maps": np.asarray(logits, dtype=np.float32)[None, None], "features": np.asarray(features, np.float32)}]


# A feature bank of three unit rows and the ranks of a made-up validation set, for "max_softmax+knn".
BANK = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]], dtype=np.float32)
BANKED = {"k": 2, "ranks": {"max_softmax": [0.2, 0.5, 0.9, 1.0], "knn": [0.0, 0.5, 0.8, 1.0]}}


def test_each_score_by_its_definition() -> None:
    temperature = 2.0
    exp = [math.exp(value / temperature) for value in LOGITS]
    assert unknown_score(LOGITS, "max_softmax", temperature) == pytest.approx(max(exp) / sum(exp))
    assert unknown_score(LOGITS, "max_logit", temperature) == pytest.approx(3.0)
    assert unknown_score(LOGITS, "energy", temperature) == pytest.approx(temperature * math.log(sum(exp)))
    with pytest.raises(ValueError, match="max_softmax, max_logit, energy, max_softmax\\+knn"):
        unknown_score(LOGITS, "entropy", temperature)


def test_max_softmax_and_knn_average_their_ranks_among_validation_images() -> None:
    """By hand: the features (1, 1, 0)/sqrt2 have cosines 0.707, 0.707, 0.990 with the bank; the two
    nearest average 0.849, which beats 0.5 + (0.849 - 0.8) / 0.2 / 3 = 74.8% of the validation ranks."""
    features = [1.0, 1.0, 0.0]
    confidence = softmax(LOGITS, 2.0).max()
    similarity = (1.4 / math.sqrt(2) + 1 / math.sqrt(2)) / 2
    ranks = (np.interp(confidence, BANKED["ranks"]["max_softmax"], [0, 1 / 3, 2 / 3, 1]),
             np.interp(similarity, BANKED["ranks"]["knn"], [0, 1 / 3, 2 / 3, 1]))
    unknown = card("max_softmax+knn")["unknown"]
    assert pass_score(seen(LOGITS, features)[0], unknown, BANK) == pytest.approx(np.mean(ranks))


def test_the_answer_reads_both_passes_and_scores_the_better_look() -> None:
    """With a second look, the probabilities come from the two passes' averaged logits, and the
    unknown score is the higher of the two passes': a butterfly that only the crop sees well is
    answered, where the whole photo alone would be "not sure"."""
    unknown = card("max_softmax+knn", threshold=0.5)
    whole, crop = seen(LOGITS, [0.0, 0.0, 1.0])[0], seen(LOGITS[::-1] * 3, [1.0, 1.0, 0.0])[0]
    scores = [pass_score(outputs, unknown["unknown"], BANK) for outputs in (whole, crop)]
    assert scores[0] < 0.5 <= scores[1]
    result = answer([whole, crop], unknown, BANK)
    assert result.score == photo_score([whole, crop], unknown["unknown"], BANK) == max(scores)
    assert result.sure and not answer([whole], unknown, BANK).sure
    assert answer([crop, whole], unknown, BANK).score == result.score
    averaged = softmax((LOGITS + LOGITS[::-1] * 3) / 2, 2.0)
    assert [p for _, p in result.could_be] == pytest.approx(sorted(averaged, reverse=True)[:TOP_K])
    # A crop that scores lower does not pull the photo's score down: the passes are not averaged.
    assert answer([crop, seen(LOGITS * 0, [0.0, 0.0, 1.0])[0]], unknown, BANK).score == scores[1]


def test_a_photo_far_from_the_bank_is_not_sure_however_confident() -> None:
    unknown = card("max_softmax+knn", threshold=0.5)
    near, far = answer(seen(LOGITS * 5, [1.0, 0.1, 0.0]), unknown, BANK), answer(seen(LOGITS * 5, [0.0, 0.0, 1.0]), unknown, BANK)
    assert near.confidence == far.confidence > 0.9
    assert near.sure and not far.sure


def test_a_score_that_reads_the_bank_needs_one() -> None:
    assert NEEDS_BANK == ("max_softmax+knn",)
    with pytest.raises(ValueError, match="needs the model's feature bank"):
        answer(seen(LOGITS), card("max_softmax+knn"))


def test_huge_logits_do_not_overflow() -> None:
    huge = np.array([1000.0, 999.0, -1000.0])
    assert softmax(huge).tolist() == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.e), 0.0])
    assert unknown_score(huge, "energy", 1.0) == pytest.approx(1000 + math.log(1 + math.exp(-1)))


@pytest.mark.parametrize("score", SCORES)
def test_sure_exactly_at_and_above_the_threshold(score: str) -> None:
    value = photo_score(seen(LOGITS), card(score)["unknown"], BANK)
    assert answer(seen(LOGITS), card(score, threshold=value), BANK).sure
    assert not answer(seen(LOGITS), card(score, threshold=np.nextafter(value, math.inf)), BANK).sure


def test_the_answer_is_calibrated_by_the_temperature() -> None:
    result = answer(seen(LOGITS), card(temperature=2.0, threshold=0.0))
    probabilities = softmax(LOGITS / 2.0)
    assert result.sure and result.label == "class 1"
    assert result.confidence == pytest.approx(probabilities[1]) and result.score == pytest.approx(probabilities[1])
    assert [label for label, _ in result.could_be] == ["class 1", "class 3", "class 5", "class 0", "class 4"]
    assert len(result.could_be) == TOP_K
    assert [share for _, share in result.could_be] == pytest.approx(sorted(probabilities, reverse=True)[:TOP_K])
    hotter = answer(seen(LOGITS), card(temperature=4.0, threshold=0.0))
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
        ({"score": "max_softmax+knn", "temperature": 1.0, "threshold": 0.5, "ranks": BANKED["ranks"]}, "needs a whole number k"),
        ({"score": "max_softmax+knn", "temperature": 1.0, "threshold": 0.5, "k": 2, "ranks": {"knn": [0, 1]}}, "needs ranks"),
        ({"score": "max_softmax+knn", "temperature": 1.0, "threshold": 0.5, "k": 2,
          "ranks": {"knn": [0, 1], "max_softmax": [1, 0]}}, "needs ranks"),
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


def banked_folder(exported: Path, folder: Path, bank: np.ndarray | None) -> Path:
    """A copy of the exported folder whose card serves max-softmax+kNN, with `bank` as its feature bank."""
    folder.mkdir()
    for path in exported.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    card = json.loads((folder / CARD_FILE).read_text())
    card["unknown"] = {"score": "max_softmax+knn", "temperature": 1.0, "threshold": 0.5, **BANKED}
    (folder / CARD_FILE).write_text(json.dumps(card))
    if bank is not None:
        np.save(folder / model_folder.BANK_FILE, bank)
    return folder


def test_a_folder_serving_knn_loads_its_bank_and_answers_with_it(exported: Path, tmp_path: Path) -> None:
    bank = np.eye(8, dtype=np.float16)[:5]  # the tiny model has 8 channels
    loaded = model_folder.load(banked_folder(exported, tmp_path / "model", bank))
    assert loaded.bank.dtype == np.float32 and loaded.bank.tolist() == bank.astype(np.float32).tolist()
    pixels = np.random.default_rng(0).integers(0, 256, size=(*loaded.model.input_size, 3)).astype(np.uint8)
    outputs = loaded.model(pixels)
    assert outputs["features"].shape == (8,)
    result = answer([outputs], loaded.card, loaded.bank)
    assert result.score == pytest.approx(photo_score([outputs], loaded.card["unknown"], bank.astype(np.float32)))


@pytest.mark.parametrize(("bank", "problem"), [
    (None, "feature_bank.npy is missing; model_card.json's unknown score needs it"),
    (np.ones((5, 3), dtype=np.float16), r"expected \(images, 8\) features with at least k = 2 images, found shape \[5, 3\]"),
    (np.ones((1, 8), dtype=np.float16), r"with at least k = 2 images, found shape \[1, 8\]"),
])
def test_a_folder_serving_knn_without_a_usable_bank_is_refused_at_load(exported: Path, tmp_path: Path, bank, problem) -> None:
    with pytest.raises(ModelError, match=problem):
        model_folder.load(banked_folder(exported, tmp_path / "model", bank))
