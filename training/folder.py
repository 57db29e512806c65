"""Stage 1: read an image folder, check every file, and say what is in it before any training.

Two layouts are accepted:
- `train/`, `valid/` (or `val/`, `validation/`) and `test/`, each holding one folder per class
  (the classic "ImageDataGenerator folders");
- a single folder of class folders, split here into train/valid/test: stratified and seeded,
  so the same command always makes the same split.

Every image is opened with `imaging`, the decoder the models are trained and served with, so a
file that passes here is a file training can read. Problems are sorted by what they cost:
undecodable files are skipped and named, non-RGB images are converted and counted, hidden and
non-image files are ignored, duplicates across splits are warned about (leakage), and fewer than
two classes, classes that are empty or differ between splits, or a single folder too small for
its split (every class must reach train, valid and test) stop the run (`DataError`).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from runtime import imaging

SPLITS = ("train", "valid", "test")
SPLIT_FOLDERS = {"train": ("train",), "valid": ("valid", "val", "validation"), "test": ("test",)}


class DataError(ValueError):
    """A dataset that cannot be trained on; the message names the folder and the problem."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    md5: str


@dataclass
class ImageFolder:
    """The usable images of each split, with what the checks found along the way."""

    root: Path
    classes: list[str]
    splits: dict[str, list[Sample]]
    layout: str  # "splits" or "single folder (split here)"
    skipped: list[str] = field(default_factory=list)  # "path: why", undecodable
    converted: Counter = field(default_factory=Counter)  # Pillow mode -> count, non-RGB
    ignored: list[str] = field(default_factory=list)  # hidden or non-image files
    duplicates: list[list[str]] = field(default_factory=list)  # identical files across splits

    def fingerprint(self, split: str | None = None) -> str:
        """A content hash of the dataset (or one split): same files, labels and bytes, same hash."""
        digest = hashlib.sha256()
        for name in [split] if split else SPLITS:
            for sample in self.splits[name]:
                digest.update(f"{name}/{self.classes[sample.label]}/{sample.md5}\n".encode())
        return digest.hexdigest()[:16]

    def counts(self, split: str) -> list[int]:
        counter = Counter(sample.label for sample in self.splits[split])
        return [counter[index] for index in range(len(self.classes))]

    def report(self) -> str:
        """A short human-readable report of the checks."""
        lines = [f"Dataset {self.root} ({self.layout}): {len(self.classes)} classes"]
        for split in SPLITS:
            counts = self.counts(split)
            lines.append(
                f"  {split:5}: {sum(counts):6} images, {min(counts)}-{max(counts)} per class"
            )
        train = self.counts("train")
        ratio = max(train) / max(min(train), 1)
        smallest = self.classes[train.index(min(train))]
        lines.append(f"  class imbalance (train): {ratio:.1f}x between largest and smallest ({smallest})")
        if self.converted:
            modes = ", ".join(f"{count} {mode}" for mode, count in sorted(self.converted.items()))
            lines.append(f"  converted to RGB: {modes}")
        if self.ignored:
            lines.append(f"  ignored {len(self.ignored)} hidden or non-image files, e.g. {self.ignored[0]}")
        for problem in self.skipped:
            lines.append(f"  skipped (cannot decode): {problem}")
        for group in self.duplicates:
            lines.append(f"  warning: identical files in several splits (leakage): {', '.join(group)}")
        return "\n".join(lines)


def find_splits(root: Path) -> dict[str, Path] | None:
    """The split folders under `root`, or None if `root` is a single folder of class folders."""
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
                break
    if not found:
        return None
    missing = [split for split in SPLITS if split not in found]
    if missing:
        raise DataError(f"{root}: has {', '.join(p.name + '/' for p in found.values())} but no "
                        f"{' or '.join(SPLIT_FOLDERS[missing[0]])}/ folder")
    return found


def list_images(folder: Path, ignored: list[str]) -> dict[str, list[Path]]:
    """Class name -> image files in `folder`'s class folders; other files go to `ignored`."""
    classes: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            ignored.append(str(entry))
            continue
        files = []
        for path in sorted(entry.rglob("*")):
            if not path.is_file():
                continue
            hidden = any(part.startswith(".") for part in path.relative_to(entry).parts)
            if hidden or path.suffix.lower() not in imaging.IMAGE_EXTENSIONS:
                ignored.append(str(path))
            else:
                files.append(path)
        classes[entry.name] = files
    return classes


def check_file(path: Path) -> tuple[str, str | None, str]:
    """(md5 of the bytes, error or None, Pillow mode) for one file, decoding it fully."""
    data = path.read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    try:
        imaging.open_rgb(data, name=str(path))
    except imaging.ImageError as error:
        return md5, str(error), ""
    with Image.open(path) as image:
        return md5, None, image.mode


def scan(root: str | Path, seed: int = 1337, split: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> ImageFolder:
    """Check every file under `root` and return the usable images of each split."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset folder")
    ignored: list[str] = []
    folders = find_splits(root)
    listed = {s: list_images(p, ignored) for s, p in folders.items()} if folders else {"all": list_images(root, ignored)}

    names = {split_name: set(classes) for split_name, classes in listed.items()}
    all_classes = sorted(set().union(*names.values()))
    if not all_classes:
        raise DataError(f"{root}: no class folders found (expected one folder of images per class)")
    if len(all_classes) < 2:
        raise DataError(f"{root}: only one class ({all_classes[0]!r}); a classifier needs at least two class folders")
    for split_name, present in names.items():
        if present != set(all_classes):
            missing = sorted(set(all_classes) - present)
            raise DataError(f"{folders[split_name]}: classes differ between splits; missing "
                            f"here: {', '.join(missing)}")

    paths = [p for classes in listed.values() for files in classes.values() for p in files]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = dict(zip(paths, pool.map(check_file, paths)))

    dataset = ImageFolder(root, all_classes, {}, "splits" if folders else "single folder (split here)", ignored=ignored)
    by_md5: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    usable: dict[str, list[Sample]] = {}
    for split_name, classes in listed.items():
        usable[split_name] = []
        for class_name, files in classes.items():
            good = 0
            for path in files:
                md5, error, mode = results[path]
                if error:
                    dataset.skipped.append(error)
                    continue
                if mode != "RGB":
                    dataset.converted[mode] += 1
                by_md5[md5].append((split_name, path))
                usable[split_name].append(Sample(path, all_classes.index(class_name), md5))
                good += 1
            if good == 0:
                where = folders[split_name] / class_name if folders else root / class_name
                raise DataError(f"{where}: class {class_name!r} has no usable images")

    dataset.splits = usable if folders else split_pool(root, all_classes, usable["all"], seed, split)
    dataset.duplicates = [
        [str(path) for _, path in copies]
        for copies in by_md5.values()
        if len({split_name for split_name, _ in copies}) > 1
    ]
    return dataset


def split_pool(root: Path, classes: list[str], samples: list[Sample], seed: int,
               fractions: tuple[float, float, float]) -> dict[str, list[Sample]]:
    """The stratified split of a single folder, refused unless every class lands in every split:
    a class missing from valid or test would be trained on but never measured."""
    where = f"{root}: split {'/'.join(f'{f:g}' for f in fractions)} into train/valid/test"
    # Stratifying puts a class's share of valid+test aside first, then splits that share again:
    # it takes two images there, one each for valid and test.
    needed = max(len(SPLITS), math.ceil(round(2 / (fractions[1] + fractions[2]), 6)))
    counts = Counter(sample.label for sample in samples)
    for index, name in enumerate(classes):
        if counts[index] < needed:
            raise DataError(f"{where}: class {name!r} has {counts[index]} usable image(s); at this split each "
                            f"class needs at least {needed}, to give valid and test one each")
    try:
        splits = stratified_split(samples, seed, fractions)
    except ValueError as error:  # scikit-learn's reason, e.g. fewer test images than classes
        raise DataError(f"{where} impossible: {error}") from None
    for index, name in enumerate(classes):
        missing = [split for split in SPLITS if not any(s.label == index for s in splits[split])]
        if missing:
            raise DataError(f"{where}: class {name!r} has too few images ({counts[index]}) to appear in "
                            f"{' and '.join(missing)}; add images or change split")
    return splits


def stratified_split(samples: list[Sample], seed: int, fractions: tuple[float, float, float]) -> dict[str, list[Sample]]:
    """Split one pool of samples into train/valid/test with each class in the same proportions."""
    # Imported here: it brings SciPy, over a second to start, which only this layout needs.
    from sklearn.model_selection import train_test_split

    labels = [sample.label for sample in samples]
    train, rest = train_test_split(samples, train_size=fractions[0], stratify=labels, random_state=seed)
    valid, test = train_test_split(
        rest, train_size=fractions[1] / (fractions[1] + fractions[2]), stratify=[s.label for s in rest], random_state=seed,
    )
    return {name: sorted(part, key=lambda s: str(s.path)) for name, part in zip(SPLITS, (train, valid, test))}
