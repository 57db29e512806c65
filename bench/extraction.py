"""Why feature extraction runs on LiteRT and augments with one warp: both measured side by side.

Run: `.venv/bin/python bench/extraction.py` from the repository root (about 3 minutes on 2 cores).

On the same real butterflies50 images, for every backbone with real ImageNet weights offline:
1. the frozen bottom (activations + pooled features) run by TensorFlow (`model.predict`) and by
   its LiteRT conversion (what `extract_engine = "auto"` picks on a CPU), ms per image, and
   how far apart their outputs are;
2. decoding plus augmentation with Keras' three chained layers (RandomRotation, RandomZoom,
   RandomTranslation: three resamples) and with `training.dataset.RandomAffine` (one).
Prints the table and records it in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import sections  # noqa: E402  (bench/sections.py)

from training.backbones import parse_variant, resolve_weights  # noqa: E402
from training.config import load_config  # noqa: E402
from training.dataset import augmentation, image_dataset  # noqa: E402
from training.features import run_litert  # noqa: E402
from training.folder import scan  # noqa: E402
from training.model import bottom, build_classifier  # noqa: E402

CONFIG = ROOT / "configs" / "butterflies50.toml"
IMAGES = 512


def per_image_ms(seconds: float) -> float:
    return seconds / IMAGES * 1000


def engines(config, samples, spec: str, tmp: Path) -> dict:
    """TensorFlow vs LiteRT on the frozen bottom of one backbone, same images."""
    variant = parse_variant(spec)
    weights = resolve_weights(variant, config.weights, Path(config.weights_dir), config.weight_files.get(variant.id))
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
    frozen.export(str(path), format="litert", verbose=False)
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
    for name, layers in (("none", None), ("chained", chained), ("one warp", augmentation(config, seed=1))):
        dataset = image_dataset(samples, 224, 64, augment=layers)
        start = time.perf_counter()
        for _ in dataset:
            pass
        results[name] = per_image_ms(time.perf_counter() - start)
    return results


def main() -> None:
    import tempfile

    config = load_config(CONFIG, {})
    samples = scan(config.data).splits["train"][:IMAGES]
    with tempfile.TemporaryDirectory() as tmp:
        rows = [engines(config, samples, spec, Path(tmp)) for spec in config.backbones]
    augment = augmentations(config, samples)
    lines = [
        "## Feature extraction: TensorFlow vs LiteRT, chained vs one-warp augmentation",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPU cores, {IMAGES} butterflies50 training "
        "images, side by side in one process. Reproduce: `.venv/bin/python bench/extraction.py`.",
        "",
        "| backbone (frozen bottom + pooled features) | TensorFlow ms/image | LiteRT ms/image | speed-up "
        "| conversion s | largest difference (relative to max) |",
        "|---|---|---|---|---|---|",
        *(f"| {r['backbone']} | {r['keras_ms']:.2f} | {r['litert_ms']:.2f} | {r['keras_ms'] / r['litert_ms']:.1f}x "
          f"| {r['convert_s']:.1f} | {r['difference']:.1e} |" for r in rows),
        "",
        "| decode + augmentation, 224x224 | ms/image (wall, 2 cores) |",
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
