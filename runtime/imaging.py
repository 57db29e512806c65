"""Turn an image file into the RGB pixels a model sees, the one way training and serving both do.

Training (`training.dataset`) and the web app (`app/`) both call `load_pixels`, so a photo is
decoded, turned upright, converted to RGB and resized identically in both places. Everything
after that (scaling, mean subtraction, ...) lives inside the saved model itself. Keeping this
module free of TensorFlow lets the app import it on a 512 MB dyno.

Every problem with a file is raised as `ImageError`, whose message names the file and says
what is wrong, so callers can show it to a person instead of a traceback.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# Extensions the pipeline and the app accept (Pillow reads them all).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")

# A guard against decompression bombs: a 20 kB PNG can claim 50,000 x 50,000 pixels and take
# 7 GB to decode. 50 megapixels covers every phone and DSLR photo.
MAX_PIXELS = 50_000_000

# Transparent parts of an image are shown on white, as a browser would show them.
BACKGROUND = (255, 255, 255)

# EXIF orientations whose stored pixels lie sideways: upright, width and height swap.
SIDEWAYS = (5, 6, 7, 8)

Source = str | os.PathLike | bytes


class ImageError(ValueError):
    """A file that cannot be used as an image; the message names the file and the problem."""


def open_rgb(source: Source, name: str | None = None, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode `source` (a path or the bytes of an upload) into an upright 8-bit RGB image.

    `name` is what error messages call the file (defaults to the path). `draft_size` = (width,
    height) of the upright image lets the JPEG decoder skip detail that a later resize to that
    size would throw away anyway (it decodes at 1/2, 1/4 or 1/8 scale), which makes a phone
    photo much faster to decode and far smaller in memory.
    """
    name = name or (str(source) if not isinstance(source, bytes) else "upload")
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"{name}: the file is empty")
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        stream = Path(source)
        if stream.stat().st_size == 0:
            raise ImageError(f"{name}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(
                    f"{name}: the image is {width}x{height} pixels, more than the "
                    f"{MAX_PIXELS // 1_000_000} megapixel limit"
                )
            if draft_size and image.getexif().get(ExifTags.Base.Orientation) in SIDEWAYS:
                draft_size = draft_size[::-1]  # the stored pixels are sideways: so is the size they need
            if draft_size and image.format == "JPEG":
                image.draft("RGB", draft_size)
            image.load()
            if draft_size and image.mode in ("L", "RGB", "RGBA", "LA", "I", "F"):
                image = shrink(image, draft_size)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (or a format Pillow cannot read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{name}: the image is too large to decode safely") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: the image is truncated or corrupt ({error})") from None
    # In place: without an orientation to undo, exif_transpose would return a full copy, and a
    # decoded phone photo is 9 MB that a busy server holds twice for nothing.
    ImageOps.exif_transpose(image, in_place=True)
    return to_rgb(image)


def shrink(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Box-average a decoded image by the largest whole factor that keeps it at least `size`.

    The JPEG decoder does this itself (`draft`); for PNG, WebP and the rest it keeps a
    50-megapixel upload from needing several full-size copies during conversion.
    """
    factor = min(image.width // size[0], image.height // size[1])
    return image.reduce(factor) if factor >= 2 else image


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode (grayscale, 16-bit, CMYK, palette, alpha) to 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Pillow's own conversion clips 16-bit values at 255 (an almost white image): rescale.
        depth = 65535.0 if image.mode.startswith("I;16") else max(float(np.asarray(image).max()), 1.0)
        pixels = np.asarray(image, dtype=np.float64) * (255.0 / depth)
        image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB") if image.mode != "RGB" else image


def load_pixels(source: Source, size: tuple[int, int], name: str | None = None) -> np.ndarray:
    """Return the image as a (height, width, 3) uint8 array resized to `size` = (height, width).

    The whole image is squashed to the model's input size (no crop), with Pillow's bilinear
    filter, which antialiases when it shrinks.
    """
    height, width = size
    image = open_rgb(source, name, draft_size=(width, height))
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)
