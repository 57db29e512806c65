"""The field set (`training.field`) and the ensemble row (`training.ensemble`) of `compare`.

A field set is measured on a finished run without retraining it (a copy of the session's
`trained_run`), and its columns are checked against the saved model run by hand; the ensemble's
arithmetic is checked on members whose predictions are made up, so that only the average gets
every image right. The trust step's temperature and ranks, and the table's ECE, are checked
against the saved model run by hand on the split's images as the app sees them. (A real
two-backbone run with a field set and its ensemble row, checked against both saved models:
tests/test_cli_options.py, the `--field-data` row.)
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from field_sets import app_answers, app_looks, field_photos, make_field_set
from PIL import Image
from sklearn.metrics import roc_auc_score

from runtime import answer
from training import calibration, ensemble, field, trust, unknown
from training.config import ConfigError, load_config
from training.evaluate import TEST_PREDICTIONS
from training.folder import ImageFolder, Sample
from training.runner import compare

UNCHANGED = ("state.json", "config.json", "model.keras", "metrics.json", "trust.json", "trust.npz", "test.npz")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, trained_run) -> Path:
    """A copy of the session's finished run (less the training-state files it no longer needs)."""
    copy = tmp_path_factory.mktemp("finished") / "shapes"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("*.weights.h5", "backup", "finetune_*"))
    return copy


def rerun(run: Path, field_data: Path | None, field_map: Path | None) -> tuple[list[dict], str]:
    """`compare` again with the run's own settings (from run.json), and a field set; its rows and log."""
    settings = json.loads((run / "run.json").read_text())["config"]
    config = load_config(None, {**settings, "output_dir": str(run.parent), "cache_dir": str(run.parent / "cache"),
                                "field_data": field_data and str(field_data), "field_map": field_map and str(field_map)})
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        rows = compare(config)
    return rows, log.getvalue()


def predict_field(folder: Path, images: Path, mapping: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The saved model's answers to the field photos as the app gives them, by hand: probabilities,
    served unknown scores, and the photos' labels."""
    paths, labels = field_photos(images, mapping, json.loads((folder / "labels.json").read_text()))
    return *app_answers(folder, paths), labels


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {name: ((folder / name).read_bytes(), (folder / name).stat().st_mtime_ns) for name in UNCHANGED}


def test_a_field_set_added_to_a_finished_run_is_measured_without_retraining(finished, tmp_path, trained_run):
    images, mapping = make_field_set(tmp_path / "field")
    before = snapshot(finished / "vgg16")
    [row], log = rerun(finished, images, mapping)
    assert "already trained" in log and "phase 1: head trained" not in log and "held-out species: AUROC" not in log
    assert snapshot(finished / "vgg16") == before  # state.json, the model and its results untouched
    assert len(list((finished / "vgg16").glob("field-*.npz"))) == 1

    # The columns, from the saved model run by hand on the photos.
    probabilities, scores, labels = predict_field(finished / "vgg16", images, mapping)
    known = labels >= 0
    assert row["field_top1"] == pytest.approx(np.mean(probabilities[known].argmax(1) == labels[known]))
    settings = json.loads((finished / "vgg16" / "trust.json").read_text())
    assert settings["score"] == "max_softmax+knn"  # the served score, as the app computes it
    assert row["field_unknown_auroc"] == pytest.approx(roc_auc_score(known, scores), abs=1e-9)
    assert 0 <= row["field_unknown_auroc"] <= 1 and 0 <= row["field_unknown_fpr95"] <= 1
    answered = scores >= settings["threshold"]  # the card's "not sure" threshold
    assert row["field_answered"] == pytest.approx(np.mean(answered[known]))
    assert row["field_not_sure"] == pytest.approx(np.mean(~answered[~known]))
    right = probabilities.argmax(1) == labels
    assert row["field_right"] == (pytest.approx(np.mean(right[known & answered])) if answered[known].any() else None)

    # Everything else is the run's own result; the table says what the field columns measured.
    [trained] = json.loads((trained_run / "comparison.json").read_text())
    assert trained["field_top1"] is None and trained["field_unknown_auroc"] is None  # no field set: empty
    assert {k: v for k, v in row.items() if not k.startswith("field_")} == \
           {k: v for k, v in trained.items() if not k.startswith("field_")}
    table = (finished / "comparison.md").read_text()
    assert f"Field: {images}: 9 photos of 3 known species, 3 of 1 unknown ones" in table
    assert json.loads((finished / "comparison.json").read_text()) == [row]


def test_without_unknown_species_the_unknown_field_columns_stay_empty(finished, tmp_path):
    images, mapping = make_field_set(tmp_path / "field", unknown=False)
    [row], _ = rerun(finished, images, mapping)
    probabilities, _, labels = predict_field(finished / "vgg16", images, mapping)
    assert row["field_top1"] == pytest.approx(np.mean(probabilities.argmax(1) == labels))
    assert row["field_unknown_auroc"] is None and row["field_unknown_fpr95"] is None and row["field_not_sure"] is None
    assert row["field_answered"] is not None  # known photos are answered or not all the same


def test_field_answers_are_kept_and_measured_again_when_photos_are_scored_otherwise(finished, tmp_path, monkeypatch):
    """A rerun reads the field answers it kept; a version that keeps or scores them otherwise
    (`field.ANSWERS_FORMAT`) does not read them, as they would carry the old scores."""
    run = tmp_path / "shapes"
    shutil.copytree(finished, run, ignore=shutil.ignore_patterns("field-answers-*"))  # none kept yet

    def kept() -> dict[Path, int]:
        return {path: path.stat().st_mtime_ns for path in (run / "vgg16").glob("field-answers-*.npz")}

    images, mapping = make_field_set(tmp_path / "field")
    first, _ = rerun(run, images, mapping)
    measured = kept()
    assert len(measured) == 1 and rerun(run, images, mapping)[0] == first
    assert kept() == measured  # read, not written again
    monkeypatch.setattr(field, "ANSWERS_FORMAT", field.ANSWERS_FORMAT + 1)
    assert rerun(run, images, mapping)[0] == first  # the same scoring under another name: the same columns
    assert len(kept()) == 2


def test_at_the_threshold_the_field_columns_say_what_a_visitor_would_see(tmp_path):
    """Known photos answered and right, unknown ones "not sure", at the card's threshold; without
    a threshold (a run older than its trust step) those columns stay empty."""
    images, mapping = make_field_set(tmp_path / "field")
    field_set = field.read(images, mapping, ["red circle", "green square", "blue triangle"])
    labels = field_set.labels  # three photos of each known class, then three unknown ones
    assert list(labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2, -1, -1, -1]
    answers = np.array([0, 0, 1, 1, 1, 1, 2, 0, 2, 0, 1, 2])  # wrong: the third and the eighth
    probabilities = np.eye(3)[answers] * 0.8 + 0.2 / 3
    scores = np.array([0.9, 0.9, 0.9, 0.2, 0.9, 0.9, 0.9, 0.1, 0.5, 0.1, 0.95, 0.2])
    columns = field.measure(field_set, probabilities, scores, threshold=0.8)
    assert columns["field_top1"] == pytest.approx(7 / 9)
    assert columns["field_answered"] == pytest.approx(6 / 9)  # all but the fourth, eighth and ninth
    assert columns["field_right"] == pytest.approx(5 / 6)  # the third was answered, and wrong
    assert columns["field_not_sure"] == pytest.approx(2 / 3)  # the second unknown photo passed
    without = field.measure(field_set, probabilities, scores)
    assert without["field_answered"] is None and without["field_right"] is None and without["field_not_sure"] is None
    assert without["field_unknown_auroc"] == columns["field_unknown_auroc"]


def test_reading_a_field_set(tmp_path):
    images, mapping_file = make_field_set(tmp_path / "field")
    classes = ["blue triangle", "green square", "red circle"]
    (images / "00_circles" / "broken.jpg").write_text("not an image")
    field_set = field.read(images, mapping_file, classes)
    assert [photo.label for photo in field_set.photos] == [2] * 3 + [1] * 3 + [0] * 3 + [field.UNKNOWN] * 3
    assert len(field_set.skipped) == 1 and "broken.jpg" in field_set.skipped[0]
    fingerprint = field_set.fingerprint()
    assert field.read(images, mapping_file, classes).fingerprint() == fingerprint
    Image.new("RGB", (40, 40), "white").save(images / "09_crosses" / "0.jpg")  # a photo changes
    assert field.read(images, mapping_file, classes).fingerprint() != fingerprint

    mapping = json.loads(mapping_file.read_text())
    wrong = tmp_path / "wrong.json"
    for changed, phrase in [
        ({**mapping, "00_circles": "purple star"}, "00_circles maps to 'purple star', which is not a class"),
        ({**mapping, "10_stars": None}, "names folder(s) '10_stars' that"),
        ({k: v for k, v in mapping.items() if k != "09_crosses"}, "does not map folder(s) '09_crosses'"),
        (dict.fromkeys(mapping), "maps no folder to a training class"),
        (["00_circles"], "expected a JSON object"),
    ]:
        wrong.write_text(json.dumps(changed))
        with pytest.raises(ConfigError, match=re.escape(f"field_map {wrong}: ") + ".*" + re.escape(phrase)):
            field.read(images, wrong, classes)
    for name in ("0.jpg", "1.jpg", "2.jpg"):
        (images / "01_squares" / name).write_text("not an image")
    with pytest.raises(ConfigError, match="folder '01_squares' has no usable image"):
        field.read(images, mapping_file, classes)


def member(name: str, test: list[list[float]], fold: list[list[float]], known_labels: list[int], field_looks,
           **row) -> ensemble.Member:
    """A member with made-up predictions (validation logits: the log of its test probabilities;
    field answers: the whole photos' and the crops' probabilities `field_looks`, and their average)."""
    logits = np.log(np.array(test))
    folds = [trust.FoldLogits(np.array([2]), np.log(np.array(fold)), np.array(known_labels))]
    cost = {key: row.get(key, 1) for key in ensemble.SUMMED}
    looks = np.array(field_looks).transpose(1, 0, 2)  # (photos, passes, classes)
    return ensemble.Member({"backbone": name, **cost, "stand_in_weights": row.get("stand_in_weights", False)},
                           np.array(test), trust.Predictions(logits, folds), field.Answers(looks.mean(axis=1), looks, None))


def split_images(dataset: Path, split: str, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    folders = [folder for folder in sorted((dataset / split).iterdir()) if folder.is_dir()]
    paths = [path for folder in folders for path in sorted(folder.iterdir())]
    return paths, np.array([classes.index(path.parent.name) for path in paths])


def test_the_trust_step_calibrates_what_the_app_shows(trained_run, tiny_dataset):
    """The temperature is fitted on the validation images as the app sees them, the served score's
    ranks on their whole-image pass, and the table's ECE after scaling is that of the test images
    as a visitor is shown them. (At 32x32 VGG16's class map is one cell, so no crop is taken here:
    `test_trust_fits_the_temperature_on_both_passes_and_the_ranks_on_the_whole_image` has two.)"""
    folder = trained_run / "vgg16"
    classes = json.loads((folder / "labels.json").read_text())
    measured = json.loads((folder / "trust.json").read_text())
    paths, labels = split_images(tiny_dataset, "valid", classes)
    looks = app_looks(folder, paths)
    both = np.stack([answer.logits(*look.passes) for look in looks])
    assert measured["temperature"] == pytest.approx(calibration.fit_temperature(both, labels), rel=1e-3)
    bank = np.load(folder / "feature_bank.npy")
    similarity = [answer.knn(look.full["features"], bank, measured["k"]) for look in looks]
    levels = np.linspace(0, 1, len(measured["ranks"]["knn"]))
    assert measured["ranks"]["knn"] == pytest.approx(np.quantile(similarity, levels), abs=1e-5)

    paths, labels = split_images(tiny_dataset, "test", classes)
    shown = calibration.scaled_probabilities(np.stack([answer.logits(*look.passes) for look in app_looks(folder, paths)]),
                                             measured["temperature"])
    summary = json.loads((folder / "metrics.json").read_text())["summary"]
    assert summary["ece_scaled"] == pytest.approx(calibration.expected_calibration_error(shown, labels), abs=1e-4)


def test_trust_fits_the_temperature_on_both_passes_and_the_ranks_on_the_whole_image():
    """Averaged with a crop's, the logits are less peaked than the whole image's: the temperature
    that calibrates them is the one served, and it is not the whole image's."""
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 1, (3, 8))

    def split(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(count) % 3
        return (centres[labels] + rng.normal(0, 0.3, (count, 8))).astype(np.float32), labels

    train, valid = split(60), split(30)
    logits = 4 * valid[0] @ centres.T + rng.normal(0, 1, (30, 3))
    seen = trust.Seen(whole_logits=logits, whole_features=valid[0] + 0.1, logits=logits / 2)
    head = unknown.LinearHead((4 * centres.T).astype(np.float32), np.zeros(3, np.float32), ceiling=1.5)
    measured, predictions, bank = trust.measure(train, valid, head, seen, classes=3, seed=0)
    assert measured["clip"] == 1.5  # the head's ReAct ceiling, kept for a resumed run
    assert predictions.valid_logits == pytest.approx(np.minimum(valid[0], 1.5) @ (4 * centres.T), abs=1e-5)
    assert measured["temperature"] == pytest.approx(calibration.fit_temperature(logits / 2, valid[1]))
    assert measured["temperature"] != pytest.approx(calibration.fit_temperature(logits, valid[1]), rel=0.1)
    levels = np.linspace(0, 1, len(measured["ranks"]["knn"]))
    confidence = calibration.scaled_probabilities(logits, measured["temperature"]).max(axis=1)
    assert measured["ranks"]["max_softmax"] == pytest.approx(np.quantile(confidence, levels))
    similarity = answer.knn(valid[0] + 0.1, bank.astype(np.float32), measured["k"])
    assert measured["ranks"]["knn"] == pytest.approx(np.quantile(similarity, levels), abs=1e-6)


def test_the_ensemble_row_averages_its_members():
    # Four test images of classes 0, 1, 2, 0: each member gets two right, and their average all four.
    a = [[0.90, 0.05, 0.05], [0.05, 0.90, 0.05], [0.35, 0.40, 0.25], [0.30, 0.45, 0.25]]
    b = [[0.30, 0.45, 0.25], [0.40, 0.35, 0.25], [0.05, 0.05, 0.90], [0.90, 0.05, 0.05]]
    labels = [0, 1, 2, 0]
    samples = [Sample(Path(f"{i}.jpg"), label, "") for i, label in enumerate(labels)]
    dataset = ImageFolder(Path("."), ["a", "b", "c"], {"train": [], "valid": samples, "test": samples}, "splits")
    # One fold (class 2 held out): two known images, then two unknown ones. Each member is as sure of
    # one unknown image as of a known one (AUROC 0.625 alone); on average the unknown ones are the least sure.
    fold_a = [[0.95, 0.05], [0.10, 0.90], [0.95, 0.05], [0.50, 0.50]]
    fold_b = [[0.90, 0.10], [0.05, 0.95], [0.50, 0.50], [0.05, 0.95]]
    field_set = field.FieldSet(Path("field"), {"x": "a", "y": "c", "z": None},
                               [Sample(Path(f"{i}.jpg"), label, "") for i, label in enumerate([0, 2, -1])], [])
    # Three field photos (of a, of c, unknown), whole and cropped. In the whole photos the members
    # are surer of the unknown one than of the known ones; the known ones' crops (the unknown one
    # has none) show both members their butterfly more clearly. (Not too sure: the temperature is small.)
    whole_a = [[0.40, 0.35, 0.25], [0.30, 0.32, 0.38], [0.40, 0.33, 0.27]]
    whole_b = [[0.36, 0.34, 0.30], [0.33, 0.31, 0.36], [0.40, 0.33, 0.27]]
    crop_a, crop_b = ([[0.42, 0.32, 0.26], [0.28, 0.28, 0.44], whole[2]] for whole in (whole_a, whole_b))
    members = [member("a", a, fold_a, [0, 1], [whole_a, crop_a], latency_ms=10.0, params_total=100),
               member("b", b, fold_b, [0, 1], [whole_b, crop_b], latency_ms=5.5, params_total=20, stand_in_weights=True)]

    row = ensemble.ensemble_row(members, dataset, field_set)
    assert row["backbone"] == "ensemble of a + b" and row["ensemble"] is True
    assert row["top1"] == 1.0 and row["macro_f1"] == 1.0  # each member alone: 0.5
    assert [np.mean(np.argmax(m.test, 1) == labels) for m in members] == [0.5, 0.5]
    assert row["latency_ms"] == 15.5 and row["params_total"] == 120 and row["stand_in_weights"] is True
    assert row["unknown_auroc"] == 1.0 and row["unknown_fpr95"] == 0.0
    assert row["field_top1"] == 1.0  # averaged over members and passes: photo 0 right ("a"), photo 1 too ("c")
    assert row["ece_scaled"] is not None
    # Its unknown score: calibrated max-softmax of the better look, the members' whole photos
    # averaged or their crops averaged, whichever is higher, as by hand.
    valid = np.mean([calibration.scaled_probabilities(m.predictions.valid_logits) for m in members], axis=0)
    temperature = calibration.fit_temperature(trust.log_probabilities(valid), np.array(labels))
    scores = np.maximum(*(trust.max_softmax(np.mean(looks, axis=0), temperature)
                          for looks in ([whole_a, whole_b], [crop_a, crop_b])))
    assert row["field_unknown_auroc"] == pytest.approx(roc_auc_score([1, 1, 0], scores)) == 1.0
    whole = trust.max_softmax(np.mean([whole_a, whole_b], axis=0), temperature)
    assert roc_auc_score([1, 1, 0], whole) == 0.0  # the whole photos alone: the unknown one is the surest
    # Its "not sure" threshold comes from the fold (both known images answered), never from the field set.
    assert row["field_answered"] in (0.0, 0.5, 1.0) and row["field_not_sure"] in (0.0, 1.0) and "threshold" not in row


def test_no_ensemble_without_the_members_predictions(tmp_path, capsys):
    rows = [{"backbone": "vgg16"}, {"backbone": "mobilenet_0.25"}]
    for name in ("vgg16", "mobilenet_0.25"):
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / TEST_PREDICTIONS, probabilities=np.eye(3))
    np.savez(tmp_path / "vgg16" / trust.PREDICTIONS_FILE, **trust.Predictions(np.eye(3), []).arrays())
    assert ensemble.members(tmp_path, rows[:1], {}) is None  # one backbone: nothing to average
    assert capsys.readouterr().out == ""
    assert ensemble.members(tmp_path, rows, {}) is None  # mobilenet_0.25 trained by an older version
    assert f"No ensemble row: {tmp_path / 'mobilenet_0.25' / trust.PREDICTIONS_FILE} missing" in capsys.readouterr().out
    np.savez(tmp_path / "mobilenet_0.25" / trust.PREDICTIONS_FILE, **trust.Predictions(np.eye(3), []).arrays())
    assert [m.row["backbone"] for m in ensemble.members(tmp_path, rows, {})] == ["vgg16", "mobilenet_0.25"]
