"""The orbit convention of :mod:`sgm.common.orbit`, stated against formulas: frame ``k`` of a ring
whose frame 0 is at azimuth ``a0`` sits at ``a0 + k * 360 / 16`` degrees, counter-clockwise seen
from above, for the generated frames (the 3D step's cameras), the renderer's files and the
training clips alike."""
from __future__ import annotations

import numpy as np
import pytest

from sgm.common.orbit import (
    RING_ELEVATIONS_DEG,
    TRAINED_ELEVATION_RANGE_DEG,
    VIEWS_PER_RING,
    frame_camera_deg,
    view_position,
)
from sgm.data.video_dataset import clip_positions
from sgm.recon.cameras import DEFAULT_DISTANCE, orbit_rings
from sgm.recon.views import ring_cameras

STEP_DEG = 360.0 / 16


def expected_centre(elevation_deg: float, azimuth_deg: float) -> np.ndarray:
    """Camera centre of the written-down convention: +x at azimuth 0, +y at 90, +z up."""
    e, a = np.radians(elevation_deg), np.radians(azimuth_deg)
    return DEFAULT_DISTANCE * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])


def wrapped_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` in degrees, wrapped to [-180, 180)."""
    return (np.asarray(a) - np.asarray(b) + 180.0) % 360.0 - 180.0


def test_the_rings_are_sixteen_views_at_six_elevations():
    assert VIEWS_PER_RING == 16
    assert RING_ELEVATIONS_DEG == (-10, 0, 10, 20, 30, 40)
    assert TRAINED_ELEVATION_RANGE_DEG == (-10.0, 40.0)


@pytest.mark.parametrize("elevation", [-10.0, 12.5, 40.0])
def test_generated_frame_k_is_k_steps_counter_clockwise_from_the_input(elevation):
    cameras = ring_cameras(16, elevation, 32, 32)  # the 3D step's cameras of a generated video
    for k in range(16):
        assert frame_camera_deg(k, elevation) == (elevation, k * STEP_DEG)
        assert np.allclose(cameras.centers[k], expected_centre(elevation, k * STEP_DEG))
    turn = np.cross(cameras.centers, np.roll(cameras.centers, -1, axis=0))[:, 2]
    assert np.all(turn > 0)  # each next camera is counter-clockwise seen from +z
    with pytest.raises(ValueError):
        frame_camera_deg(16, elevation)


def test_the_object_turns_clockwise_a_front_point_moves_left():
    cameras = ring_cameras(16, 0.0, 64, 64)
    uv, _ = cameras.project(np.array([[0.3, 0.0, 0.0]]))  # on the front of the object as frame 0 sees it
    assert np.isclose(uv[0, 0, 0], 32.0)
    assert np.all(uv[1:8, 0, 0] < 32.0)


@pytest.mark.parametrize("start", [0, 5, 15])
def test_a_training_clip_frame_k_lies_k_steps_past_its_frame_0(start):
    cameras = orbit_rings(width=16, height=16)  # the renderer's cameras.json, in file order
    for ring, elevation in enumerate(RING_ELEVATIONS_DEG):
        positions = clip_positions(ring, start, 16, 16)
        a0 = start * STEP_DEG
        azimuths = a0 + np.arange(16) * STEP_DEG
        assert np.allclose(wrapped_difference(cameras.azimuths_deg[positions], azimuths), 0.0)
        assert np.all(cameras.elevations_deg[positions] == elevation)
        for k, position in enumerate(positions):
            assert np.allclose(cameras.centers[position], expected_centre(elevation, azimuths[k]))


def test_object_folders_are_ring_major():
    cameras = orbit_rings(width=16, height=16)
    for ring, elevation in enumerate(RING_ELEVATIONS_DEG):
        for azimuth in range(16):
            position = view_position(ring, azimuth)
            assert position == 16 * ring + azimuth
            assert cameras.elevations_deg[position] == elevation
            assert cameras.azimuths_deg[position] == azimuth * STEP_DEG
