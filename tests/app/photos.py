"""Photo files of every awkward kind a visitor may upload, made in memory with Pillow."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image


def scene(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """A deterministic RGB test picture: smooth gradients plus a little noise."""
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).integers(0, 40, size=(height, width))
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y + noise) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def encode(image: Image.Image, format: str, **options) -> bytes:
    """The file bytes of `image` saved in `format`."""
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def jpeg() -> bytes:
    return encode(scene(), "JPEG", quality=90)


def png_16bit() -> bytes:
    levels = (np.asarray(scene().convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    return encode(Image.fromarray(levels), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(scene().convert("CMYK"), "JPEG")


def rgba_png() -> bytes:
    image = scene().convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize(image.size))
    return encode(image, "PNG")


def grayscale_gif() -> bytes:
    return encode(scene().convert("L"), "GIF")


def palette_png() -> bytes:
    return encode(scene().quantize(16), "PNG")


def animated_gif() -> bytes:
    frames = [scene(seed=seed).quantize(64) for seed in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def rotated_jpeg() -> bytes:
    """A portrait photo stored sideways, as phones do: landscape pixels plus EXIF orientation 6.

    Upright it is 48 wide and 96 tall, red in the top half and blue in the bottom half.
    """
    return encode(upright_portrait().transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=orientation(6))


def upright_portrait() -> Image.Image:
    """What `rotated_jpeg` must look like once turned upright."""
    image = Image.new("RGB", (48, 96), (220, 30, 30))
    image.paste((30, 30, 220), (0, 48, 48, 96))
    return image


def orientation(tag: int) -> Image.Exif:
    """EXIF data holding only an orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = tag
    return exif


def small_subject() -> bytes:
    """A field photo in miniature: a small textured square near the top right of a dark frame,
    where even the untrained fixture models find their evidence, so the second look crops it."""
    pixels = np.full((120, 160, 3), 20, dtype=np.uint8)
    pixels[20:50, 100:130] = np.random.default_rng(0).integers(0, 256, size=(30, 30, 3))
    return encode(Image.fromarray(pixels), "JPEG", quality=95)


def huge_png() -> bytes:
    """A small file that claims 10000 x 6000 pixels (60 megapixels)."""
    return encode(Image.new("1", (10_000, 6_000)), "PNG")


# Uploads the app must classify: name -> bytes.
GOOD_UPLOADS: dict[str, Callable[[], bytes]] = {
    "photo.jpg": jpeg,
    "deep-16bit.png": png_16bit,
    "print-cmyk.jpg": cmyk_jpeg,
    "cutout-rgba.png": rgba_png,
    "grayscale.gif": grayscale_gif,
    "palette.png": palette_png,
    "animated.gif": animated_gif,
    "photo.webp": lambda: encode(scene(), "WEBP"),
    "photo.bmp": lambda: encode(scene(), "BMP"),
    "sideways.jpg": rotated_jpeg,
}

# Uploads the app must refuse: name -> (bytes, what the message must say).
BAD_UPLOADS: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty.jpg": (lambda: b"", "the file is empty"),
    "truncated.jpg": (lambda: jpeg()[: len(jpeg()) // 2], "truncated or corrupt"),
    "notes.jpg": (lambda: b"Remember to buy milk.\n" * 20, "not an image"),
    "huge.png": (huge_png, "megapixel limit"),
}

# Photos the fixture's unknown thresholds are measured on (half are answered, half "Not sure"),
# and that tests pick sure and unsure photos from.
PHOTOS: dict[str, bytes] = {name: make() for name, make in GOOD_UPLOADS.items()} | {
    f"meadow-{seed}.jpg": encode(scene(160, 120, seed=seed), "JPEG", quality=90) for seed in range(8)
} | {"small-subject.jpg": small_subject()}
