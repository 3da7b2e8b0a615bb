"""One ``composite_on_white`` for the two official roundings: PIL's paste (inference) and the
training loader's truncated float formula."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sgm.common.images import composite_on_white


def random_rgba(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (64, 80, 4), dtype=np.uint8)
    rgba[..., 3].flat[:256] = np.arange(256)  # every alpha value occurs
    return rgba


def test_nearest_equals_pil_paste_on_white():
    rgba = random_rgba()
    image = Image.fromarray(rgba, "RGBA")
    white = Image.new("RGB", image.size, (255, 255, 255))
    white.paste(image, mask=image.getchannel("A"))
    np.testing.assert_array_equal(composite_on_white(rgba, "nearest"), np.asarray(white))


def test_truncate_is_the_loader_formula():
    rgba = random_rgba(1)
    c, a = rgba[..., :3] / 255.0, rgba[..., 3:] / 255.0
    exact = (c * a + 1.0 - a) * 255.0
    out = composite_on_white(rgba, "truncate").astype(np.float64)
    # truncated, not rounded: never above the exact value, less than one level below it
    # (float32 arithmetic may land a hair under an integer)
    assert np.all(out <= exact + 1e-3) and np.all(exact - out < 1.0 + 1e-3)
    assert (out != np.round(exact)).any()  # and it does differ from rounding somewhere


def test_opaque_and_transparent_pixels():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0]]], dtype=np.uint8)
    for rounding in ("nearest", "truncate"):
        np.testing.assert_array_equal(composite_on_white(rgba, rounding), [[[10, 20, 30], [255, 255, 255]]])
    with pytest.raises(ValueError, match="rounding"):
        composite_on_white(rgba, "floor")
