"""Field photos and unknown species: how a butterflies50 model does where visitors' photos are.

Run from the repository root: `nice -n 5 .venv/bin/python bench/field.py` (`make bench` runs it
after bench/train_compare.py, whose cold run's models it measures by default; up to an hour on 2
busy cores the first time; features are cached under bench/results/field, git-ignored, so a
rerun takes minutes). It records its section of docs/BENCHMARKS.md (`--no-record` to skip).

What it measures, per model (a trained backbone folder with model.keras, or frozen ImageNet
features with a linear head fitted here, as the cheap pilot of docs/BENCHMARKS.md), with and
without the second look (`runtime.second_look`):

- butterflies50 test top-1, and the expected calibration error of the probabilities the app shows
  (both passes) before and after temperature scaling (`training.calibration`, temperature fitted
  on the validation split as the app sees it);
- unknown-species scores (`training.unknown`): AUROC and FPR at 95% TPR by leave-species-out
  (5 folds of 10 held-out classes, on train + valid: a head is refitted on the 40 kept classes'
  pooled features), on leeds-field's four unknown species against its six known ones, and on
  background crops of leeds-field (a square of each photo without its butterfly, by its mask):
  photos of no butterfly at all;
- what the app serves (`training.trust`): max-softmax+kNN and its "not sure" threshold, the
  model card's for a trained model (trust.json), else the one the trust step would set (the
  median over folds of the threshold keeping 95% of known validation images): never chosen on
  test or leeds-field. With the second look, every score is that of the better look (the higher
  of the whole photo's and the crop's, as the app scores: `runtime.answer.photo_score`); beside
  it, for comparison, max-softmax alone at its own held-out threshold, and the served score as
  the app read it before: of the whole photo only, and on both passes (logits and kNN averaged);
- leeds-field known top-1, heatmap-in-mask rate (the share of photos whose top class map,
  upsampled to the photo, peaks inside its butterfly mask), and at the threshold: the share of
  known photos answered, the accuracy of those answers, the share of unknown ones answered
  "not sure", and the share of butterflies50's test images answered (clean photos of known
  species, which the threshold should answer about 95% of); latency per photo (decode + LiteRT
  passes, median);
- with `--study`, the augmentation study: a linear head on frozen features of butterflies50
  train plus one view per recipe of `training.field_augment` (of 30 images per class; the
  promising ones again of every image), same seed, on test and leeds-field.

leeds-field is only ever measured, never trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sections  # bench/sections.py: this script's folder is first on sys.path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime import imaging, second_look  # noqa: E402
from runtime.answer import knn  # noqa: E402
from training import calibration, unknown  # noqa: E402
from training.config import ConfigError, load_config  # noqa: E402  (no TensorFlow until a model is built)
from training.field import at_threshold  # noqa: E402
from training.field import read as read_field_set  # noqa: E402
from training.field_augment import field_view  # noqa: E402
from training.folder import scan  # noqa: E402

CONFIG = Path("configs/butterflies50.toml")
FIELD = Path("../shared/datasets/leeds-field")
WORK = Path("bench/results/field")
TRAINED = Path("bench/results/cold")  # the default recipe's run that `make bench` trains (bench/train_compare.py)
FROZEN = "mobilenetv2:0.5"  # the pilot of FACTS: frozen ImageNet features + a linear head
RECIPES = ["affine", "zoom_out", "crop", "colour", "field"]  # one augmented view each in the study
VIEW_PER_CLASS = 30  # the study's views are of this many training images per class (its CPU budget)...
ALL_IMAGES = ["zoom_out", "field"]  # ...except these recipes, measured again with a view of every training image
SEED = 1337
BACKGROUND_SIDES = (0.6, 0.5, 0.4, 1 / 3)  # background crops: sides tried, as shares of the photo's short side...
BACKGROUND_MAX_MASK = 0.01  # ...with under 1% of the crop in the butterfly's mask
FOLDS, HELD_OUT = 5, 10
BANK_PER_CLASS = unknown.BANK_PER_CLASS
BANK_SIZES = (20, 50, None)  # feature banks compared on held-out species: images per class (None: every one)
SERVED_SCORE = "+".join(unknown.COMBINED)  # what the app serves (`training.trust.SERVED_SCORE`, which needs Keras to import)
BESIDE = "max_softmax"  # the score served before max-softmax+kNN, measured at its own held-out threshold too
WHOLE_PHOTO = f"{SERVED_SCORE} of the whole photo"  # the served score as the app read it before the better look
BOTH_PASSES = f"{SERVED_SCORE} on both passes"  # the served score as the app read it before the whole photo only
SERVED_BEFORE = (WHOLE_PHOTO, BOTH_PASSES)  # measured with the second look only
EVALUATED_FORMAT = "11"  # what a kept result was measured by; 2: the second look averages logits, as the app does;
# 3: a second score at its threshold too; 4: those shares by `training.field.at_threshold`; 5: max-softmax+kNN
# served, and the background crops; 6: the kNN's time; 7: with the bank held as float32, as the app holds it;
# 8: scores of the whole photo, temperature on both passes, test and validation images as the app sees them;
# 9: the served score on held-out species by feature bank size; 10: the served score of the better look;
# 11: with the second look, every score of the better look, as the app scores


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- Data -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldPhoto:
    path: Path
    mask: Path
    label: int  # the butterflies50 class, or -1 (`training.field.UNKNOWN`) for a species butterflies50 does not have


def field_photos(root: Path, classes: list[str]) -> list[FieldPhoto]:
    """leeds-field's photos (images/, labelled through mapping.json by `training.field`, as
    `compare --field-data --field-map` reads them) with their masks."""
    try:
        field_set = read_field_set(root / "images", root / "mapping.json", classes)
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    return [FieldPhoto(photo.path, (root / "masks" / photo.path.relative_to(field_set.folder)).with_suffix(".png"), photo.label)
            for photo in field_set.photos]


@dataclass
class Split:
    paths: list[Path]
    labels: np.ndarray


def butterflies(config_path: Path, limit: int | None) -> tuple[list[str], dict[str, Split]]:
    """The classes and splits of the training data named by the config (at most `limit` per class)."""
    folder = scan(load_config(config_path, {}).data)
    splits = {}
    for name, samples in folder.splits.items():
        if limit is not None:
            samples = [s for s in samples if sum(t.label == s.label for t in samples[:samples.index(s)]) < limit]
        splits[name] = Split([s.path for s in samples], np.array([s.label for s in samples]))
    return folder.classes, splits


# --- Models: a feature-map extractor and a linear head -------------------------------------------


@dataclass
class Model:
    """What the bench runs: pixels -> (h, w, channels) feature map, and (for a trained model) its head."""

    name: str
    key: str  # names its cache folder
    size: int
    feature_map: Callable[[np.ndarray], np.ndarray]
    head: unknown.LinearHead | None = None  # None: frozen features, a head is fitted here
    threshold: float | None = None  # a trained model's "not sure" threshold (trust.json); None: set here
    served: unknown.Scorer | None = None  # a trained model's served temperature, bank and ranks; None: fitted here
    served_key: str = ""  # names what `served` and `threshold` were read from (a trust step redone measures again)
    notes: list[str] = field(default_factory=list)


def litert_feature_map(keras_model, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """`keras_model` (pixels -> {"feature_map"}) run through LiteRT, as the app runs models."""
    from runtime.litert import LiteRTModel
    from training.artifacts import atomic_path
    from training.model import to_litert

    if not path.is_file():
        with atomic_path(path) as temporary:
            to_litert(keras_model, temporary)
    model = LiteRTModel(path, ["feature_map"], num_threads=2)
    return lambda pixels: model(pixels)["feature_map"]


def frozen_model(spec: str, weights_dir: Path) -> Model:
    """An ImageNet backbone's feature map (offline weights from `weights_dir`), head fitted later."""
    import keras

    from training.backbones import build_base, parse_variant, preprocessing_layers

    variant = parse_variant(spec)
    inputs = keras.Input((variant.size, variant.size, 3))
    x = preprocessing_layers(variant.backbone.preprocessing)(inputs)
    x = build_base(variant, weights_dir / variant.weights_file)(x, training=False)
    key = f"frozen-{variant.id}"
    path = WORK / "cache" / key / "feature_map.tflite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return Model(f"{variant.id} frozen ImageNet + linear head", key, variant.size,
                 litert_feature_map(keras.Model(inputs, {"feature_map": x}), path))


def trained_model(folder: Path, classes: list[str]) -> Model:
    """A trained backbone folder's classifier (model.keras): its backbone's feature map and its head."""
    import keras

    from training.trust import served_head

    labels = json.loads((folder / "labels.json").read_text(encoding="utf-8"))
    labels = labels["classes"] if isinstance(labels, dict) else labels
    if labels != classes:
        raise SystemExit(f"{folder}/labels.json: its classes differ from the training data's")
    classifier = keras.saving.load_model(folder / "model.keras", compile=False)
    inputs = keras.Input(classifier.input.shape[1:])
    x = classifier.get_layer("backbone")(classifier.get_layer("preprocess")(inputs), training=False)
    digest = hashlib.md5((folder / "model.keras").read_bytes()).hexdigest()[:10]
    key = f"trained-{folder.name}-{digest}"
    path = WORK / "cache" / key / "feature_map.tflite"
    path.parent.mkdir(parents=True, exist_ok=True)
    trust = json.loads((folder / "trust.json").read_text(encoding="utf-8"))
    head = served_head(classifier)  # capped at its ReAct ceiling, as the exported model's head reads
    served_key = hashlib.md5((folder / "trust.json").read_bytes() + (folder / "feature_bank.npy").read_bytes()).hexdigest()[:10]
    return Model(f"{folder.name} fine-tuned ({folder.parent.name} run)", key, int(inputs.shape[1]),
                 litert_feature_map(keras.Model(inputs, {"feature_map": x}), path), head, trust["threshold"],
                 served_scorer(folder, trust, head), served_key)


def served_scorer(folder: Path, trust: dict, head: unknown.LinearHead) -> unknown.Scorer | None:
    """What the trust step saved for the app to score with (temperature, feature bank, ranks), as a
    Scorer; None for a model trained before it served max-softmax+kNN."""
    if trust["score"] != SERVED_SCORE:
        return None
    ranks = unknown.RankCombination({name: np.array(quantiles) for name, quantiles in trust["ranks"].items()})
    bank = unknown.FeatureBank(np.load(folder / "feature_bank.npy"), trust["k"])
    return unknown.Scorer(head, trust["temperature"], bank, None, ranks)


# --- Features, cached ------------------------------------------------------------------------------


def cached(path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The array saved at `path`, or computed and saved there (atomically)."""
    from training.artifacts import atomic_path

    if path.is_file():
        return np.load(path)
    array = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.save(file, array)
    return array


def files_key(paths: list[Path]) -> str:
    return hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:10]


def pooled_features(model: Model, images: Callable[[int], np.ndarray], count: int, what: str) -> np.ndarray:
    """The pooled (global-average) features of `count` images, float16."""
    result = None
    start = time.perf_counter()
    for index in range(count):
        pooled = model.feature_map(images(index)).mean(axis=(0, 1))
        if result is None:
            result = np.empty((count, pooled.shape[-1]), dtype=np.float16)
        result[index] = pooled
        if (index + 1) % 1000 == 0:
            log(f"    {what}: {index + 1}/{count} ({time.perf_counter() - start:.0f} s)")
    return result


def split_features(model: Model, split: Split, name: str) -> np.ndarray:
    size = (model.size, model.size)
    return cached(WORK / "cache" / model.key / f"{name}-{files_key(split.paths)}.npy",
                  lambda: pooled_features(model, lambda i: imaging.load_pixels(split.paths[i], size), len(split.paths), name))


def augmented_images(paths: list[Path], size: int, recipe: str, seed: int) -> Callable[[int], np.ndarray]:
    """Image i of the training split in one augmented view: deterministic in (seed, i)."""
    if recipe == "affine":  # the pipeline's current augmentation (training.dataset), for comparison
        from training.config import Config
        from training.dataset import augmentation

        layers = augmentation(Config(), seed)
        return lambda i: np.asarray(layers(imaging.load_pixels(paths[i], (size, size))[None].astype("float32"), index=i)[0])

    def view(i: int) -> np.ndarray:
        rng = np.random.default_rng([seed, i])
        other = int(rng.integers(len(paths) - 1))
        other += other >= i  # any training image but this one
        load = imaging.load_pixels
        return field_view(load(paths[i], (size, size)), load(paths[other], (size, size)), rng, recipe)

    return view


def view_subset(split: Split, per_class: int | None) -> Split:
    """The first `per_class` training images of each class (None: all), which a view is made of."""
    keep = np.concatenate([np.flatnonzero(split.labels == c)[:per_class] for c in np.unique(split.labels)])
    keep.sort()
    return Split([split.paths[i] for i in keep], split.labels[keep])


def view_features(model: Model, split: Split, recipe: str, per_class: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and labels of one augmented view of `view_subset(split, per_class)`."""
    subset, seed = view_subset(split, per_class), SEED
    images = augmented_images(subset.paths, model.size, recipe, seed)
    features = cached(WORK / "cache" / model.key / f"train-{recipe}-{seed}-{files_key(subset.paths)}.npy",
                      lambda: pooled_features(model, images, len(subset.paths), f"train view {recipe}"))
    return features, subset.labels


def field_first_pass(model: Model, photos: list[FieldPhoto]) -> np.ndarray:
    """Pooled features of the field photos as `imaging.load_pixels` gives them (the study's input)."""
    paths = [photo.path for photo in photos]
    return cached(WORK / "cache" / model.key / f"field-{files_key(paths)}.npy",
                  lambda: pooled_features(model, lambda i: imaging.load_pixels(paths[i], (model.size, model.size)),
                                          len(paths), "field photos"))


# --- The augmentation study -----------------------------------------------------------------------


def augmented_head(model: Model, split: Split, train: np.ndarray, recipe: str,
                   per_class: int | None = None) -> unknown.LinearHead:
    """A head fitted on the plain training features plus one `recipe` view of `per_class`
    images per class (None: all; "plain": no view)."""
    if recipe == "plain":
        return unknown.fit_linear_head(train, split.labels)
    views, labels = view_features(model, split, recipe, per_class)
    return unknown.fit_linear_head(np.concatenate([train, views]), np.concatenate([split.labels, labels]))


def study(model: Model, splits: dict[str, Split], photos: list[FieldPhoto]) -> list[dict]:
    """Heads on plain training features plus one view of each recipe: test and field top-1
    (kept in bench/results/field/evaluated, as `evaluate` keeps its results)."""
    path = WORK / "evaluated" / f"study-{model.key}-{files_key([p.path for p in photos])}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    rows = measure_study(model, splits, photos)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows), encoding="utf-8")
    return rows


def measure_study(model: Model, splits: dict[str, Split], photos: list[FieldPhoto]) -> list[dict]:
    train = split_features(model, splits["train"], "train")
    test = split_features(model, splits["test"], "test")
    field_pooled = field_first_pass(model, photos)
    field_labels = np.array([photo.label for photo in photos])
    known = field_labels >= 0
    rows = []
    for recipe, per_class in [("plain", None), *((r, VIEW_PER_CLASS) for r in RECIPES), *((r, None) for r in ALL_IMAGES)]:
        log(f"  head on plain + {recipe} ({per_class or 'all'} per class)")
        head = augmented_head(model, splits["train"], train, recipe, per_class)
        rows.append({
            "recipe": recipe, "views": "none" if recipe == "plain" else f"{per_class} per class" if per_class else "every image",
            "test_top1": float(np.mean(head.logits(test).argmax(1) == splits["test"].labels)),
            "field_top1": float(np.mean(head.logits(field_pooled[known]).argmax(1) == field_labels[known])),
        })
        log(f"    {rows[-1]}")
    return rows


# --- Unknown scores -------------------------------------------------------------------------------


# --- One model on the field photos ----------------------------------------------------------------


def predictor(model: Model, head: unknown.LinearHead, timings: list[float]) -> second_look.Predict:
    """The model as the app runs its export: pixels in, probabilities, class maps, logits and
    pooled features out, each call's time appended to `timings`."""
    def predict(pixels: np.ndarray) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        feature_map = model.feature_map(pixels)
        pooled = feature_map.mean(axis=(0, 1))
        logits = head.logits(pooled)
        outputs = {"probabilities": calibration.scaled_probabilities(logits), "class_maps": head.class_maps(feature_map),
                   "logits": logits, "pooled": pooled}
        timings.append(time.perf_counter() - start)
        return outputs

    return predict


def split_looks(model: Model, head: unknown.LinearHead, split: Split) -> dict[str, list]:
    """A butterflies50 split's images as the app sees an upload: the whole image and the crop's pass."""
    size, predict = (model.size, model.size), predictor(model, head, [])
    looks = [second_look.look(second_look.decode(path, size), predict, size) for path in split.paths]
    return {"full": [look.full for look in looks], "second": [look.crop or look.full for look in looks]}


def field_pass(model: Model, head: unknown.LinearHead, photos: list[FieldPhoto]) -> dict[str, np.ndarray | list]:
    """Every field photo through `second_look.look`: passes, peaks in masks, timings, backgrounds."""
    from PIL import Image

    size = (model.size, model.size)
    timings: list[float] = []
    predict = predictor(model, head, timings)
    results: dict[str, list] = {key: [] for key in ("full", "second", "in_mask", "cropped", "first_s", "total_s",
                                                    "background_full", "background_second")}
    for index, photo in enumerate(photos):
        timings.clear()
        start = time.perf_counter()
        image = second_look.decode(photo.path, size)
        decoded = time.perf_counter()
        look = second_look.look(image, predict, size)
        results["total_s"].append(time.perf_counter() - start)
        results["first_s"].append(decoded - start + timings[0])
        results["full"].append(look.full)
        results["second"].append(look.crop or look.full)
        results["cropped"].append(look.crop is not None)
        mask = np.asarray(Image.open(photo.mask).convert("1").resize(image.size, Image.Resampling.NEAREST))
        x, y = second_look.peak(look.full["class_maps"][..., int(np.argmax(look.full["probabilities"]))], image.size)
        results["in_mask"].append(bool(mask[y, x]))
        if (box := background_box(mask)) is not None:
            background = second_look.look(image.crop(box), predict, size)
            results["background_full"].append(background.full)
            results["background_second"].append(background.crop or background.full)
        if (index + 1) % 200 == 0:
            log(f"    field photos: {index + 1}/{len(photos)}")
    return results


def knn_ms(bank: unknown.FeatureBank, passes: dict[str, list]) -> float:
    """The median time of the served score's kNN for one pass (the whole photo's features against
    the bank, held as float32 as the app holds it: `runtime.model_folder.read_bank`), in ms."""
    held, timings = bank.features.astype(np.float32), []
    for full in passes["full"]:
        start = time.perf_counter()
        knn(full["pooled"], held, bank.k)
        timings.append(time.perf_counter() - start)
    return float(np.median(timings) * 1000)


def background_box(mask: np.ndarray) -> second_look.Box | None:
    """A square of the photo without its butterfly (under 1% of it in the mask): the largest of
    60%, 50%, 40% or a third of the short side, on a 5x5 grid of positions; None if there is none.
    Grass, flowers and leaves as a visitor's photo shows them: what a photo of "no butterfly"
    looks like to the model, which should answer "not sure"."""
    height, width = mask.shape
    inside = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table
    for share in BACKGROUND_SIDES:
        side = int(share * min(width, height))
        for top in np.linspace(0, height - side, 5).astype(int):
            for left in np.linspace(0, width - side, 5).astype(int):
                covered = (inside[top + side, left + side] - inside[top, left + side] - inside[top + side, left]
                           + inside[top, left]) / side ** 2
                if covered < BACKGROUND_MAX_MASK:
                    return int(left), int(top), int(left + side), int(top + side)
    return None


def stacked(passes: list[dict], name: str) -> np.ndarray:
    return np.stack([outputs[name] for outputs in passes])


def look_scores(scorer: unknown.Scorer, full: list[dict], second: list[dict] | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Answers and scores without (second=None) or with the second look, as the app gives them.

    Without it, both read the whole photo's pass. With it, the answer reads the two passes'
    averaged logits (`runtime.answer.logits`) and every score is that of the better look, the
    higher of the two passes' (`runtime.answer.photo_score`). Beside them, the served score as
    the app read it before: WHOLE_PHOTO, the whole photo's pass alone, and BOTH_PASSES, the
    averaged logits' max-softmax and the passes' mean kNN, ranked.
    """
    logits, pooled = stacked(full, "logits"), stacked(full, "pooled")
    scores = scorer.scores(pooled, logits)
    if second is None:
        return logits.argmax(1), scores
    crop_logits, crop_pooled = stacked(second, "logits"), stacked(second, "pooled")
    crop = scorer.scores(crop_pooled, crop_logits)
    better = {name: np.maximum(scores[name], crop[name]) for name in scores}
    averaged = (logits + crop_logits) / 2
    both = scorer.singles(pooled, averaged)
    both["knn"] = (both["knn"] + scorer.bank.score(crop_pooled)) / 2
    return averaged.argmax(1), {**better, WHOLE_PHOTO: scores[SERVED_SCORE], BOTH_PASSES: scorer.combination.score(both)}


def as_trust_step(scorer: unknown.Scorer, valid: dict[str, list], labels: np.ndarray) -> None:
    """A frozen pilot's temperature and ranks set as `training.trust.measure` sets a trained model's:
    the temperature on the validation images' averaged passes, the ranks on their whole images."""
    averaged = (stacked(valid["full"], "logits") + stacked(valid["second"], "logits")) / 2
    scorer.temperature = calibration.fit_temperature(averaged, labels)
    singles = scorer.singles(stacked(valid["full"], "pooled"), stacked(valid["full"], "logits"))
    scorer.combination = unknown.RankCombination.fit({name: singles[name] for name in unknown.COMBINED})


def evaluate(model: Model, head: unknown.LinearHead, splits: dict[str, Split], photos: list[FieldPhoto], label: str) -> dict:
    """Everything of the module doc for one model and head (kept in bench/results/field/evaluated:
    a rerun that adds a model does not measure the others again)."""
    digest = hashlib.sha256(head.weights.tobytes() + "".join(str(p.path) for p in photos).encode()
                            + EVALUATED_FORMAT.encode() + model.served_key.encode()).hexdigest()[:12]
    path = WORK / "evaluated" / f"{model.key}-{digest}.json"
    if path.is_file():
        return {**json.loads(path.read_text(encoding="utf-8")), "model": label}
    result = measure(model, head, splits, photos, label)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result), encoding="utf-8")
    return result


def measure(model: Model, head: unknown.LinearHead, splits: dict[str, Split], photos: list[FieldPhoto], label: str) -> dict:
    log(f"evaluating {label}")
    train = (split_features(model, splits["train"], "train"), splits["train"].labels)
    valid = (split_features(model, splits["valid"], "valid"), splits["valid"].labels)
    log("  validation and test images as the app sees them")
    looks = {name: split_looks(model, head, splits[name]) for name in ("valid", "test")}
    scorer = unknown.Scorer.fit(head, train, valid, BANK_PER_CLASS)
    if model.served is None:
        as_trust_step(scorer, looks["valid"], valid[1])
    else:  # score as the app does: the trust step's temperature, bank and ranks
        scorer.temperature, scorer.bank, scorer.combination = (model.served.temperature, model.served.bank,
                                                               model.served.combination)
    test_labels = splits["test"].labels
    test_answers, test_scores = {}, {}
    for look_name, second in (("first", None), ("second", looks["test"]["second"])):
        test_answers[look_name], test_scores[look_name] = look_scores(scorer, looks["test"]["full"], second)
    shown = (stacked(looks["test"]["full"], "logits") + stacked(looks["test"]["second"], "logits")) / 2
    result = {
        "model": label, "temperature": scorer.temperature,
        "test_top1": {name: float(np.mean(answers == test_labels)) for name, answers in test_answers.items()},
        # The probabilities a visitor is shown: both passes, before and after the temperature.
        "ece_before": calibration.expected_calibration_error(calibration.scaled_probabilities(shown), test_labels),
        "ece_after": calibration.expected_calibration_error(
            calibration.scaled_probabilities(shown, scorer.temperature), test_labels),
    }
    log("  leave-species-out")
    result["species_out"] = unknown.summarise(unknown.held_out_species(train, valid, HELD_OUT, FOLDS, SEED, BANK_PER_CLASS))
    result["bank_sizes"] = {str(size): unknown.summarise(unknown.held_out_species(
        train, valid, HELD_OUT, FOLDS, SEED, size))[SERVED_SCORE] for size in BANK_SIZES}
    result["threshold"] = (result["species_out"][SERVED_SCORE]["threshold"] if model.threshold is None else model.threshold)
    thresholds = {SERVED_SCORE: result["threshold"], **dict.fromkeys(SERVED_BEFORE, result["threshold"]),
                  BESIDE: result["species_out"][BESIDE]["threshold"]}
    log("  field photos")
    passes = field_pass(model, head, photos)
    labels = np.array([photo.label for photo in photos])
    known = labels >= 0
    result["backgrounds"] = len(passes["background_full"])
    for look_name, second in (("first", None), ("second", passes["second"])):
        answers, scores = look_scores(scorer, passes["full"], second)
        _, background = look_scores(scorer, passes["background_full"], None if second is None else passes["background_second"])
        tested = test_scores[look_name]
        result[look_name] = {
            "field_top1": float(np.mean(answers[known] == labels[known])),
            "unknown": {name: {"auroc": unknown.auroc(s[known], s[~known]), "fpr95": unknown.fpr_at_tpr(s[known], s[~known])}
                        for name, s in scores.items()},
            "unknown_vs_test": {name: {"auroc": unknown.auroc(tested[name], s[~known]),
                                       "fpr95": unknown.fpr_at_tpr(tested[name], s[~known])} for name, s in scores.items()},
            "background": {name: {"auroc": unknown.auroc(s[known], background[name]),
                                  "fpr95": unknown.fpr_at_tpr(s[known], background[name])} for name, s in scores.items()},
            "at_threshold": {name: {**at_threshold(scores[name] >= threshold, answers == labels, known),
                                    "test_answered": float(np.mean(tested[name] >= threshold)),
                                    "background_not_sure": float(np.mean(background[name] < threshold))}
                             for name, threshold in thresholds.items() if name in scores},
        }
    result["in_mask"] = float(np.mean(passes["in_mask"]))
    result["cropped"] = float(np.mean(passes["cropped"]))
    result["first_ms"] = float(np.median(passes["first_s"]) * 1000)
    result["total_ms"] = float(np.median(passes["total_s"]) * 1000)
    result["knn_ms"] = knn_ms(scorer.bank, passes)
    channels = train[0].shape[1]
    result["bank_mb"] = BANK_PER_CLASS * len(np.unique(train[1])) * channels * 2 / 1e6
    log(f"  {json.dumps({k: v for k, v in result.items() if k not in ('species_out',)}, default=str)[:600]}")
    return result


# --- Report ---------------------------------------------------------------------------------------


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def report(study_rows: list[dict], results: list[dict], command: str) -> str:
    lines = ["## Field photos and unknown species (`bench/field.py`)\n",
             f"Reproduce: `{command}`. leeds-field: 504 photos of 6 species butterflies50 knows, 328 of 4 it does not; "
             f"never trained on. Leave-species-out: {FOLDS} folds of {HELD_OUT} butterflies50 classes held out "
             f"(known: the kept classes' validation images; unknown: the held-out classes' train + valid images). "
             f"Thresholds keep 95% of known validation images in each fold (median over folds). The app serves "
             f"{SERVED_SCORE} (see `training.trust` for why) at the model card's threshold (a fine-tuned model's trust.json; "
             f"for a frozen pilot, set here as the trust step sets it); the other scores are measured for comparison. "
             f"Images as the app sees them: decoded as an upload, looked at whole and (second look) at the crop around "
             f"the evidence; the answer reads the two passes' averaged logits, every score the better look (the higher "
             f"of the two passes' scores); the temperature is fitted on the validation images' averaged passes and "
             f"the served score's ranks on their whole images (a fine-tuned model's temperature, feature bank and "
             f"ranks: its trust step's; a frozen pilot's: set here the same way). For the fine-tuned models the "
             f"folds refit a head on the fine-tuned features, whose backbone saw the "
             f"held-out species in training (optimistic for them). kNN: mean cosine similarity to the 5 nearest of "
             f"{BANK_PER_CLASS} training features per class. ECE: 15 equal-width bins, butterflies50 test as shown "
             f"(both passes; 250 images: one image is 0.4 points).\n"]
    if study_rows:
        lines += [f"### Training augmentation (frozen features + linear head; plain train features + one view of "
                  f"{VIEW_PER_CLASS} images per class, or of every image, same seed)\n",
                  "| training features | augmented view of | butterflies50 test top-1 | leeds-field known top-1 |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| plain{'' if r['recipe'] == 'plain' else ' + ' + r['recipe']} | {r['views']} | {percent(r['test_top1'])} | "
                  f"{percent(r['field_top1'])} |" for r in study_rows]
        lines.append("")
    lines += ["### Per model, without / with the second look\n",
              "| model | test top-1 | ECE before / after T (T) | field known top-1 | heatmap peak in mask | "
              "crops taken | latency per photo (median) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r['model']} | {percent(r['test_top1']['first'])} / {percent(r['test_top1']['second'])} | "
                     f"{percent(r['ece_before'])} / {percent(r['ece_after'])} "
                     f"({r['temperature']:.2f}) | {percent(r['first']['field_top1'])} / {percent(r['second']['field_top1'])} | "
                     f"{percent(r['in_mask'])} | {percent(r['cropped'])} | {r['first_ms']:.0f} / {r['total_ms']:.0f} ms |")
    lines += ["", "### Unknown-species scores of the better look: AUROC / FPR@95TPR\n",
              f"Backgrounds: a square of each leeds-field photo without its butterfly (under "
              f"{BACKGROUND_MAX_MASK:.0%} of it in the mask; {results[0]['backgrounds'] if results else 0} of the photos "
              "have one), told apart from the known species' photos: photos of no butterfly at all. "
              "Leave-species-out: whole images (the folds refit heads on cached features; no crops are taken). "
              f"The last rows of each model: the served score as the app read it before, of the whole photo only, and "
              "on both passes (logits and kNN averaged).\n",
              "| model | score | leave-species-out | leeds-field unknown vs known | leeds-field unknown vs butterflies50 test "
              "| leeds-field backgrounds vs known |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for name in [*r["species_out"], *SERVED_BEFORE]:
            held_out = r["species_out"].get(name)
            measured = [r["second"][key][name] for key in ("unknown", "unknown_vs_test", "background")]
            mark = " (served)" if name == SERVED_SCORE else ""
            lines.append(f"| {r['model']} | {name}{mark} | "
                         + ("–" if held_out is None else f"{held_out['auroc']:.3f} / {percent(held_out['fpr95'])}") + " | "
                         + " | ".join(f"{m['auroc']:.3f} / {percent(m['fpr95'])}" for m in measured) + " |")
    lines += ["", "### At the threshold chosen on held-out species\n",
              f"The served score at the model card's threshold, and as the app read it before (of the whole photo only, "
              f"and on both passes); {BESIDE} (served before max-softmax+kNN) at its own "
              "held-out threshold (a probability, "
              "set at the fold heads' temperatures: at the served temperature, fitted on both passes, it answers more "
              "than when it was served). The "
              "threshold is set to answer about 95% of known validation images: butterflies50 test answered says whether "
              "it does on clean photos of known species. Answers right: without / with the second look.\n",
              "| model | score >= threshold | butterflies50 test answered | known field photos answered | answers right "
              "| unknown field photos \"not sure\" | backgrounds \"not sure\" |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        for name, threshold in ((SERVED_SCORE, r["threshold"]), *((before, r["threshold"]) for before in SERVED_BEFORE),
                                (BESIDE, r["species_out"][BESIDE]["threshold"])):
            second = r["second"]["at_threshold"][name]
            first = second if name in SERVED_BEFORE else r["first"]["at_threshold"][name]
            right = (percent(second["field_right"]) if name in SERVED_BEFORE
                     else f"{percent(first['field_right'])} / {percent(second['field_right'])}")
            lines.append(f"| {r['model']} | {name} >= {threshold:.4g}{' (served)' if name == SERVED_SCORE else ''} | "
                         f"{percent(second['test_answered'])} | {percent(second['field_answered'])} | {right} | "
                         f"{percent(second['field_not_sure'])} | {percent(second['background_not_sure'])} |")
    lines += ["", "### Feature bank size: the served score on held-out species, AUROC / FPR@95TPR\n",
              f"The bank the app ships holds {BANK_PER_CLASS} training images per class (`training.unknown.BANK_PER_CLASS`), "
              "chosen here, on held-out species; the app holds it as float32 (images x channels x 4 bytes).\n",
              "| model | " + " | ".join("every image" if size is None else f"{size} per class" for size in BANK_SIZES) + " |",
              "| --- |" + " --- |" * len(BANK_SIZES)]
    for r in results:
        sizes = [r["bank_sizes"][str(size)] for size in BANK_SIZES]
        lines.append(f"| {r['model']} | " + " | ".join(f"{s['auroc']:.4f} / {percent(s['fpr95'])}" for s in sizes) + " |")
    lines.append(f"\nLatency: decode (draft at {second_look.DECODE_SCALE}x the input) + LiteRT feature map + numpy head, "
                 f"2 threads, on a shared 2-core machine under other load; the second column includes the crop's pass "
                 f"when one is taken; the served score's kNN (one pass's features against the feature bank: the app scores each "
                 f"pass) adds a median of "
                 + ", ".join(f"{r['knn_ms']:.1f} ms ({r['model']})" for r in results[-1:]) + ". "
                 f"A feature bank of {BANK_PER_CLASS} per class costs "
                 + ", ".join(f"{r['bank_mb']:.1f} MB ({r['model']})" for r in results[:1]) + " as float16.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="the training config (data path)")
    parser.add_argument("--field", type=Path, default=FIELD, help="a leeds-field-like folder (images/, masks/, mapping.json)")
    parser.add_argument("--trained", type=Path, nargs="*", default=None,
                        help=f"trained backbone folders (default: those under {TRAINED} with a model.keras)")
    parser.add_argument("--frozen", default=FROZEN, help="the frozen ImageNet backbone of the pilot ('' for none)")
    parser.add_argument("--recipes", nargs="*", default=ALL_IMAGES,
                        help="augmentation views (of every training image) added to the frozen pilot's further heads")
    parser.add_argument("--study", action="store_true", help="also run the augmentation study (one view per recipe)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per class and split (smoke runs)")
    parser.add_argument("--no-record", action="store_true", help="print the section instead of recording it")
    args = parser.parse_args(argv)

    classes, splits = butterflies(args.config, args.limit)
    photos = field_photos(args.field, classes)
    if args.limit is not None:
        photos = [p for i, p in enumerate(photos) if i % max(1, len(photos) // (3 * args.limit)) == 0]
    results, study_rows = [], []
    if args.frozen:
        model = frozen_model(args.frozen, Path(load_config(args.config, {}).weights_dir or "."))
        if args.study:
            study_rows = study(model, splits, photos)
        train = split_features(model, splits["train"], "train")
        for recipe in dict.fromkeys(["plain", *args.recipes]):
            head = augmented_head(model, splits["train"], train, recipe)
            results.append(evaluate(model, head, splits, photos, f"{model.name}, {recipe}"))
    folders = args.trained if args.trained is not None else sorted(p.parent for p in TRAINED.glob("*/model.keras"))
    for folder in folders:
        model = trained_model(folder, classes)
        results.append(evaluate(model, model.head, splits, photos, model.name))
    (WORK / "field.json").write_text(json.dumps({"study": study_rows, "results": results}, indent=1), encoding="utf-8")
    section = report(study_rows, results, "nice -n 5 .venv/bin/python bench/field.py " + " ".join(argv or sys.argv[1:]))
    if args.no_record or args.limit is not None:
        print(section)
    else:
        sections.record("field", section)


if __name__ == "__main__":
    main()
