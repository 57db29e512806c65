"""Why feature extraction runs on LiteRT and augments with one warp: both measured side by side.

Run from the repository root (a few minutes on a small CPU; `--dry-run` only checks the paths):

    .venv/bin/python bench/extraction.py [--config configs/butterflies50.toml] [--dry-run]

On the same real images (the config's `data`), for every backbone of the config with its
ImageNet weights (the config's `weights_dir`):
1. the frozen bottom (activations + pooled features) run by TensorFlow (`model.predict`) and by
   its LiteRT conversion (what `extract_engine = "auto"` picks on a CPU), ms per image, and
   how far apart their outputs are;
2. decoding plus augmentation with Keras' three chained layers (RandomRotation, RandomZoom,
   RandomTranslation: three resamples) and with `training.dataset.RandomAffine` (one).
Prints the table and records it in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import paths  # noqa: E402  (bench/paths.py)
import sections  # noqa: E402  (bench/sections.py)

from training.backbones import parse_variant, resolve_weights  # noqa: E402
from training.config import ConfigError, load_config  # noqa: E402
from training.dataset import augmentation, image_dataset  # noqa: E402
from training.features import run_litert  # noqa: E402
from training.folder import scan  # noqa: E402
from training.model import bottom, build_classifier, to_litert  # noqa: E402

IMAGES = 512


def per_image_ms(seconds: float) -> float:
    return seconds / IMAGES * 1000


def engines(config, samples, spec: str, tmp: Path) -> dict:
    """TensorFlow vs LiteRT on the frozen bottom of one backbone, same images."""
    variant = parse_variant(spec)
    weights_dir = Path(config.weights_dir) if config.weights_dir else None
    weights = resolve_weights(variant, config.weights, weights_dir, config.weight_files.get(variant.id))
    classifier = build_classifier(variant, 50, weights, config.dropout)
    frozen = bottom(classifier, config.frozen_until.get(variant.id, variant.backbone.frozen_until))
    images = image_dataset(samples, variant.size, 64).cache()
    list(images)  # decode once, outside both timings
    frozen.predict(images.take(1), verbose=0)  # warm-up
    start = time.perf_counter()
    expected = frozen.predict(images, verbose=0)
    keras_s = time.perf_counter() - start
    path = tmp / f"{variant.id}.tflite"
    start = time.perf_counter()
    to_litert(frozen, path)
    convert_s = time.perf_counter() - start
    run_litert(frozen, path, images.take(1), 64)  # warm-up
    start = time.perf_counter()
    actual = run_litert(frozen, path, images, IMAGES)
    litert_s = time.perf_counter() - start
    difference = max(float(np.abs(actual[k].astype("float32") - expected[k]).max() / np.abs(expected[k]).max())
                     for k in expected)
    return {"backbone": variant.id, "keras_ms": per_image_ms(keras_s), "litert_ms": per_image_ms(litert_s),
            "convert_s": convert_s, "difference": difference}


def augmentations(config, samples) -> dict:
    """Decode + augment with three chained Keras layers vs one affine warp, same images."""
    chained = keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=1),
        keras.layers.RandomRotation(config.rotation, fill_mode="reflect", seed=2),
        keras.layers.RandomZoom(config.zoom, fill_mode="reflect", seed=3),
        keras.layers.RandomTranslation(config.translation, config.translation, fill_mode="reflect", seed=4),
    ])
    results = {}
    def chain(images, index):  # Keras' layers draw from their own seed generators: no use for the index
        return chained(images, training=True)

    for name, augment in (("none", None), ("chained", chain), ("one warp", augmentation(config, seed=1))):
        dataset = image_dataset(samples, 224, 64, augment=augment)
        start = time.perf_counter()
        for _ in dataset:
            pass
        results[name] = per_image_ms(time.perf_counter() - start)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    paths.add_options(parser)
    args = parser.parse_args(argv)
    data = paths.folder(args.config, "data")
    weights = paths.folder(args.config, "weights_dir", required=False)
    print(f"{paths.shown(args.config)}: data {paths.shown(data)}, weights {paths.shown(weights) if weights else 'downloaded'}",
          file=sys.stderr)
    if args.dry_run:
        return
    try:
        config = load_config(ROOT / args.config, {"data": str(data), "weights_dir": str(weights) if weights else None})
    except ConfigError as error:
        sys.exit(str(error))
    samples = scan(config.data).splits["train"][:IMAGES]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [engines(config, samples, spec, Path(tmp)) for spec in config.backbones]
    augment = augmentations(config, samples)
    lines = [
        "## Feature extraction: TensorFlow vs LiteRT, chained vs one-warp augmentation",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores, {IMAGES} {data.name} training "
        "images, side by side in one process. Reproduce: "
        f"`.venv/bin/python bench/extraction.py --config {paths.shown(args.config)}`.",
        "",
        "| backbone (frozen bottom + pooled features) | TensorFlow ms/image | LiteRT ms/image | speed-up "
        "| conversion s | largest difference (relative to max) |",
        "|---|---|---|---|---|---|",
        *(f"| {r['backbone']} | {r['keras_ms']:.2f} | {r['litert_ms']:.2f} | {r['keras_ms'] / r['litert_ms']:.1f}x "
          f"| {r['convert_s']:.1f} | {r['difference']:.1e} |" for r in rows),
        "",
        f"| decode + augmentation, 224x224 | ms/image (wall, {os.cpu_count()} cores) |",
        "|---|---|",
        *(f"| {name} | {ms:.2f} |" for name, ms in augment.items()),
        "",
        f"One warp instead of three chained layers: {augment['chained'] - augment['one warp']:.2f} ms less per "
        "augmented image.",
    ]
    section = "\n".join(lines)
    print(section)
    sections.record("extraction", section)


if __name__ == "__main__":
    main()
