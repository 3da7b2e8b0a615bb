"""benchmarks/demo_sharpening.py's image operations, against values worked out by hand."""
from __future__ import annotations

import sys

import numpy as np

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import demo_sharpening  # noqa: E402


def test_moved_views_shift_right_with_white_coming_in():
    views = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    out = demo_sharpening.moved(views, 1)
    assert (out[:, :, 0] == 255).all()
    assert np.array_equal(out[:, :, 1:], views[:, :, :3])


def test_unsharp_mask_raises_an_edge_and_a_blur_softens_it():
    # A vertical step 50 | 200: the unsharp mask v + a (v - blur v) overshoots on both sides of the
    # edge (below 50 left of it, above 200 right of it) and leaves flat regions alone; the blur puts
    # values between the two sides at the edge.
    views = np.full((1, 16, 16, 3), 50, np.uint8)
    views[:, :, 8:] = 200
    sharp = demo_sharpening.filtered(views, "unsharp", 1.0, 1.0)
    soft = demo_sharpening.filtered(views, "blur", 1.0, 0.0)
    assert sharp[0, 8, 7, 0] < 50 and sharp[0, 8, 8, 0] > 200
    assert sharp[0, 8, 0, 0] == 50 and sharp[0, 8, 15, 0] == 200
    assert 50 < soft[0, 8, 7, 0] < soft[0, 8, 8, 0] < 200
    assert np.array_equal(demo_sharpening.filtered(views, "unsharp", 1.0, 0.0), views)
