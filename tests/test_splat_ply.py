"""gaussians.ply: the standard 3D Gaussian splatting layout, read back with plyfile and compared with
the scene it came from (covariances rebuilt with scipy's rotations, not ours)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sgm.recon.gaussians import GaussianScene
from sgm.recon.splat_ply import write_splat_ply

plyfile = pytest.importorskip("plyfile")
Rotation = pytest.importorskip("scipy.spatial.transform").Rotation

# The property order of the original 3DGS release's point_cloud.ply (SH degree 3).
EXPECTED = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def random_scene(n: int = 64) -> GaussianScene:
    g = torch.Generator().manual_seed(7)
    return GaussianScene(means=torch.rand(n, 3, generator=g) - 0.5, log_scales=torch.rand(n, 3, generator=g) * 2 - 5,
                         quats=torch.randn(n, 4, generator=g) * 3, opacity_logits=torch.randn(n, generator=g) * 2,
                         color_logits=torch.randn(n, 3, generator=g))


def test_gaussians_ply_has_the_3dgs_layout_and_the_scene_values(tmp_path):
    scene = random_scene()
    path = write_splat_ply(scene, tmp_path / "gaussians.ply")
    data = plyfile.PlyData.read(str(path))
    vertex = data["vertex"]
    assert [p.name for p in vertex.properties] == EXPECTED and len(vertex) == len(scene)
    assert all(p.val_dtype in ("f4", "float32", "float") for p in vertex.properties)
    column = {name: np.asarray(vertex[name], dtype=np.float64) for name in EXPECTED}
    # file axes are Y-up as mesh.glb: file (X, Y, Z) = world (y, z, x)
    world = scene.means.double().numpy()
    np.testing.assert_allclose(np.stack([column["x"], column["y"], column["z"]], 1), world[:, [1, 2, 0]], atol=1e-6)
    sh_c0 = 1.0 / (2.0 * math.sqrt(math.pi))
    rgb = 0.5 + sh_c0 * np.stack([column[f"f_dc_{i}"] for i in range(3)], 1)
    np.testing.assert_allclose(rgb, torch.sigmoid(scene.color_logits).double().numpy(), atol=1e-6)
    assert all(np.all(column[f"f_rest_{i}"] == 0) for i in range(45))
    np.testing.assert_allclose(1 / (1 + np.exp(-column["opacity"])), scene.opacities().double().numpy(), atol=1e-6)
    scales = np.exp(np.stack([column[f"scale_{i}"] for i in range(3)], 1))
    np.testing.assert_allclose(scales, scene.scales().double().numpy(), rtol=1e-5)
    # the covariance a viewer builds (normalised quaternion w, x, y, z) is the scene's, in file axes
    wxyz = np.stack([column[f"rot_{i}"] for i in range(4)], 1)
    rotation = Rotation.from_quat(wxyz[:, [1, 2, 3, 0]]).as_matrix()
    covariance = rotation @ (scales[:, :, None] ** 2 * np.transpose(rotation, (0, 2, 1)))
    permute = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], float)
    expected = permute @ scene.covariances().double().numpy() @ permute.T
    np.testing.assert_allclose(covariance, expected, atol=1e-9, rtol=1e-4)
