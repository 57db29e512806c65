"""The dataset checks: every problem listed in the training issue gets its own message."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from shapes import make_dataset, run_cli

from training.folder import DataError, scan


@pytest.fixture()
def dataset(tmp_path):
    return make_dataset(tmp_path / "data", counts=(6, 2, 2))


def test_report_counts_classes_and_images(dataset):
    found = scan(dataset)
    assert found.classes == ["blue triangle", "green square", "red circle"]
    assert [len(found.splits[s]) for s in ("train", "valid", "test")] == [18, 6, 6]
    report = found.report()
    assert "3 classes" in report and "train:     18 images, 6-6 per class" in report
    assert "class imbalance (train): 1.0x" in report


def test_undecodable_files_are_skipped_and_named(dataset):
    bad = dataset / "train" / "red circle"
    (bad / "text.jpg").write_text("not an image")
    data = (bad / "0.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (bad / "empty.png").write_bytes(b"")
    found = scan(dataset)
    assert len(found.splits["train"]) == 18
    skipped = "\n".join(found.skipped)
    assert "text.jpg: not an image" in skipped
    assert "truncated.jpg: the image is truncated" in skipped
    assert "empty.png: the file is empty" in skipped
    assert "skipped (cannot decode)" in found.report()


def test_non_rgb_images_are_converted_and_counted(dataset):
    folder = dataset / "train" / "green square"
    rgb = Image.open(folder / "0.jpg")
    rgb.convert("L").save(folder / "gray.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.convert("P").save(folder / "palette.gif")
    rgb.convert("RGBA").save(folder / "alpha.png")
    found = scan(dataset)
    assert found.converted == {"L": 1, "CMYK": 1, "P": 1, "RGBA": 1}
    assert len(found.splits["train"]) == 22
    assert "converted to RGB: 1 CMYK, 1 L, 1 P, 1 RGBA" in found.report()


def test_hidden_and_non_image_files_are_ignored(dataset):
    (dataset / "train" / "red circle" / ".DS_Store").write_bytes(b"\0\1")
    (dataset / "train" / "red circle" / "notes.txt").write_text("hello")
    (dataset / "train" / "README.md").write_text("hello")
    (dataset / "train" / ".hidden_class").mkdir()
    found = scan(dataset)
    assert found.classes == ["blue triangle", "green square", "red circle"]
    assert len(found.splits["train"]) == 18
    assert sorted(p.rsplit("/", 1)[1] for p in found.ignored) == [".DS_Store", "README.md", "notes.txt"]


def test_classes_that_differ_between_splits_stop_the_run(dataset):
    shutil.rmtree(dataset / "test" / "red circle")
    with pytest.raises(DataError, match="classes differ between splits; missing here: red circle"):
        scan(dataset)


def test_empty_class_stops_the_run(dataset):
    for file in (dataset / "valid" / "blue triangle").iterdir():
        file.unlink()
    with pytest.raises(DataError, match="valid/blue triangle: class 'blue triangle' has no usable images"):
        scan(dataset)


def test_a_class_of_only_broken_files_counts_as_empty(dataset):
    for file in (dataset / "test" / "green square").iterdir():
        file.write_bytes(b"garbage")
    with pytest.raises(DataError, match="has no usable images"):
        scan(dataset)


def test_duplicates_across_splits_are_warned(dataset):
    shutil.copyfile(dataset / "train" / "red circle" / "0.jpg", dataset / "test" / "red circle" / "copy.jpg")
    found = scan(dataset)
    assert len(found.duplicates) == 1 and len(found.duplicates[0]) == 2
    assert "identical files in several splits (leakage)" in found.report()


def test_val_folder_name_is_accepted(dataset):
    (dataset / "valid").rename(dataset / "val")
    assert len(scan(dataset).splits["valid"]) == 6


def test_missing_test_split_is_an_error(dataset):
    shutil.rmtree(dataset / "test")
    with pytest.raises(DataError, match="no test/ folder"):
        scan(dataset)


def test_single_folder_is_split_stratified_and_reproducibly(tmp_path):
    root = make_dataset(tmp_path / "pool", counts=(20, 0, 0)) / "train"
    first, second = scan(root, seed=7), scan(root, seed=7)
    assert first.layout.startswith("single folder")
    assert [first.counts(s) for s in ("train", "valid", "test")] == [[16] * 3, [2] * 3, [2] * 3]
    assert [s.path for s in first.splits["test"]] == [s.path for s in second.splits["test"]]
    assert [s.path for s in scan(root, seed=8).splits["test"]] != [s.path for s in first.splits["test"]]
    every = [s.path for split in first.splits.values() for s in split]
    assert len(every) == len(set(every)) == 60


def test_a_single_class_stops_the_run(tmp_path):
    root = make_dataset(tmp_path / "one", counts=(3, 1, 1), classes={"red circle": (220, 40, 40)})
    with pytest.raises(DataError, match="only one class \\('red circle'\\); a classifier needs at least two"):
        scan(root)


def test_single_folder_too_small_for_its_split_names_the_class(tmp_path):
    root = make_dataset(tmp_path / "pool", counts=(10, 0, 0)) / "train"
    (root / "green square" / "9.jpg").unlink()
    with pytest.raises(DataError, match="'green square' has 9 usable image\\(s\\); at this split each class needs at least 10"):
        scan(root)
    found = scan(root, split=(0.5, 0.25, 0.25))  # a wider valid+test share needs only 4 a class
    assert all(min(found.counts(split)) >= 1 for split in ("train", "valid", "test"))


def test_fingerprint_follows_content(dataset):
    before = scan(dataset).fingerprint()
    assert scan(dataset).fingerprint() == before
    image = dataset / "train" / "red circle" / "0.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    assert scan(dataset).fingerprint() != before


def test_check_data_command(dataset):
    result = run_cli("check-data", str(dataset))
    assert result.returncode == 0 and "3 classes" in result.stdout
    shutil.rmtree(dataset / "valid" / "red circle")
    result = run_cli("check-data", str(dataset))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "missing here: red circle" in result.stderr
    assert "Traceback" not in result.stderr
    missing = run_cli("check-data", str(dataset / "nope"))
    assert missing.returncode == 2 and "no such dataset folder" in missing.stderr
