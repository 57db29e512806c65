"""Stage 3: the classifier and the views of it that each later stage needs.

    raw RGB 0..255 -> preprocess -> backbone -> pool -> react -> dropout -> logits (dense) -> softmax

The head is deliberately linear (global average pooling, then one dense layer), which makes
class activation maps exact: the dense layer applied at every position of the feature map gives
a map whose average *is* the class logit.

`react` caps what the head reads (ReAct, Sun et al., 2021): each pooled feature at a ceiling, the
90th percentile of the training images' pooled features (`training.unknown.react_ceiling`). A photo
of a species the model never saw tends to drive a few features far above anything seen in
training, and the head turns those into a confident wrong answer; capped, they no longer can,
while the features of known classes mostly stay under the ceiling. The trust step sets the
ceiling after training (`set_ceiling`); until then the layer changes nothing. The exported class
maps read the feature map scaled to match (`capped`), so they still average to the logits.
docs/BENCHMARKS.md measures what it does for unknown species.

The views below share the classifier's own layer objects. `bottom` is the frozen part of the backbone
(its outputs are cached), `top` the blocks above it plus the head (trained in phase 2 on that
cache), `head` the dense layer alone (phase 1), `with_class_maps` the exported model. Training a
view trains the classifier; the exported heatmap reads the very weights that classify.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from runtime import second_look
from training.backbones import BackboneError, Variant, build_base, preprocessing_layers

LOOK_BATCH = 32  # images looked at per model call in `served_looks`: a few dozen MB of decoded photos


def set_ceiling(classifier: keras.Model, ceiling: float) -> None:
    """Cap the pooled features the head reads at `ceiling` (ReAct, see the module doc). The layer's
    setting, not a weight: it is saved in model.keras's config, which plain Keras loads. A predict
    function traced before would still read the old one, so it is traced again."""
    classifier.get_layer("react").max_value = ceiling
    classifier.make_predict_function(force=True)


def react_layer(classifier: keras.Model) -> keras.Layer:
    """The classifier's ReAct layer; an identity for a classifier saved before it existed."""
    if any(layer.name == "react" for layer in classifier.layers):
        return classifier.get_layer("react")
    return keras.layers.Identity()


def ceiling(classifier: keras.Model) -> float:
    """The cap on the pooled features the head reads (`set_ceiling`); infinite until it is set."""
    value = getattr(react_layer(classifier), "max_value", None)
    return float("inf") if value is None else float(value)


def capped(classifier: keras.Model, feature_map):
    """`feature_map` with each channel scaled so that its average is capped as the head caps the
    pooled features: the class maps of the capped map then average to the logits exactly."""
    value = ceiling(classifier)
    if value == float("inf"):
        return feature_map
    feature_map = keras.ops.cast(feature_map, "float32")  # in float16 (mixed precision) the floor would be 0
    average = keras.ops.mean(feature_map, axis=(1, 2), keepdims=True)
    return feature_map * keras.ops.minimum(1.0, value / keras.ops.maximum(average, 1e-12))


def build_classifier(variant: Variant, num_classes: int, weights, dropout: float) -> keras.Model:
    """The full model, with the backbone frozen (phase 1)."""
    inputs = keras.Input((variant.size, variant.size, 3), name="pixels")
    base = build_base(variant, weights)
    base.name = "backbone"
    base.trainable = False
    x = preprocessing_layers(variant.backbone.preprocessing)(inputs)
    # With pretrained weights, training=False keeps BatchNorm in inference mode even once the
    # top blocks are unfrozen. From scratch there are no statistics to keep: BatchNorm learns.
    x = base(x, training=False) if weights is not None else base(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    # ReAct's cap: the identity (slope 1 below zero, no maximum) until the trust step sets one.
    x = keras.layers.ReLU(negative_slope=1.0, name="react")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    x = keras.layers.Dense(num_classes, name="logits", dtype="float32")(x)
    outputs = keras.layers.Softmax(name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=f"{variant.id}_classifier")


def split_layer(base: keras.Model, name: str) -> keras.Layer:
    """The backbone layer named `name`, or a message saying it has none (a typo in the config)."""
    try:
        return base.get_layer(name)
    except ValueError:
        raise BackboneError(f"{base.name} has no layer {name!r} to freeze up to (see frozen_until)") from None


def bottom(classifier: keras.Model, frozen_until: str | None) -> keras.Model:
    """Raw pixels -> what never trains, computed once per image and cached: the activations of
    `frozen_until` (phase 2's input) and the pooled features of the frozen backbone (phase 1's).

    `frozen_until=None` (training from scratch) freezes nothing: the activations are the
    preprocessed pixels, and the pooled features those of the untrained backbone.
    """
    x = classifier.get_layer("preprocess")(classifier.input)
    if frozen_until is not None:
        base = classifier.get_layer("backbone")
        x = keras.Model(base.input, split_layer(base, frozen_until).output, name="bottom")(x, training=False)
    pooled = top(classifier, frozen_until, pooled_only=True)(x)
    return keras.Model(classifier.input, {"activations": x, "pooled": pooled})


def top(classifier: keras.Model, frozen_until: str | None, pooled_only: bool = False) -> keras.Model:
    """Cached activations -> probabilities (or pooled features, not capped), sharing the classifier's layers.

    Fitting this model fits the classifier itself: phase 2 trains it on cached activations.
    """
    base = classifier.get_layer("backbone")
    start = base.input if frozen_until is None else split_layer(base, frozen_until).output
    blocks = keras.Model(start, base.output, name="top_blocks")
    activations = keras.Input(blocks.input.shape[1:], name="activations")
    x = classifier.get_layer("pool")(blocks(activations, training=False if frozen_until else None))
    if not pooled_only:
        x = classifier.get_layer("dropout")(react_layer(classifier)(x))
        x = classifier.get_layer("probabilities")(classifier.get_layer("logits")(x))
    return keras.Model(activations, x)


def head(classifier: keras.Model) -> keras.Model:
    """Pooled features -> probabilities, sharing the classifier's ReAct, dropout and dense layers."""
    features = keras.Input(classifier.get_layer("pool").output.shape[1:], name="features")
    x = classifier.get_layer("dropout")(react_layer(classifier)(features))
    x = classifier.get_layer("logits")(x)
    return keras.Model(features, classifier.get_layer("probabilities")(x), name="head")


def unfreeze_top(classifier: keras.Model, frozen_until: str | None) -> None:
    """Make the backbone's blocks above `frozen_until` trainable, BatchNorm kept frozen; with
    `frozen_until=None` (from scratch), every layer."""
    base = classifier.get_layer("backbone")
    base.trainable = True
    first = 0 if frozen_until is None else [layer.name for layer in base.layers].index(frozen_until) + 1
    for index, layer in enumerate(base.layers):
        batch_norm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index >= first and not (batch_norm and frozen_until is not None)


def with_class_maps(classifier: keras.Model) -> keras.Model:
    """The classifier with two more outputs: class activation maps, shape (h, w, classes), and
    the backbone's pooled features, shape (channels,).

    Each map is the dense layer applied at every position of the feature map the head reads
    (scaled by `capped`, bias included), so averaging a class's map over positions gives exactly
    that class's logit. The features, not capped, are what the unknown score compares with the
    feature bank (`runtime.answer.knn`).
    """
    inputs = keras.Input(classifier.input.shape[1:], name="pixels")
    x = classifier.get_layer("preprocess")(inputs)
    feature_map = classifier.get_layer("backbone")(x, training=False)
    logits, pooled = classifier.get_layer("logits"), classifier.get_layer("pool")(feature_map)
    probabilities = classifier.get_layer("probabilities")(logits(react_layer(classifier)(pooled)))
    class_maps = keras.layers.Identity(name="class_maps")(logits(capped(classifier, feature_map)))
    features = keras.layers.Identity(name="features")(pooled)
    return keras.Model(inputs, {"probabilities": probabilities, "class_maps": class_maps, "features": features})


def served_looks(classifier: keras.Model, images: Iterable[Image.Image],
                 batch_size: int = LOOK_BATCH) -> Iterator[second_look.Look]:
    """Each image looked at as the app looks at an upload (`runtime.second_look.looks`: the whole
    image, then the crop around its evidence), through `with_class_maps(classifier)`, `batch_size`
    images per call: one call per image would spend most of its time in Keras' per-call overhead.
    `images` is read a batch at a time, so a generator of decoded photos stays a batch in memory.
    Every call gets as many images as the first batch (a shorter one padded with blank images,
    their outputs dropped): Keras traces its predict function again for each new batch size, and
    the crops' batches vary. A single photo (`predict` on one file) stays a batch of one."""
    served = with_class_maps(classifier)
    size = tuple(classifier.input.shape[1:3])
    images = iter(images)
    batch = list(islice(images, batch_size))
    width = len(batch)

    def predict(pixels):
        padded = np.zeros((width, *pixels.shape[1:]), "float32")
        padded[:len(pixels)] = pixels
        return {name: value[:len(pixels)] for name, value in served.predict_on_batch(padded).items()}

    while batch:
        yield from second_look.looks(batch, predict, size)
        batch = list(islice(images, batch_size))


def to_litert(model: keras.Model, path: Path, optimizations: Sequence[tf.lite.Optimize] = (),
              supported_types: Sequence[tf.dtypes.DType] = ()) -> None:
    """Convert `model` to a LiteRT file for one image at a time, outputs named as the model's.

    This is the TFLite converter run on the model's traced call, which is what
    `model.export(format="litert")` does too, minus the SavedModel that Keras writes and reads
    back first: the same signature (`serving_default`, outputs named by the model's output dict),
    in well under the time (bench/extraction.py times the conversion). The converter freezes
    the variables its `tf.Module` tracks; untracked, they would come out as garbage.
    """
    module = tf.Module()
    module.variables_to_freeze = [variable.value for variable in model.variables]  # the tf.Variables
    spec = tf.TensorSpec((1, *model.input.shape[1:]), tf.float32, name="pixels")
    module.call = tf.function(lambda pixels: model(pixels, training=False), input_signature=[spec])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.call.get_concrete_function()], module)
    converter.optimizations = list(optimizations)
    converter.target_spec.supported_types = list(supported_types)
    Path(path).write_bytes(converter.convert())
