"""runtime/imaging.py against pixels worked out independently.

Every expected array here is computed with numpy from the values the test put in the file (the
EXIF orientation table, the 16-bit scale, the alpha blend, the CMYK formula, a triangle filter),
never with the Pillow conversion the code under test calls, so a broken rescale, blend or
rotation cannot pass by agreeing with itself. Files are made in memory; no TensorFlow.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from runtime import imaging


def encode(image: Image.Image, format: str, **options) -> bytes:
    """The file bytes of `image` saved in `format`."""
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def decoded_mode(data: bytes) -> str:
    """The mode Pillow opens `data` in: proof that a test exercises the conversion it names."""
    return Image.open(io.BytesIO(data)).mode


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


def gray_to_rgb(levels: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(levels)[..., None], 3, axis=-1).astype(np.uint8)


def orientation_tag(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value  # Orientation
    return exif


# How each EXIF orientation turns the stored pixels upright (EXIF 2.32, tag 0x0112), with numpy only.
UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: np.fliplr,  # mirrored left-right
    3: lambda a: np.rot90(a, 2),  # upside down
    4: np.flipud,  # mirrored top-bottom
    5: lambda a: a.swapaxes(0, 1),  # mirrored across the main diagonal
    6: lambda a: np.rot90(a, -1),  # turn 90 degrees clockwise (a phone held upright)
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),  # mirrored across the other diagonal
    8: lambda a: np.rot90(a, 1),  # turn 90 degrees counter-clockwise
}


def asymmetric(height: int = 4, width: int = 6) -> np.ndarray:
    """Pixels that are all different, so every flip and rotation gives a different array."""
    return (np.arange(height * width * 3).reshape(height, width, 3) * 3 % 256).astype(np.uint8)


def blocks(colours: list[list[tuple[int, int, int]]], side: int = 16) -> np.ndarray:
    """Flat squares of `side` pixels, aligned to JPEG's blocks so compression barely touches them."""
    return np.kron(np.array(colours, dtype=np.uint8), np.ones((side, side, 1), dtype=np.uint8))


@pytest.mark.parametrize("orientation", UPRIGHT)
def test_exif_orientation_turns_the_image_upright(orientation: int) -> None:
    stored = asymmetric()
    data = encode(Image.fromarray(stored), "PNG", exif=orientation_tag(orientation))
    expected = UPRIGHT[orientation](stored)

    np.testing.assert_array_equal(as_array(imaging.open_rgb(data)), expected)
    np.testing.assert_array_equal(imaging.load_pixels(data, expected.shape[:2]), expected)


@pytest.mark.parametrize("orientation", UPRIGHT)
def test_exif_orientation_of_a_phone_jpeg(orientation: int) -> None:
    stored = blocks([[(220, 30, 30), (30, 200, 30), (30, 30, 220)], [(240, 240, 0), (0, 220, 220), (250, 250, 250)]])
    # Full-resolution colour (subsampling=0) keeps JPEG's loss on these blocks to a level or two.
    data = encode(Image.fromarray(stored), "JPEG", quality=95, subsampling=0, exif=orientation_tag(orientation))
    expected = UPRIGHT[orientation](stored).astype(int)

    actual = imaging.load_pixels(data, expected.shape[:2]).astype(int)
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 4  # a wrong turn puts other blocks there: off by ~200


@pytest.mark.parametrize("format", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", [1, 6])
def test_a_draft_decode_is_never_smaller_than_the_upright_target(format: str, orientation: int) -> None:
    # Stored 400 wide and 300 tall; with orientation 6 it is 300 wide and 400 tall upright. Asked
    # for at least 200 x 50 upright, the decoder may halve 400 x 300 when it is upright already,
    # but not when it lies sideways: 200 x 150 would be 150 wide once turned.
    stored = Image.fromarray(blocks([[(200, 30, 30)] * 25] * 19)[:300])
    data = encode(stored, format, exif=orientation_tag(orientation))
    image = imaging.open_rgb(data, draft_size=(200, 50))

    assert image.width >= 200 and image.height >= 50
    assert (image.height > image.width) == (orientation == 6)  # upright
    if orientation == 1:
        assert image.size < stored.size  # and the draft did save work


@pytest.mark.parametrize("format", ["PNG", "TIFF"])
@pytest.mark.parametrize("levels", [
    [[0, 1, 128, 129, 257, 1000], [30000, 32767, 32768, 65000, 65534, 65535]],
    [[0, 100, 500, 1000, 2000, 4096]],  # a dark image must stay dark, not be stretched to white
], ids=["full-range", "dark"])
def test_16_bit_grayscale_is_rescaled_to_8_bits(format: str, levels: list[list[int]]) -> None:
    deep = np.array(levels, dtype=np.uint16)
    data = encode(Image.fromarray(deep), format)
    assert decoded_mode(data) == "I;16"
    expected = gray_to_rgb(np.rint(deep / 257))  # value * 255 / 65535, rounded (never a tie)

    np.testing.assert_array_equal(imaging.load_pixels(data, deep.shape), expected)


def on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """`colour` over a white background with opacity `alpha` (0..255), rounded to 8 bits."""
    opacity = alpha[..., None] / 255.0
    return np.rint(colour * opacity + 255 * (1 - opacity)).astype(np.uint8)


def test_rgba_is_shown_on_white() -> None:
    colour = asymmetric(4, 6)
    alpha = np.array([[0, 1, 64, 127, 128, 255]] * 4, dtype=np.uint8)
    data = encode(Image.fromarray(np.dstack([colour, alpha]), "RGBA"), "PNG")

    np.testing.assert_array_equal(imaging.load_pixels(data, (4, 6)), on_white(colour, alpha))


def test_grayscale_with_alpha_is_shown_on_white() -> None:
    gray = np.array([[0, 50, 100, 150, 200, 250]], dtype=np.uint8)
    alpha = np.array([[255, 200, 128, 64, 1, 0]], dtype=np.uint8)
    data = encode(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG")
    assert decoded_mode(data) == "LA"

    np.testing.assert_array_equal(imaging.load_pixels(data, (1, 6)), on_white(gray_to_rgb(gray), alpha))


PALETTE = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200), (240, 240, 0)], dtype=np.uint8)
INDICES = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [2, 2, 0, 1]], dtype=np.uint8)


@pytest.mark.parametrize(("format", "transparency", "alpha"), [
    ("PNG", None, [255, 255, 255, 255]),
    ("PNG", 2, [255, 255, 0, 255]),  # one transparent entry (tRNS)
    ("PNG", bytes([255, 128, 0, 40]), [255, 128, 0, 40]),  # an opacity per entry
    ("GIF", None, [255, 255, 255, 255]),
    ("GIF", 2, [255, 255, 0, 255]),
], ids=["png", "png-transparent-index", "png-alpha-per-entry", "gif", "gif-transparent-index"])
def test_palette_images_get_their_palette_colours(format: str, transparency, alpha: list[int]) -> None:
    image = Image.fromarray(INDICES, "P")
    image.putpalette(PALETTE.tobytes())
    options = {} if transparency is None else {"transparency": transparency}
    data = encode(image, format, **options)
    assert decoded_mode(data) == "P"
    expected = on_white(PALETTE[INDICES].astype(float), np.array(alpha, dtype=float)[INDICES])

    np.testing.assert_array_equal(imaging.load_pixels(data, INDICES.shape), expected)


def cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """The naive conversion Pillow uses (no colour profile): R = 255 * (1 - C/255) * (1 - K/255), ..."""
    ink, black = cmyk[..., :3].astype(float), cmyk[..., 3:].astype(float)
    return np.rint((255 - ink) * (255 - black) / 255).astype(np.uint8)


def test_cmyk_tiff_is_converted_with_the_cmyk_formula() -> None:
    cmyk = np.random.default_rng(0).integers(0, 256, (6, 8, 4), dtype=np.uint8)
    data = encode(Image.fromarray(cmyk, "CMYK"), "TIFF")
    assert decoded_mode(data) == "CMYK"

    np.testing.assert_array_equal(imaging.load_pixels(data, (6, 8)), cmyk_to_rgb(cmyk))


def test_cmyk_jpeg_is_converted_with_the_cmyk_formula() -> None:
    cmyk = blocks([[(10, 100, 200, 50), (0, 0, 0, 0), (200, 20, 0, 100)], [(0, 0, 0, 255), (90, 0, 90, 0), (0, 160, 160, 30)]])
    data = encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95)
    assert decoded_mode(data) == "CMYK"

    actual = imaging.load_pixels(data, cmyk.shape[:2]).astype(int)
    assert np.abs(actual - cmyk_to_rgb(cmyk).astype(int)).max() <= 6  # JPEG's loss on flat blocks


@pytest.mark.parametrize(("levels", "mode", "expected"), [
    (np.array([[0, 1, 127, 254, 255]], dtype=np.uint8), "L", [[0, 1, 127, 254, 255]]),
    (np.array([[False, True, False, True, True]]), "1", [[0, 255, 0, 255, 255]]),
], ids=["L", "1"])
def test_grayscale_and_bilevel_become_gray_rgb(levels: np.ndarray, mode: str, expected: list[list[int]]) -> None:
    data = encode(Image.fromarray(levels), "PNG")
    assert decoded_mode(data) == mode

    np.testing.assert_array_equal(imaging.load_pixels(data, (1, 5)), gray_to_rgb(np.array(expected)))


def triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a bilinear (triangle) filter that widens by the shrink factor.

    That widening is what makes a bilinear shrink antialiased: each output pixel averages every
    input pixel under it instead of sampling the nearest two.
    """
    scale = n_in / n_out
    support = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale  # output pixel centres, in input pixel units
    weights = np.clip(1 - np.abs(np.arange(n_in) + 0.5 - centres[:, None]) / support, 0, None)
    return weights / weights.sum(axis=1, keepdims=True)


def bilinear(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`pixels` resized to `size` = (height, width) with a separable triangle filter, in float."""
    rows = np.einsum("yi,ijc->yjc", triangle_weights(pixels.shape[0], size[0]), pixels.astype(float))
    return np.einsum("xj,yjc->yxc", triangle_weights(pixels.shape[1], size[1]), rows)


@pytest.mark.parametrize(("source", "size"), [
    ((4, 6), (9, 11)),  # enlarge
    ((12, 18), (8, 13)),  # shrink by less than 2
    ((18, 12), (13, 8)),  # portrait: size is (height, width)
    ((10, 30), (10, 20)),  # one side only
], ids=["enlarge", "shrink", "portrait", "one-side"])
def test_resize_is_bilinear_to_height_by_width(source: tuple[int, int], size: tuple[int, int]) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (*source, 3), dtype=np.uint8)
    actual = imaging.load_pixels(encode(Image.fromarray(pixels), "PNG"), size)

    assert actual.shape == (*size, 3) and actual.dtype == np.uint8
    # Pillow rounds to 8 bits between its horizontal and vertical passes: at most 1 level apart.
    assert np.abs(actual - bilinear(pixels, size)).max() <= 1


@pytest.mark.parametrize("format", ["PNG", "JPEG"])
def test_a_large_shrink_stays_close_to_bilinear(format: str) -> None:
    # For large shrinks the decoder first reduces by a whole factor (JPEG draft, Pillow's reduce)
    # to save time and memory; on a smooth photo the result stays within a few levels of a plain
    # bilinear resize.
    y, x = np.mgrid[0:240, 0:320]
    smooth = np.stack([x * 255 // 319, y * 255 // 239, (x + y) * 255 // 558], axis=-1).astype(np.uint8)
    data = encode(Image.fromarray(smooth), format, **({"quality": 95} if format == "JPEG" else {}))
    actual = imaging.load_pixels(data, (48, 40))

    assert actual.shape == (48, 40, 3)
    assert np.abs(actual - bilinear(smooth, (48, 40))).max() <= 4
