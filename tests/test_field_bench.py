"""bench/field.py end to end on generated data with a TensorFlow-free stand-in model, and the
field augmentation views it measures (training/field_augment.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import field  # noqa: E402

from runtime import imaging  # noqa: E402
from training import field_augment, unknown  # noqa: E402

COLOURS = [(220, 40, 40), (40, 200, 60), (40, 70, 220), (230, 220, 40), (200, 40, 200), (40, 210, 210), (250, 140, 20)]


def blob(colour, rng, size=64, side=(0.5, 0.9)) -> tuple[Image.Image, Image.Image]:
    """A coloured square (the 'butterfly') on a grey noisy background, and its mask."""
    pixels = rng.integers(90, 140, (size, size, 3)).astype(np.uint8)
    mask = np.zeros((size, size), dtype=bool)
    s = int(rng.uniform(*side) * size)
    x, y = rng.integers(0, size - s + 1, 2)
    pixels[y:y + s, x:x + s] = np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255)
    mask[y:y + s, x:x + s] = True
    return Image.fromarray(pixels), Image.fromarray(mask)


def colour_model() -> field.Model:
    """Stand-in for a backbone: a 7x7 map of each 8x8 cell's mean colour and its square."""
    def feature_map(pixels: np.ndarray) -> np.ndarray:
        cells = pixels.astype(np.float32).reshape(7, 8, 7, 8, 3).mean(axis=(1, 3)) / 255
        return np.concatenate([cells, cells ** 2], axis=-1)
    return field.Model("colours", "colours", 56, feature_map)


@pytest.fixture()
def data(tmp_path, monkeypatch) -> tuple[dict[str, field.Split], list[field.FieldPhoto]]:
    monkeypatch.setattr(field, "WORK", tmp_path / "work")
    monkeypatch.setattr(field, "FOLDS", 2)
    monkeypatch.setattr(field, "HELD_OUT", 2)
    monkeypatch.setattr(field, "BANK_PER_CLASS", 5)
    monkeypatch.setattr(field, "BANK_SIZES", (2, 5, None))
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in (("train", 12), ("valid", 4), ("test", 4)):
        paths, labels = [], []
        for label, colour in enumerate(COLOURS[:6]):
            for index in range(count):
                path = tmp_path / "b" / split / str(label) / f"{index}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                blob(colour, rng)[0].save(path)
                paths.append(path)
                labels.append(label)
        splits[split] = field.Split(paths, np.array(labels))
    root = tmp_path / "field"
    mapping = {"a_known": "1", "b_known": "4", "c_unknown": None}
    (root).mkdir()
    (root / "mapping.json").write_text(json.dumps(mapping))
    for folder, colour in (("a_known", COLOURS[1]), ("b_known", COLOURS[4]), ("c_unknown", COLOURS[6])):
        for index in range(5):  # small 'butterflies' in bigger photos
            image, mask = blob(colour, rng, size=160, side=(0.2, 0.35))
            for kind, picture in (("images", image), ("masks", mask)):
                (root / kind / folder).mkdir(parents=True, exist_ok=True)
                picture.save(root / kind / folder / f"{index}.{'jpg' if kind == 'images' else 'png'}")
    photos = field.field_photos(root, [str(n) for n in range(6)])
    return splits, photos


def test_field_photos_are_labelled_by_the_mapping(data):
    _, photos = data
    assert [p.label for p in photos] == [1] * 5 + [4] * 5 + [-1] * 5
    assert all(p.mask.is_file() for p in photos)


def test_a_mapping_to_an_unknown_class_is_refused(tmp_path):
    (tmp_path / "mapping.json").write_text(json.dumps({"x": "NOT A CLASS"}))
    with pytest.raises(SystemExit, match="mapping.json: x maps to 'NOT A CLASS'"):
        field.field_photos(tmp_path, ["A", "B"])


def test_the_bench_measures_and_reports_a_model(data):
    splits, photos = data
    model = colour_model()
    train = field.split_features(model, splits["train"], "train")
    result = field.evaluate(model, unknown.fit_linear_head(train, splits["train"].labels), splits, photos, "colours")
    assert result["test_top1"] == {"first": 1.0, "second": 1.0}  # colours are easy
    assert result["first"]["field_top1"] >= 0.8
    assert result["in_mask"] >= 0.8  # the colour map peaks on the square
    assert result["cropped"] > 0.5  # the squares are small: the second look crops
    assert set(result["species_out"]) == {*unknown.SCORES, "max_softmax+knn"}
    assert 0 < result["threshold"] < 1  # the served rank combination, set on the folds (no card: a frozen pilot)
    # The bank sizes compared on held-out species, the shipped one among them, as measured above.
    assert list(result["bank_sizes"]) == ["2", "5", "None"]
    assert result["bank_sizes"]["5"] == result["species_out"]["max_softmax+knn"]
    section = field.report([], [result], "bench/field.py")
    assert "| colours |" in section and "max_softmax+knn (served)" in section
    assert "| model | 2 per class | 5 per class | every image |" in section
    assert result["knn_ms"] > 0 and f"adds a median of {result['knn_ms']:.1f} ms (colours)" in section
    assert result["backgrounds"] == len(photos)  # each photo has a square without its small square 'butterfly'
    whole, both = "max_softmax+knn of the whole photo", "max_softmax+knn on both passes"
    for look in ("first", "second"):  # the served score and the one served before, each at its own threshold
        before = {whole, both} if look == "second" else set()
        assert set(result[look]["at_threshold"]) == {"max_softmax", "max_softmax+knn"} | before
        assert set(result[look]["background"]) == set(result["species_out"]) | before
        assert all(0 <= m["auroc"] <= 1 for m in result[look]["background"].values())
        for measured in result[look]["at_threshold"].values():
            assert 0 <= measured["field_answered"] <= 1 and 0 <= measured["field_not_sure"] <= 1
            assert 0 <= measured["background_not_sure"] <= 1 and 0 <= measured["test_answered"] <= 1
            # No answer to be right or wrong: no share (it read 0% right before), else a share.
            assert (measured["field_right"] is None) == (measured["field_answered"] == 0)
            assert measured["field_right"] is None or 0 <= measured["field_right"] <= 1
    # Without the second look every score reads the whole photo, as the whole-photo row does with it.
    assert result["second"]["unknown"][whole] == result["first"]["unknown"]["max_softmax+knn"]
    assert f"max_softmax+knn >= {result['threshold']:.4g} (served)" in section
    assert f"| colours | {whole} |" in section and f"| colours | {both} |" in section
    # The better look reads the crop only where it scores higher: it answers at least what the whole photo does.
    served, first = (result["second"]["at_threshold"][name] for name in ("max_softmax+knn", whole))
    assert served["field_answered"] >= first["field_answered"] and served["test_answered"] >= first["test_answered"]
    assert served["field_not_sure"] <= first["field_not_sure"]
    # The threshold answers about 95% of known validation images, so about as many clean test images.
    assert result["second"]["at_threshold"]["max_softmax+knn"]["test_answered"] >= 0.8
    # Plain grey squares are far from every training colour: the served score says "not sure" to them.
    assert result["second"]["at_threshold"]["max_softmax+knn"]["background_not_sure"] == 1.0
    # A second evaluation reads the stored result instead of measuring again.
    head = unknown.fit_linear_head(train, splits["train"].labels)
    assert field.evaluate(model, head, splits, photos, "again")["model"] == "again"


def test_a_background_square_avoids_the_butterfly():
    mask = np.zeros((100, 200), dtype=bool)
    mask[10:60, 20:70] = True
    left, top, right, bottom = field.background_box(mask)
    assert right - left == bottom - top == 60  # the largest side tried: 60% of the short side
    assert mask[top:bottom, left:right].mean() < field.BACKGROUND_MAX_MASK
    assert field.background_box(np.ones((100, 200), dtype=bool)) is None  # all butterfly: no background


def test_the_augmentation_study_compares_recipes_side_by_side(data, monkeypatch):
    splits, photos = data
    monkeypatch.setattr(field, "RECIPES", ["zoom_out", "colour"])
    monkeypatch.setattr(field, "ALL_IMAGES", ["zoom_out"])
    monkeypatch.setattr(field, "VIEW_PER_CLASS", 3)
    rows = field.study(colour_model(), splits, photos)
    assert [(r["recipe"], r["views"]) for r in rows] == [
        ("plain", "none"), ("zoom_out", "3 per class"), ("colour", "3 per class"), ("zoom_out", "every image")]
    assert all(0 <= r["field_top1"] <= 1 and r["test_top1"] > 0.5 for r in rows)
    assert "| plain + zoom_out | every image |" in field.report(rows, [], "bench/field.py")


def image_files(folder: Path, count: int) -> list[str]:
    """`count` random 16x16 PNG files, as a training split's paths."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    paths = [str(folder / f"{i}.png") for i in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    return paths


@pytest.mark.parametrize("recipe", ["zoom_out", "crop", "colour", "blur", "field"])
def test_framed_images_are_deterministic_per_seed(recipe, tmp_path):
    paths = image_files(tmp_path / "train", 4)
    first = [field_augment.framed_loader(paths, 16, seed=7, share=1.0, recipe=recipe)(i) for i in range(4)]
    again = field_augment.framed_loader(paths, 16, seed=7, share=1.0, recipe=recipe)
    other = field_augment.framed_loader(paths, 16, seed=8, share=1.0, recipe=recipe)
    assert all(image.shape == (16, 16, 3) and image.dtype == np.uint8 for image in first)
    assert all(np.array_equal(first[i], again(i)) for i in range(4))
    assert not all(np.array_equal(first[i], other(i)) for i in range(4))


def test_zoom_out_pastes_a_smaller_copy_on_blurred_context():
    picture = Image.new("RGB", (100, 100), (255, 0, 0))
    context = Image.fromarray(np.tile(np.array([0, 0, 255], dtype=np.uint8), (100, 100, 1)))
    out = np.asarray(field_augment.zoom_out(picture, context, np.random.default_rng(0)))
    red = np.mean((out[..., 0] > 200) & (out[..., 2] < 50))
    assert 0.3 ** 2 * 0.6 <= red <= 0.9 ** 2 * 1.3  # the image now covers 30-90% of the side
    assert np.mean(out[..., 2] > 200) > 0.1  # and the context shows around it


def test_share_leaves_the_other_images_as_decoded(tmp_path):
    paths = image_files(tmp_path / "train", 40)
    plain = [imaging.load_pixels(path, (16, 16)) for path in paths]
    framed = field_augment.framed_loader(paths, 16, seed=3, share=0.25, recipe="zoom_out")
    unchanged = np.mean([np.array_equal(plain[i], framed(i)) for i in range(40)])
    assert 0.5 <= unchanged <= 0.95  # about three in four
    untouched = field_augment.framed_loader(paths, 16, seed=3, share=0.0)
    assert all(np.array_equal(plain[i], untouched(i)) for i in range(40))


def test_an_unknown_recipe_is_refused(tmp_path):
    framed = field_augment.framed_loader(image_files(tmp_path / "train", 2), 16, seed=0, share=1.0, recipe="nope")
    with pytest.raises(ValueError, match="unknown field augmentation recipe 'nope'"):
        framed(0)


def test_the_pipelines_own_augmentation_is_one_view_per_image_and_seed(tmp_path):
    """The "affine" recipe measured beside the field views: image i's view depends on (seed, i)
    only, so it differs from image to image and is the same when asked again."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        blob(COLOURS[0], rng)[0].save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    Image.open(paths[0]).save(paths[1])  # two identical images: only the draws can tell them apart
    view = field.augmented_images(paths, 32, "affine", seed=4)
    np.testing.assert_array_equal(view(0), view(0))
    assert not np.allclose(view(0), view(1))
