"""The 3D step's mesh: marching cubes, the face budget, the UV atlas and its baked texture, and the GLB
as trimesh (and so viewers) reads it. The views are exact renders of a sphere, red above the
equator and blue below, so every colour in the texture has a known right answer."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import ray_sphere_views
from sgm.recon.cameras import orbit_cameras
from sgm.recon.export import Mesh, read_mesh, write_glb
from sgm.recon.isosurface import marching_cubes
from sgm.recon.mesh import color_vertices, mesh_from_sdf
from sgm.recon.simplify import simplify_to_faces
from sgm.recon.texture import bake_texture, unwrap

trimesh = pytest.importorskip("trimesh")
RADIUS = 0.4
RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)


def sphere(resolution: int, method: str) -> Mesh:
    return mesh_from_sdf(lambda p: np.linalg.norm(p, axis=-1) - RADIUS, resolution, method=method)


def edge_counts(faces: np.ndarray) -> set[int]:
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    return set(np.unique(np.unique(edges, axis=0, return_counts=True)[1]).tolist())


def test_marching_cubes_gives_a_closed_outward_sphere_with_fewer_faces_than_tetrahedra():
    cubes, tetrahedra = sphere(48, "cubes"), sphere(48, "tetrahedra")
    assert edge_counts(cubes.faces) == {2}  # closed, manifold
    assert math.isclose(cubes.volume(), 4 / 3 * math.pi * RADIUS ** 3, rel_tol=0.01)  # positive: outward faces
    assert math.isclose(cubes.area(), 4 * math.pi * RADIUS ** 2, rel_tol=0.02)
    assert len(cubes.faces) < 0.5 * len(tetrahedra.faces)
    assert len(marching_cubes(np.ones((4, 4, 4)), np.zeros(3), 1.0).faces) == 0


@pytest.mark.parametrize("budget", [500, 3000])
def test_simplification_meets_the_face_budget_and_keeps_the_shape(budget):
    full = sphere(64, "cubes")
    assert len(full.faces) > 3 * budget
    small = simplify_to_faces(full, budget)
    assert abs(len(small.faces) - budget) <= 0.05 * budget
    assert math.isclose(small.volume(), full.volume(), rel_tol=0.03)
    assert simplify_to_faces(small, budget * 10) is small  # within the budget: unchanged


@pytest.fixture(scope="module")
def sphere_views():
    """16 views around the sphere (and 4 from above and below), colours from the world point hit."""
    cameras = orbit_cameras(20.0, 16, width=64, height=64)
    depths, hits, points = ray_sphere_views(cameras, RADIUS)
    colors = np.where((points[..., 2] > 0)[..., None], RED, BLUE)
    colors = np.where(hits[..., None], colors, 1.0)
    return colors, np.where(hits, depths, np.nan), cameras


def test_textured_glb_has_uvs_the_baked_texture_and_the_face_budget(sphere_views, tmp_path):
    colors, depths, cameras = sphere_views
    budget, size = 2000, 256
    mesh = simplify_to_faces(sphere(48, "cubes"), budget)
    mesh = Mesh(mesh.vertices, mesh.faces, color_vertices(mesh, colors, depths, cameras, tolerance=0.02))
    textured = bake_texture(unwrap(mesh), colors, depths, cameras, tolerance=0.02, size=size)
    path = write_glb(textured, tmp_path / "mesh.glb")

    shape = trimesh.load(path, force="mesh", process=False)  # as a viewer reads it
    assert shape.visual.kind == "texture"
    uv = np.asarray(shape.visual.uv)
    assert uv.shape == (len(shape.vertices), 2) and uv.min() >= 0.0 and uv.max() <= 1.0
    image = shape.visual.material.baseColorTexture
    assert image.size == (size, size)
    assert abs(len(shape.faces) - budget) <= 0.05 * budget
    # trimesh samples the texture at each vertex's UV (its own convention): the sphere's colours
    sampled = np.asarray(shape.visual.to_color().vertex_colors)[:, :3] / 255.0
    height = np.asarray(shape.vertices)[:, 1]  # file Y is world z
    assert np.abs(sampled[height > 0.05] - RED).max() < 0.1
    assert np.abs(sampled[height < -0.05] - BLUE).max() < 0.1
    assert b"KHR_materials_unlit" in path.read_bytes()[:4096]  # the JSON chunk: viewers add no lighting


def test_texels_no_view_sees_fall_back_to_the_vertex_colours(sphere_views, tmp_path):
    colors, depths, cameras = sphere_views
    mesh = simplify_to_faces(sphere(32, "cubes"), 800)
    green = np.tile([0.0, 1.0, 0.0], (len(mesh.vertices), 1))
    unseen = np.full_like(depths, np.nan)  # no view has a depth: none sees any texel
    textured = bake_texture(unwrap(Mesh(mesh.vertices, mesh.faces, green)), colors, unseen, cameras, 0.02, size=64)
    assert np.all(textured.texture == (0, 255, 0))
    # without a texture the GLB carries the vertex colours
    back = read_mesh(write_glb(Mesh(mesh.vertices, mesh.faces, green), tmp_path / "colours.glb"))
    assert back.uv is None and np.allclose(back.colors, green)
