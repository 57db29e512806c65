"""Augmented training views that look like visitors' photos, not like butterflies50's tight crops.

butterflies50's images are web photos cropped tight around the butterfly; a phone photo shows a
small butterfly somewhere in the frame, among grass and flowers, in odd light, sometimes blurred.
Each function below turns a training image into one of those framings:

- `zoom_out`: the image shrunk to 30-90% of the side (aspect jittered) and pasted at a random place
  on *context*: another training image, heavily blurred and turned, so the surroundings look like
  out-of-focus vegetation rather than a black or mirrored border;
- `resized_crop`: a random crop over a wide range of areas and aspects, resized back (closer views);
- `colour_jitter`: brightness, contrast, saturation and gamma, as cameras and daylight vary;
- `soften`: a light Gaussian blur (focus, motion, small butterflies upsampled by phones).

`field_view` applies one of them, or "field", a chain of them; `RECOMMENDED` is the one
`bench/field.py` measured best (see docs/BENCHMARKS.md), and `framed_loader` is how the
pipeline's augmented views use it (`Config.field_share`).
Everything works on uint8 RGB arrays with numpy and Pillow, one image at a time, and is
deterministic given the seed, so a cached augmented view can be reproduced.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from runtime import imaging

# The recipe's knobs, in one place. Sides are fractions of the image side.
ZOOM_OUT_SIDE = (0.3, 0.9)  # the butterfly image's side on the zoomed-out canvas
ASPECT_JITTER = 0.2  # +-20% on the pasted image's aspect ratio
CONTEXT_BLUR = (6.0, 14.0)  # Gaussian radius (pixels at 224) that turns a training image into background
CROP_AREA = (0.25, 1.0)  # area of a resized crop, as a fraction of the image
CROP_ASPECT = (3 / 4, 4 / 3)
JITTER = 0.35  # +-35% brightness, contrast and saturation
GAMMA = (0.7, 1.4)
SOFTEN_RADIUS = (0.5, 1.6)

# What bench/field.py measured best on leeds-field known species without losing butterflies50 test
# accuracy (docs/BENCHMARKS.md): zoom-out views, of about a quarter of the training images.
RECOMMENDED = "zoom_out"
RECOMMENDED_SHARE = 0.25


def zoom_out(image: Image.Image, context: Image.Image, rng: np.random.Generator) -> Image.Image:
    """`image` shrunk and pasted at a random place on a blurred, turned copy of `context`."""
    width, height = image.size
    side = rng.uniform(*ZOOM_OUT_SIDE)
    aspect = 1 + rng.uniform(-ASPECT_JITTER, ASPECT_JITTER)
    small_w = max(1, min(width, round(width * side * aspect)))
    small_h = max(1, min(height, round(height * side / aspect)))
    small = image.resize((small_w, small_h), Image.Resampling.BILINEAR)
    background = context.resize((width, height), Image.Resampling.BILINEAR)
    mean_colour = tuple(np.asarray(background).reshape(-1, 3).mean(axis=0).astype(int).tolist())
    angle = float(rng.choice([0, 90, 180, 270])) + rng.uniform(-15, 15)
    background = background.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=mean_colour)
    background = background.filter(ImageFilter.GaussianBlur(rng.uniform(*CONTEXT_BLUR) * width / 224))
    left = int(rng.integers(0, width - small_w + 1))
    top = int(rng.integers(0, height - small_h + 1))
    background.paste(small, (left, top))
    return background


def resized_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random crop covering 25-100% of the area, aspect 3:4 to 4:3, resized to the image size."""
    width, height = image.size
    area = rng.uniform(*CROP_AREA) * width * height
    aspect = np.exp(rng.uniform(*np.log(CROP_ASPECT)))
    crop_w = int(min(width, round(np.sqrt(area * aspect))))
    crop_h = int(min(height, round(np.sqrt(area / aspect))))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    return image.resize((width, height), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h))


def colour_jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation each scaled by up to +-35%, then a random gamma."""
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhancer(image).enhance(1 + rng.uniform(-JITTER, JITTER))
    gamma = rng.uniform(*GAMMA)
    table = np.clip(255 * (np.arange(256) / 255) ** gamma + 0.5, 0, 255).astype(np.uint8)
    return image.point(list(table) * 3)


def soften(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A light Gaussian blur."""
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(*SOFTEN_RADIUS) * image.width / 224))


def field_view(image: np.ndarray, context: np.ndarray, rng: np.random.Generator, recipe: str = "field") -> np.ndarray:
    """One augmented view of a (H, W, 3) uint8 image; `context` is another training image.

    Recipes (measured in docs/BENCHMARKS.md): "zoom_out", "crop", "colour", "blur", and "field":
    half the time a zoom-out, otherwise a resized crop; then colour jitter, and a light blur one
    time in three. Every recipe ends with a random horizontal flip.
    """
    picture, other = Image.fromarray(image), Image.fromarray(context)
    if recipe == "zoom_out":
        picture = zoom_out(picture, other, rng)
    elif recipe == "crop":
        picture = resized_crop(picture, rng)
    elif recipe == "colour":
        picture = colour_jitter(picture, rng)
    elif recipe == "blur":
        picture = soften(picture, rng)
    elif recipe == "field":
        picture = zoom_out(picture, other, rng) if rng.random() < 0.5 else resized_crop(picture, rng)
        picture = colour_jitter(picture, rng)
        if rng.random() < 1 / 3:
            picture = soften(picture, rng)
    else:
        raise ValueError(f"unknown field augmentation recipe {recipe!r}; known: zoom_out, crop, colour, blur, field")
    if rng.random() < 0.5:
        picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(picture, dtype=np.uint8)


def framed_loader(paths: list[str], size: int, seed: int, share: float,
                  recipe: str = RECOMMENDED) -> Callable[[int], np.ndarray]:
    """A loader of training image i, (size, size, 3) uint8, framed like a field photo with
    probability `share`: deterministic in (seed, i), so a cached view can be made again.

    The context of a framed image is another training image drawn at random, so the
    surroundings come from any class, as a meadow does not depend on the butterfly.
    """
    def load(i: int) -> np.ndarray:
        rng = np.random.default_rng([seed, i])
        pixels = imaging.load_pixels(paths[i], (size, size))
        if len(paths) < 2 or rng.random() >= share:
            return pixels
        other = int(rng.integers(len(paths) - 1))
        other += other >= i  # any training image but this one
        return field_view(pixels, imaging.load_pixels(paths[other], (size, size)), rng, recipe)

    return load
