"""Camera convention, procedural objects, the sphere tracer and the orbit-folder script."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sgm.data.synthetic_orbits import (
    SIZE_FIELDS,
    ObjectSpec,
    Primitive,
    RenderSettings,
    Texture,
    random_object,
    render_views,
)
from sgm.recon.cameras import (
    DEFAULT_DISTANCE,
    DEFAULT_FOV_DEG,
    OrbitCameras,
    camera_position,
    cameras_at,
    intrinsics,
    look_at,
    orbit_azimuths_deg,
    orbit_cameras,
    orbit_rings,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "render_synthetic_orbits.py"
IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _script():
    spec = importlib.util.spec_from_file_location("render_synthetic_orbits", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _probe(center, radius=0.08) -> ObjectSpec:
    """A single white sphere."""
    texture = Texture("solid", (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    return ObjectSpec("probe", 0, 0.0, (Primitive("sphere", tuple(center), IDENTITY, (radius,), texture),))


def _alpha_centroid(rgba: torch.Tensor) -> tuple[float, float]:
    """(u, v) pixel coordinates of the alpha-weighted centre of an RGBA image (4, H, W)."""
    alpha = rgba[3].double()
    rows = torch.arange(alpha.shape[0], dtype=torch.float64) + 0.5
    cols = torch.arange(alpha.shape[1], dtype=torch.float64) + 0.5
    total = alpha.sum()
    return float((alpha.sum(0) * cols).sum() / total), float((alpha.sum(1) * rows).sum() / total)


# ----------------------------------------------------------------------------- cameras


def test_orbit_azimuths_start_at_zero_and_step_evenly():
    az = orbit_azimuths_deg(16)
    assert az[0] == 0.0 and np.allclose(np.diff(az), 22.5) and az[-1] == 337.5


def test_camera_position_elevation_and_azimuth_directions():
    assert np.allclose(camera_position(0, 0, 2.0), [2, 0, 0])
    assert np.allclose(camera_position(0, 90, 1.0), [0, 1, 0])  # counter-clockwise seen from +z
    assert camera_position(30, 0, 1.0)[2] > 0  # positive elevation = above the equator
    assert np.allclose(np.linalg.norm(camera_position([-10, 40], [0, 200], 1.5), axis=-1), 1.5)


def test_look_at_is_a_proper_rotation_with_opencv_axes():
    eye = camera_position(20.0, 67.5, DEFAULT_DISTANCE)
    rotation, translation = look_at(eye)
    assert np.allclose(rotation @ rotation.T, np.eye(3)) and np.isclose(np.linalg.det(rotation), 1.0)
    assert np.allclose(rotation @ np.zeros(3) + translation, [0, 0, DEFAULT_DISTANCE])  # origin straight ahead
    assert (rotation @ np.array([0, 0, 1.0]))[1] < 0  # world up points to image up (-y)
    with pytest.raises(ValueError):
        look_at([0.0, 0.0, 2.0])


def test_intrinsics_vertical_fov():
    K = intrinsics(60.0, 80, 40)
    assert np.isclose(K[1, 1] * math.tan(math.radians(30)), 20.0) and K[0, 0] == K[1, 1]
    assert (K[0, 2], K[1, 2]) == (40.0, 20.0)
    assert np.isclose(DEFAULT_FOV_DEG, 49.1343, atol=1e-3)


def test_projection_follows_documented_convention():
    cams = orbit_cameras(0.0, 4, width=64, height=64)  # azimuths 0, 90, 180, 270
    uv, depth = cams.project(np.array([[0, 0.3, 0], [0.3, 0, 0], [0, 0, 0.3]]))
    assert uv[0, 0, 0] > 32 and uv[2, 0, 0] < 32  # +y: right at 0, left at 180
    assert uv[1, 1, 0] < 32 and uv[3, 1, 0] > 32  # +x: left at 90, right at 270
    assert np.all(uv[:, 2, 1] < 32)  # +z: above centre
    assert np.all(depth > 0)


def test_cameras_json_round_trip_and_ring_order():
    cams = orbit_rings((-10, 0, 10, 20, 30, 40), 16, width=32, height=32)
    back = OrbitCameras.from_json(json.loads(json.dumps(cams.to_json())))
    for name in ("elevations_deg", "azimuths_deg", "K", "world_to_camera"):
        assert np.array_equal(getattr(back, name), getattr(cams, name))
    assert np.array_equal(cams.elevations_deg[16 * 3:16 * 4], np.full(16, 20.0))
    assert np.allclose(cams.centers, camera_position(cams.elevations_deg, cams.azimuths_deg))
    with pytest.raises(ValueError):
        OrbitCameras.from_json({**cams.to_json(), "convention": "other"})


# ----------------------------------------------------------------------------- objects


@pytest.mark.parametrize("kind", sorted(SIZE_FIELDS))
def test_primitive_sdf_is_negative_inside_and_bounded_by_extent(kind):
    size = {"sphere": (0.3,), "box": (0.2, 0.3, 0.1), "round_box": (0.2, 0.3, 0.15, 0.05), "torus": (0.3, 0.1),
            "capsule": (0.2, 0.1), "cylinder": (0.2, 0.15)}[kind]
    prim = Primitive(kind, (0.1, -0.2, 0.05), IDENTITY, size, Texture("solid", (0, 0, 0), (0, 0, 0)))
    inside = torch.tensor([[0.1 + (0.3 if kind == "torus" else 0.0), -0.2, 0.05]], dtype=torch.float64).T
    assert prim.sdf(inside).item() < 0
    far = torch.tensor([[0.1, -0.2, 2.05]], dtype=torch.float64).T
    assert 2.0 - prim.extent() - 1e-9 <= prim.sdf(far).item() <= 2.0


def test_object_spec_is_deterministic_json_round_trips_and_fits():
    spec = random_object(11)
    assert spec.to_json() == random_object(11).to_json()
    assert spec.to_json() != random_object(12).to_json()
    back = ObjectSpec.from_json(json.loads(json.dumps(spec.to_json())))
    points = torch.rand(500, 3, dtype=torch.float64) * 1.6 - 0.8
    assert torch.allclose(back.sdf(points), spec.sdf(points))
    axis = torch.linspace(-0.75, 0.75, 40, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    inside = grid[spec.sdf(grid) < 0]
    cell = float(axis[1] - axis[0])
    extent = float((inside.max(0).values - inside.min(0).values).max())
    radius = float(inside.norm(dim=1).max())
    assert extent <= 1 + cell and radius <= 0.6 + cell
    assert extent >= 1 - 2 * cell or radius >= 0.6 - 2 * cell  # SyncDreamer scale unless shrunk to fit


# ----------------------------------------------------------------------------- renderer


def test_render_is_deterministic_with_partial_alpha_and_distinct_views():
    spec = random_object(3)
    cams = orbit_cameras(20.0, 16, width=32, height=32)
    views = list(render_views(spec, cams, indices=[0, 4]))
    again = list(render_views(random_object(3), cams, indices=[0, 4]))
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    alpha = views[0][3]
    assert alpha.min() == 0 and alpha.max() == 1 and ((alpha > 0) & (alpha < 1)).any()
    assert (views[0] - views[1]).abs().mean() > 0.02
    (hard,) = render_views(spec, cams, RenderSettings(edge_samples=1), indices=[0])
    assert set(hard[3].unique().tolist()) == {0.0, 1.0}


def test_centred_sphere_lands_on_image_centre_with_projected_size():
    cams = cameras_at([-10, 0, 40], [0, 135, 300], width=48, height=48)
    radius = 0.3
    for rgba in render_views(_probe((0, 0, 0), radius), cams):
        u, v = _alpha_centroid(rgba)
        assert abs(u - 24) < 0.05 and abs(v - 24) < 0.05
        radius_px = cams.K[0, 1, 1] * radius / math.sqrt(DEFAULT_DISTANCE**2 - radius**2)
        assert abs(float(rgba[3].sum()) / (math.pi * radius_px**2) - 1) < 0.02


def test_cube_coverage_matches_its_projected_front_face():
    half = 0.2
    texture = Texture("solid", (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    cube = ObjectSpec("cube", 0, 0.0, (Primitive("box", (0.0, 0.0, 0.0), IDENTITY, (half,) * 3, texture),))
    cams = cameras_at([0], [0], width=40, height=40)
    (rgba,) = render_views(cube, cams)
    side_px = 2 * cams.K[0, 1, 1] * half / (DEFAULT_DISTANCE - half)  # camera on +x faces the x = +half face
    assert abs(float(rgba[3].sum()) / side_px**2 - 1) < 0.01


@pytest.mark.parametrize("center", [(0.0, 0.35, 0.0), (0.35, 0.0, 0.0), (0.0, 0.0, 0.35)])
def test_off_centre_probe_appears_where_the_cameras_project_it(center):
    cams = orbit_cameras(0.0, 4, width=48, height=48)
    expected, _ = cams.project(np.array([center]))
    for k, rgba in enumerate(render_views(_probe(center), cams)):
        u, v = _alpha_centroid(rgba)
        assert abs(u - expected[k, 0, 0]) < 0.3 and abs(v - expected[k, 0, 1]) < 0.3
    if center[1] > 0:  # +y: right of centre at azimuth 0, left at 180
        assert expected[0, 0, 0] > 30 and expected[2, 0, 0] < 18
    if center[0] > 0:  # +x: left at azimuth 90
        assert expected[1, 0, 0] < 18


# ----------------------------------------------------------------------------- script


def test_script_layout_refusal_and_overwrite(tmp_path):
    script = _script()
    argv = ["--out", str(tmp_path), "--num-objects", "1", "--resolution", "16", "--seed", "5"]
    assert script.main(argv) == 0
    (folder,) = tmp_path.iterdir()
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == [f"{i:03d}.png" for i in range(96)]
    record = json.loads((folder / "cameras.json").read_text())
    cams = OrbitCameras.from_json(record)
    assert np.array_equal(cams.world_to_camera, orbit_rings(width=16, height=16).world_to_camera)
    assert record["files"] == pngs and record["resolution"] == 16
    for r, elevation in enumerate((-10, 0, 10, 20, 30, 40)):
        assert np.all(cams.elevations_deg[16 * r:16 * r + 16] == elevation)
        assert np.array_equal(cams.azimuths_deg[16 * r:16 * r + 16], orbit_azimuths_deg(16))
    spec = ObjectSpec.from_json(json.loads((folder / "object.json").read_text()))
    assert spec.name == folder.name
    before = (folder / "000.png").read_bytes()
    assert script.main(argv) == 1  # refuses a non-empty folder
    assert (folder / "000.png").read_bytes() == before
    assert script.main([*argv, "--overwrite", "--azimuths", "4", "--elevations", "0", "30"]) == 0
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{i:03d}.png" for i in range(8)]
