"""The real thing, small: offline ImageNet MobileNet 0.25 on a subset of butterflies50.

The subset is a folder of symbolic links to the shared dataset (read in place, never copied).
"""

from __future__ import annotations

import pytest
from shapes import BUTTERFLIES, WEIGHTS

from training.config import Config
from training.runner import compare

CLASSES = 10
TRAIN_PER_CLASS = 30

pytestmark = pytest.mark.skipif(
    not (BUTTERFLIES.is_dir() and (WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5").is_file()),
    reason="needs ../shared/datasets/butterflies50 and ../shared/weights (present in CI)",
)


def subset(root, tmp_path):
    """The first CLASSES species, TRAIN_PER_CLASS training images each, all valid/test images."""
    classes = sorted(p.name for p in (root / "train").iterdir())[:CLASSES]
    for split in ("train", "valid", "test"):
        for name in classes:
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            files = sorted((root / split / name).iterdir())
            for file in files[:TRAIN_PER_CLASS] if split == "train" else files:
                (folder / file.name).symlink_to(file)
    return tmp_path


@pytest.mark.heavy
def test_imagenet_mobilenet_learns_butterflies(tmp_path):
    data = subset(BUTTERFLIES, tmp_path / "data")
    config = Config(data=str(data), run="subset", output_dir=str(tmp_path / "runs"),
                    cache_dir=str(tmp_path / "cache"), backbones=["mobilenet:0.25"],
                    weights_dir=str(WEIGHTS), fine_tune_epochs=1)  # phase 2 runs; one epoch shows it
    [row] = compare(config)
    assert row["top1"] >= 0.8, row  # chance is 0.1
    assert row["top5"] >= 0.95, row
