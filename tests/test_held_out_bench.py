"""bench/held_out.py: the recipe trained without a fold's species, then shown them, end to end on
generated data (VGG16 from scratch at 32x32, as the session's trained run), and its pieces."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import held_out  # noqa: E402

# Six easy classes: a coloured square on a noisy background (six, so that a fold holds one out).
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 70, 220), "yellow": (230, 220, 40),
           "purple": (200, 40, 200), "cyan": (40, 210, 210)}


def square(colour: tuple[int, int, int], rng: np.random.Generator, size: int = 48) -> Image.Image:
    pixels = rng.integers(90, 160, (size, size, 3)).astype(np.uint8)
    side = int(rng.integers(size // 3, size // 2))
    x, y = rng.integers(0, size - side, 2)
    pixels[y:y + side, x:x + side] = colour
    return Image.fromarray(pixels)


def make_data(root: Path, counts=(12, 4, 4)) -> Path:
    rng = np.random.default_rng(0)
    for split, count in zip(held_out.SPLITS, counts, strict=True):
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                square(colour, rng).save(root / split / name / f"{index}.jpg", quality=95)
    return root


def make_field(root: Path, mapping: dict[str, str | None]) -> Path:
    """A field set: bigger photos with a small square, one folder per entry of `mapping`."""
    rng = np.random.default_rng(1)
    for folder, name in mapping.items():
        (root / "images" / folder).mkdir(parents=True)
        for index in range(4):
            square(COLOURS[name or "cyan"], rng, size=96).save(root / "images" / folder / f"{index}.jpg", quality=95)
    (root / "mapping.json").write_text(json.dumps(mapping))
    return root


def write_config(folder: Path, data: Path) -> Path:
    config = folder / "bench.toml"
    config.write_text(f'data = "{data}"\nweights = "none"\nimage_size = 32\nhead_epochs = 20\n'
                      "fine_tune_epochs = 1\nbatch_size = 32\nfine_tune_learning_rate = 1e-4\n")
    return config


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(held_out, "WORK", tmp_path / "held-out")
    monkeypatch.setattr(held_out, "FULL", tmp_path / "cold")
    monkeypatch.setattr(held_out, "CACHE", tmp_path / "cache")
    return tmp_path / "held-out"


def test_a_dry_run_names_the_folds_species_from_the_trust_steps_folds(tmp_path, work, capsys):
    data = make_data(tmp_path / "data", counts=(1, 1, 1))
    config = write_config(tmp_path, data)
    assert not held_out.main(["--config", str(config), "--folds", "0,1", "--dry-run", "--field", str(tmp_path / "none")])
    said = capsys.readouterr().err
    assert not held_out.main(["--config", str(config), "--dry-run"])
    assert capsys.readouterr().err.count("\nfold ") == 4  # by default, every fold of the trust step
    from training import unknown

    folds = unknown.species_folds(6, *unknown.folds_for(6), seed=1337)  # the config's seed: the default
    names = sorted(COLOURS)
    assert f"fold 0: {names[folds[0][0]]}\n" in said and f"fold 1: {names[folds[1][0]]}\n" in said
    assert "field set: none" in said
    assert not work.exists()  # a dry run writes nothing


@pytest.mark.parametrize("folds, phrase", [("x", "not comma-separated numbers"), ("4", "has folds 0 to 3")])
def test_bad_folds_stop_before_any_work(tmp_path, work, folds, phrase):
    data = make_data(tmp_path / "data", counts=(1, 1, 1))
    with pytest.raises(SystemExit) as stop:
        held_out.main(["--config", str(write_config(tmp_path, data)), "--folds", folds])
    assert f"--folds {folds}: " in str(stop.value.code) and phrase in str(stop.value.code)
    assert not work.exists()


def test_a_dataset_without_splits_is_refused_with_its_name(tmp_path, work):
    (tmp_path / "flat" / "red").mkdir(parents=True)
    with pytest.raises(SystemExit) as stop:
        held_out.main(["--config", str(write_config(tmp_path, tmp_path / "flat")), "--dry-run"])
    assert "flat: no train/, valid/, test/ folder" in str(stop.value.code)


def test_the_fold_mapping_makes_the_held_out_species_unknown(tmp_path):
    field = make_field(tmp_path / "field", {"a": "red", "b": "blue", "c": None})
    written = json.loads(held_out.fold_mapping(field, ["blue"], tmp_path / "mapping.json").read_text())
    assert written == {"a": "red", "b": None, "c": None}


def test_the_served_score_is_measured_against_the_held_out_images():
    known = [{"score": 0.9, "answer": "red", "class": "red"}, {"score": 0.8, "answer": "blue", "class": "red"},
             {"score": 0.2, "answer": "not sure", "class": "blue"}]
    unseen = [{"score": 0.1, "answer": "not sure"}, {"score": 0.85, "answer": "red"}]
    result = held_out.measured(known, unseen)
    assert result["auroc"] == pytest.approx(4 / 6)  # known above unknown in 4 of the 6 pairs
    assert (result["answered"], result["right"], result["not_sure"]) == (pytest.approx(2 / 3), 0.5, 0.5)
    assert (result["known"], result["held"]) == (3, 2)


def test_each_held_out_species_is_measured_alone_weakest_first():
    known = [{"score": 0.9}, {"score": 0.8}]
    held = [{"class": "twin", "score": 0.95, "answer": "red", "top1": "red"},
            {"class": "twin", "score": 0.85, "answer": "red", "top1": "red"},
            {"class": "twin", "score": 0.1, "answer": "not sure", "top1": "blue"},
            {"class": "odd", "score": 0.1, "answer": "not sure", "top1": "blue"}]
    twin, odd = held_out.per_species(known, held)
    assert (odd["species"], odd["auroc"], odd["not_sure"]) == ("odd", 1.0, 1.0)
    assert twin["species"] == "twin" and twin["auroc"] == pytest.approx(3 / 6)  # known above it in 3 of 6 pairs
    assert (twin["named"], twin["named_count"], twin["images"]) == ("red", 2, 3)


@pytest.mark.heavy
def test_the_bench_trains_without_the_fold_and_shows_it_those_species(tmp_path, work, capsys):
    data = make_data(tmp_path / "data")
    held = held_out.held_out_classes(data, 1337)[1][0]
    kept = sorted(set(COLOURS) - set(held))
    field = make_field(tmp_path / "field", {"k": kept[0], "h": held[0], "u": None})

    held_out.main(["--config", str(write_config(tmp_path, data)), "--backbone", "vgg16", "--folds", "0",
                   "--field", str(field), "--no-record"])

    [result] = json.loads((work / "held_out.json").read_text())
    assert result["held"] == held and result["backbone"] == "vgg16"
    served = result["served"]
    assert served["known"] == 4 * len(kept) and served["held"] == (12 + 4 + 4) * len(held)
    assert 0 <= served["auroc"] <= 1 and 0 <= served["not_sure"] <= 1
    assert [entry["species"] for entry in result["species"]] == held
    trained = json.loads((work / "fold0" / "vgg16" / "labels.json").read_text())
    assert held[0] not in json.dumps(trained) and kept[0] in json.dumps(trained)  # never trained on the fold
    assert json.loads((work / "fold0-mapping.json").read_text()) == {"k": kept[0], "h": None, "u": None}
    assert result["field"]["field_top1"] is not None  # the field set was measured, its held species unknown
    section = capsys.readouterr().out
    assert f"| 0 (vgg16) | {held[0]} |" in section and "the fold's species unknown too" in section


def test_the_bench_explains_its_options(capsys):
    with pytest.raises(SystemExit) as stop:
        held_out.main(["--help"])
    usage = capsys.readouterr().out
    assert stop.value.code == 0 and all(option in usage for option in ("--config", "--dry-run", "--folds", "--field"))


def test_a_failing_training_run_stops_the_bench_after_its_own_message(tmp_path, work, capfd):
    data = make_data(tmp_path / "data", counts=(1, 1, 1))
    config = write_config(tmp_path, data)
    config.write_text(config.read_text().replace("head_epochs = 20", "head_epochs = 0"))
    with pytest.raises(SystemExit) as stop:
        held_out.main(["--config", str(config), "--folds", "0", "--field", str(tmp_path / "none")])
    assert str(stop.value.code).startswith("python -m training compare failed (exit status")
    assert "head_epochs" in capfd.readouterr().err  # compare's own message, naming the setting
