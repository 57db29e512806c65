"""The backbone registry: every ImageNet model the pipeline can fine-tune, one entry each.

An entry says how to build the convolutional base (the name of a `keras.applications`
constructor, called without its top), the input size it was trained at, which `preprocess_input` it expects, where its
ImageNet weights live in Keras' cache, and `frozen_until`: the last layer that stays frozen when
phase 2 fine-tunes the top blocks. Its output must be the only input of the layers above it (a
block boundary), because phase 2 caches it and trains the top on the cache. `learning_rate_scale`
multiplies the configured phase-2 learning rate for a backbone that wants another one. Adding a
backbone is adding one `Backbone(...)` to `REGISTRY`.

The preprocessing is rebuilt from standard Keras layers and placed inside the model (see
`preprocessing_layers`), so a saved model takes raw RGB pixels 0..255 and no caller can forget
or mismatch it.

Keras is imported only to build a model: the registry itself, variants and weight files are
plain data, so options are checked against them before TensorFlow's slow start-up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras

# What each family of `keras.applications.*.preprocess_input` does to RGB pixels 0..255.
#   "tf":    scale to -1..1                      (MobileNet, MobileNetV2, InceptionV3)
#   "caffe": RGB -> BGR, subtract ImageNet mean  (ResNet50, VGG16)
#   "none":  the model normalises by itself      (EfficientNet)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class Backbone:
    """How to build, preprocess for, load weights into and fine-tune one ImageNet model."""

    name: str
    application: str  # the `keras.applications` constructor, e.g. "ResNet50"
    input_size: int
    preprocessing: str
    weights_file: Callable[[float | None, int], str]  # (alpha, input size) -> Keras' file name
    frozen_until: str  # last layer kept frozen in phase 2; the blocks above it are fine-tuned
    alphas: tuple[float, ...] = ()  # width multipliers with published weights; () = no alpha
    default_alpha: float | None = None
    learning_rate_scale: float = 1.0  # times `fine_tune_learning_rate` in phase 2
    min_size: int = 32  # the smallest input `keras.applications` builds it for


def _mobilenet_file(alpha: float | None, size: int) -> str:
    alpha_text = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}[alpha]
    rows = size if size in (128, 160, 192, 224) else 224
    return f"mobilenet_{alpha_text}_{rows}_tf_no_top.h5"


def _mobilenet_v2_file(alpha: float | None, size: int) -> str:
    rows = size if size in (96, 128, 160, 192, 224) else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(alpha)}_{rows}_no_top.h5"


REGISTRY: dict[str, Backbone] = {
    entry.name: entry
    for entry in [
        Backbone(
            "resnet50", "ResNet50", 224, "caffe",
            lambda alpha, size: "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            frozen_until="conv4_block6_out",
        ),
        Backbone(
            "vgg16", "VGG16", 224, "caffe",
            lambda alpha, size: "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            frozen_until="block4_pool",
        ),
        Backbone(
            "inceptionv3", "InceptionV3", 299, "tf",
            lambda alpha, size: "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
            frozen_until="mixed8", min_size=75,
        ),
        Backbone(
            "mobilenet", "MobileNet", 224, "tf", _mobilenet_file,
            frozen_until="conv_pw_11_relu", alphas=(0.25, 0.5, 0.75, 1.0), default_alpha=1.0,
            # Twice the rate: on butterflies50 (alpha 0.25, same cached features) validation
            # loss fell steadily from 1x to 1.5x to 2x, while MobileNetV2's rose above 1x.
            learning_rate_scale=2.0,
        ),
        Backbone(
            "mobilenetv2", "MobileNetV2", 224, "tf", _mobilenet_v2_file,
            # block_9_add: fine-tuning blocks 10-16 (not 13-16, nor 15-16 as at first). Each step
            # deeper told species held out of training apart better (mobilenetv2_0.5, two seeds:
            # AUROC 0.986 and 0.990 against 0.975 and 0.981) and named more field photos right, at
            # about 2.5x phase 2's CPU time for alpha 0.5 (side by side on butterflies50:
            # docs/BENCHMARKS.md, "Fine-tuning depth").
            frozen_until="block_9_add", alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
            default_alpha=1.0,
        ),
        Backbone(
            "efficientnetb0", "EfficientNetB0", 224, "none",
            lambda alpha, size: "efficientnetb0_notop.h5",
            frozen_until="block5c_add",
        ),
    ]
}


class BackboneError(ValueError):
    """An unknown backbone, a bad alpha, or ImageNet weights that cannot be had."""


@dataclass(frozen=True)
class Variant:
    """One backbone as a run uses it: a registry entry, its width and its input size."""

    backbone: Backbone
    alpha: float | None
    size: int

    @property
    def id(self) -> str:
        """The variant's name in folders and tables, e.g. `mobilenet_0.25` or `resnet50`."""
        return self.backbone.name if self.alpha is None else f"{self.backbone.name}_{self.alpha:g}"

    @property
    def weights_file(self) -> str:
        return self.backbone.weights_file(self.alpha, self.size)


def parse_variant(spec: str, image_size: int | None = None) -> Variant:
    """Parse `name` or `name:alpha` (e.g. `mobilenet:0.25`) into a registry variant at
    `image_size` (default: the backbone's own), refusing a size Keras cannot build it for."""
    name, _, alpha_text = spec.strip().lower().partition(":")
    if name not in REGISTRY:
        raise BackboneError(f"unknown backbone {name!r}; known: {', '.join(REGISTRY)}")
    backbone = REGISTRY[name]
    alpha = backbone.default_alpha
    if alpha_text:
        if not backbone.alphas:
            raise BackboneError(f"backbone {name!r} takes no alpha (got {spec!r})")
        try:
            alpha = float(alpha_text)
        except ValueError:
            raise BackboneError(f"bad alpha in {spec!r}: expected a number") from None
        if alpha not in backbone.alphas:
            raise BackboneError(f"{name} alpha must be one of {backbone.alphas}, got {alpha:g}")
    size = backbone.input_size if image_size is None else image_size
    if size < backbone.min_size:
        raise BackboneError(f"{name} needs images of at least {backbone.min_size}x{backbone.min_size} "
                            f"(image size {size} asked)")
    return Variant(backbone, alpha, size)


def preprocessing_layers(mode: str) -> keras.Sequential:
    """The backbone's `preprocess_input` as standard Keras layers, to live inside the model.

    Built from stock layers only, so `keras.models.load_model` needs no custom objects. The
    "caffe" channel swap and mean subtraction is a frozen 1x1 convolution whose kernel is the
    RGB->BGR permutation and whose bias is minus the mean: exact in float32.
    """
    import keras

    if mode == "tf":
        layers = [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0)]
    elif mode == "caffe":
        swap = keras.layers.Conv2D(3, 1, trainable=False, name="rgb_to_bgr_minus_mean")
        swap.build((None, None, None, 3))
        kernel = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)
        swap.set_weights([kernel, -np.array(CAFFE_MEAN_BGR, dtype="float32")])
        layers = [swap]
    elif mode == "none":
        layers = [keras.layers.Identity()]
    else:
        raise BackboneError(f"unknown preprocessing mode {mode!r}")
    return keras.Sequential(layers, name="preprocess")


def build_base(variant: Variant, weights: str | Path | None) -> keras.Model:
    """The convolutional base without its top, with `weights` ("imagenet", a file or None)."""
    import keras

    kwargs = {"alpha": variant.alpha} if variant.alpha is not None else {}
    return getattr(keras.applications, variant.backbone.application)(
        include_top=False,
        weights=str(weights) if weights is not None else None,
        input_shape=(variant.size, variant.size, 3),
        **kwargs,
    )


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights (`$KERAS_HOME/models`, by default ~/.keras/models)."""
    return Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models"


def resolve_weights(
    variant: Variant, weights: str, weights_dir: Path | None = None, weight_file: Path | None = None
) -> str | Path | None:
    """Say where `variant`'s starting weights come from, or stop before any training.

    `weights` is "imagenet" (Keras' download, or a local copy in `weights_dir` / Keras' cache),
    "none" (train from scratch), or a path to a weights file. `weight_file` is a per-backbone
    file that overrides both.
    """
    if weight_file is not None or weights not in ("imagenet", "none"):
        path = Path(weight_file or weights).expanduser()
        if not path.is_file():
            raise BackboneError(f"{variant.id}: weights file {path} does not exist")
        return path
    if weights == "none":
        return None
    if weights_dir is not None:
        path = Path(weights_dir).expanduser() / variant.weights_file
        if not path.is_file():
            raise BackboneError(
                f"{variant.id}: ImageNet weights not found: {path} is missing. Put Keras' "
                f"{variant.weights_file} there, or use --weights none to train from scratch."
            )
        return path
    cached = keras_cache_dir() / variant.weights_file
    if cached.is_file():
        return cached
    try:  # Online: let Keras download and verify the file into its cache, once, up front.
        build_base(variant, "imagenet")
    except Exception as error:  # noqa: BLE001 - any download failure gets the same advice
        raise BackboneError(
            f"{variant.id}: ImageNet weights could not be downloaded ({type(error).__name__}). "
            f"Put {variant.weights_file} in {keras_cache_dir()} or in a folder given as "
            "--weights-dir, or use --weights none to train from scratch."
        ) from None
    return cached
