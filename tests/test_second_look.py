"""runtime/second_look.py: the box follows the evidence, the crop comes from the full photo."""

from __future__ import annotations

import numpy as np
from PIL import Image

from runtime import second_look

SIZE = (56, 56)


def brightness_model(calls: list[np.ndarray]):
    """A stand-in classifier: class 0's map is the brightness averaged over 8x8 cells (7x7 map),
    class 1's a lower constant; it records the pixels it is given."""
    def predict(pixels: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(pixels)
        brightness = pixels.astype(np.float32).mean(axis=2) / 255
        cells = brightness.reshape(7, 8, 7, 8).mean(axis=(1, 3))
        class_maps = np.stack([cells - 0.1, np.full_like(cells, -0.2)], axis=-1)
        logits = class_maps.mean(axis=(0, 1))
        probabilities = np.exp(logits) / np.exp(logits).sum()
        return {"probabilities": probabilities, "class_maps": class_maps}
    return predict


def photo(width: int, height: int, square: tuple[int, int, int, int]) -> Image.Image:
    """A dark photo with one bright square (left, top, right, bottom)."""
    pixels = np.full((height, width, 3), 20, dtype=np.uint8)
    left, top, right, bottom = square
    pixels[top:bottom, left:right] = 250
    return Image.fromarray(pixels)


def test_the_box_surrounds_a_small_bright_object():
    image = photo(400, 300, (250, 60, 290, 100))
    calls: list[np.ndarray] = []
    look = second_look.look(image, brightness_model(calls), SIZE)
    left, top, right, bottom = look.box
    assert right - left == bottom - top  # square
    assert left <= 250 and top <= 60 and right >= 290 and bottom >= 100  # the object is inside
    assert right - left < 0.6 * 300  # and the box is much smaller than the photo
    assert left >= 0 and top >= 0 and right <= 400 and bottom <= 300
    # A second pass ran on the crop, where the object fills far more of the input.
    assert look.crop is not None and len(calls) == 2
    bright_share = [float(np.mean(pixels.mean(axis=2) > 128)) for pixels in calls]
    assert bright_share[1] > 4 * bright_share[0]
    assert [id(p) for p in look.passes] == [id(look.full), id(look.crop)]


def test_a_box_near_the_edge_stays_inside_the_photo():
    image = photo(300, 200, (0, 170, 25, 200))
    box = second_look.look(image, brightness_model([]), SIZE).box
    assert box[0] == 0 and box[3] == 200 and box[2] > 25 and box[1] < 170


def test_no_second_pass_when_the_evidence_fills_the_photo():
    image = photo(200, 200, (10, 10, 190, 190))
    calls: list[np.ndarray] = []
    look = second_look.look(image, brightness_model(calls), SIZE)
    assert look.crop is None and len(calls) == 1
    assert [id(p) for p in look.passes] == [id(look.full)]


def test_first_pass_only_when_asked():
    calls: list[np.ndarray] = []
    look = second_look.look(photo(400, 300, (250, 60, 290, 100)), brightness_model(calls), SIZE, second=False)
    assert look.crop is None and len(calls) == 1
    assert look.box[2] - look.box[0] < 200  # the suggested crop is still given


def test_no_positive_evidence_suggests_the_whole_photo():
    assert second_look.evidence_box(-np.ones((7, 7)), (320, 240)) == (0, 0, 320, 240)


def test_the_peak_is_found_in_photo_pixels():
    class_map = np.zeros((7, 7))
    class_map[1, 5] = 1.0  # row 1, column 5: x in [5/7, 6/7) of the width, y in [1/7, 2/7) of the height
    x, y = second_look.peak(class_map, (700, 350))
    assert 500 <= x < 600 and 50 <= y < 100


def test_decode_keeps_detail_for_the_crop(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (30, 120, 40)).save(path, quality=80)
    image = second_look.decode(path, (224, 224))
    assert min(image.size) >= 224 * second_look.DECODE_SCALE
    assert max(image.size) < 4000  # but the decoder skipped what a crop cannot use


def test_looks_at_a_batch_give_each_image_its_own_look():
    """The batched form (training and `predict` run Keras on batches) gives what `look` gives one
    image at a time, in two model calls: the whole images, then only the crops that are taken."""
    images = [photo(400, 300, (250, 60, 290, 100)), photo(200, 200, (10, 10, 190, 190)),
              photo(300, 200, (0, 170, 25, 200))]
    calls: list[np.ndarray] = []
    one_by_one = brightness_model([])

    def batched(pixels: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(pixels)
        outputs = [one_by_one(image) for image in pixels]
        return {name: np.stack([o[name] for o in outputs]) for name in outputs[0]}

    looks = second_look.looks(images, batched, SIZE)
    assert [len(pixels) for pixels in calls] == [3, 2]  # the square photo filled with evidence needs no crop
    for image, look in zip(images, looks, strict=True):
        alone = second_look.look(image, brightness_model([]), SIZE)
        assert look.box == alone.box and (look.crop is None) == (alone.crop is None)
        for ours, theirs in zip(look.passes, alone.passes, strict=True):
            assert all(np.allclose(ours[name], theirs[name]) for name in theirs)
    assert second_look.looks([], batched, SIZE) == [] and len(calls) == 2  # nothing to look at: no call
