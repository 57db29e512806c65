"""A second look at a photo: classify a square crop around the butterfly too, and average.

Visitors' photos show a small butterfly somewhere in the frame; squashed to the model's input (224x224
or 288x288), it is a few dozen pixels of wing. The first pass already says where it looked: the class
map of its top class (`class_maps[..., top]`, the head applied at every location) is strongest on
the butterfly. `look` draws a square box around that evidence, crops it from the photo decoded at
up to `DECODE_SCALE` times the input size (so the crop keeps real detail, not an upsampled blur),
classifies the crop, and the probabilities combine both passes (`runtime.answer.logits`; whether
to answer at all, from the better scoring of the two, `runtime.answer.photo_score`). On field photos this
pays even when the evidence fills the frame: the box is square, so the butterfly is seen
undistorted, where the first pass squashed the whole photo to a square. On tight web crops like
butterflies50's test split it gains nothing, and costs the weaker models some test top-1
(docs/BENCHMARKS.md, `bench/field.py`). Only when the box is the whole photo (a square photo
filled with evidence) is the second pass skipped. The crop alone does worse than the average: a
tight crop loses context the first pass had.

The suggested box is returned too: the app offers it as the starting frame of its crop tool.
The model is any callable `predict(pixels) -> {"probabilities": (N,), "class_maps": (h, w, N), ...}`
(an `app.inference` classifier, a LiteRT model, a Keras wrapper in a benchmark), so this module
needs neither TensorFlow nor a particular runner: numpy and Pillow only, which the app can afford.
Its accuracy and latency on field photos are in docs/BENCHMARKS.md (`bench/field.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from runtime import imaging

Outputs = dict[str, np.ndarray]
Predict = Callable[[np.ndarray], Outputs]
BatchPredict = Callable[[np.ndarray], Outputs]  # (images, h, w, 3) in, every output with a leading images axis
Box = tuple[int, int, int, int]  # left, top, right, bottom in the photo's pixels

DECODE_SCALE = 4  # decode photos at up to 4x the model's input side: a quarter-side crop keeps full detail
# The box's geometry, measured on leeds-field known species with a frozen-feature pilot (bench/field.py's
# section of docs/BENCHMARKS.md); looser or tighter settings were within a few photos of each other.
EVIDENCE_LEVEL = 0.85  # the box holds every location whose evidence is at least 85% of the peak's
MARGIN = 0.3  # the box grows by 30% of its side on each side: wings and context stay in
MIN_SIDE = 0.4  # never crop below 40% of the photo's short side (a 7x7 map cannot aim finer)
UPSAMPLE = 16  # map cells are upsampled 16x (bilinear) before thresholding, for a smooth box edge


@dataclass(frozen=True)
class Look:
    """What the model said about a photo, with or without a second look at a crop.

    The answer combines the passes' logits (`runtime.answer.logits(*look.passes)`), so that the
    card's temperature and threshold apply to one logit vector, in the app and in `predict` alike.
    """

    full: Outputs  # the first pass, on the whole photo
    crop: Outputs | None  # the second pass, on the crop; None when the crop was skipped
    box: Box  # the suggested crop, in the photo's pixels (the whole photo when evidence fills it)

    @property
    def passes(self) -> list[Outputs]:
        """The passes that ran: the whole photo, then the crop if there was one."""
        return [self.full] if self.crop is None else [self.full, self.crop]


def decode(source: imaging.Source, input_size: tuple[int, int], name: str | None = None) -> Image.Image:
    """The upright RGB photo, decoded at no more than `DECODE_SCALE` times the input size
    (the JPEG decoder skips the rest), which is all a crop needs; `imaging.ImageError` if unusable."""
    height, width = input_size
    return imaging.open_rgb(source, name, draft_size=(width * DECODE_SCALE, height * DECODE_SCALE))


def pixels(image: Image.Image, input_size: tuple[int, int], box: Box | None = None) -> np.ndarray:
    """The model's input for `image` (or its `box`): squashed to `input_size` = (height, width)
    with Pillow's bilinear filter, as `imaging.load_pixels` does for the whole photo."""
    height, width = input_size
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0), dtype=np.uint8)


def upsampled(class_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) class map resized bilinearly to `size` = (width, height), each cell an area as in Pillow."""
    return np.asarray(Image.fromarray(class_map.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))


def peak(class_map: np.ndarray, image_size: tuple[int, int]) -> tuple[int, int]:
    """The (x, y) pixel of `image_size` = (width, height) where the upsampled class map peaks:
    where the heatmap is reddest."""
    heat = upsampled(class_map, image_size)
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(x), int(y)


def evidence_box(class_map: np.ndarray, image_size: tuple[int, int]) -> Box:
    """A square box, in the pixels of a photo of `image_size` = (width, height), around the
    locations whose evidence reaches `EVIDENCE_LEVEL` of the peak, grown by `MARGIN`, kept inside
    the photo and no smaller than `MIN_SIDE` of its short side."""
    width, height = image_size
    rows, columns = class_map.shape
    heat = upsampled(np.maximum(class_map, 0.0), (columns * UPSAMPLE, rows * UPSAMPLE))
    if heat.max() <= 0:
        return 0, 0, width, height  # no positive evidence anywhere: nothing to aim at
    ys, xs = np.nonzero(heat >= EVIDENCE_LEVEL * heat.max())
    # Cell edges in the photo's pixels: upsampled cell i spans [i, i + 1) / (columns * UPSAMPLE) of the width.
    left, right = xs.min() * width / heat.shape[1], (xs.max() + 1) * width / heat.shape[1]
    top, bottom = ys.min() * height / heat.shape[0], (ys.max() + 1) * height / heat.shape[0]
    short = min(width, height)
    side = min(short, max(MIN_SIDE * short, max(right - left, bottom - top) * (1 + 2 * MARGIN)))
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    x0 = int(round(np.clip(centre_x - side / 2, 0, width - side)))
    y0 = int(round(np.clip(centre_y - side / 2, 0, height - side)))
    side = int(round(side))
    return x0, y0, min(width, x0 + side), min(height, y0 + side)


def suggested_box(full: Outputs, image_size: tuple[int, int]) -> Box:
    """The box around the evidence for the first pass's top class, in a photo of `image_size`."""
    return evidence_box(full["class_maps"][..., int(np.argmax(full["probabilities"]))], image_size)


def look(image: Image.Image, predict: Predict, input_size: tuple[int, int], second: bool = True) -> Look:
    """Classify `image`, then a square crop around its evidence, and average (see the module doc).

    `second=False` gives the first pass alone (with the suggested box), for comparison and for
    callers that cannot afford the second pass.
    """
    full = predict(pixels(image, input_size))
    box = suggested_box(full, image.size)
    if not second or box == (0, 0, *image.size):
        return Look(full, None, box)
    return Look(full, predict(pixels(image, input_size, box)), box)


def looks(images: Sequence[Image.Image], predict: BatchPredict, input_size: tuple[int, int]) -> list[Look]:
    """`look` at several images with a model that takes a batch (Keras, in training and `predict`):
    the same passes and boxes, in two model calls for all of them instead of two per image."""
    if not images:
        return []
    fulls = unbatched(predict(np.stack([pixels(image, input_size) for image in images])))
    boxes = [suggested_box(full, image.size) for full, image in zip(fulls, images, strict=True)]
    cropped = [index for index, (image, box) in enumerate(zip(images, boxes, strict=True)) if box != (0, 0, *image.size)]
    crops = unbatched(predict(np.stack([pixels(images[i], input_size, boxes[i]) for i in cropped]))) if cropped else []
    second = dict(zip(cropped, crops, strict=True))
    return [Look(full, second.get(index), box) for index, (full, box) in enumerate(zip(fulls, boxes, strict=True))]


def unbatched(outputs: Outputs) -> list[Outputs]:
    """A batch's outputs, one dict per image."""
    count = len(next(iter(outputs.values())))
    return [{name: value[index] for name, value in outputs.items()} for index in range(count)]
