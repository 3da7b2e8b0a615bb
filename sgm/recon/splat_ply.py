"""The fitted Gaussians as a standard 3D Gaussian splatting ``.ply`` (the layout of the original
3DGS release, which splat viewers and editors read).

One binary little-endian ``vertex`` element, float32 properties in this order::

    x y z                 centre (file units = world units)
    nx ny nz              0 (unused, kept for the layout)
    f_dc_0 f_dc_1 f_dc_2  degree-0 spherical-harmonic colour: (rgb - 0.5) / SH_C0
    f_rest_0..f_rest_44   higher SH degrees (up to 3): 0, our colours do not depend on the view
    opacity               logit of the peak opacity (viewers apply a sigmoid)
    scale_0 scale_1 scale_2   log of the standard deviations along the local axes (viewers apply exp)
    rot_0 rot_1 rot_2 rot_3   unit quaternion (w, x, y, z), local-to-file rotation

Positions and rotations are in the Y-up file frame of :mod:`sgm.recon.export` (the mesh files'
frame), so the ``.ply`` and ``mesh.glb`` line up in a viewer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sgm.recon.export import WORLD_TO_FILE
from sgm.recon.gaussians import GaussianScene

SH_C0 = 0.28209479177387814  # the degree-0 real spherical harmonic, 1 / (2 sqrt(pi))
SH_REST = 45  # coefficients of degrees 1..3 over three colour channels
# The rotation WORLD_TO_FILE as a unit quaternion (w, x, y, z): -120 degrees about (1, 1, 1).
WORLD_TO_FILE_QUAT = (0.5, -0.5, -0.5, -0.5)
PROPERTIES = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
              + [f"f_rest_{k}" for k in range(SH_REST)]
              + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def quaternion_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a * b`` of quaternions ``(..., 4)`` as ``(w, x, y, z)`` (rotation ``b`` then ``a``)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz,
                        aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx,
                        aw * bz + ax * by - ay * bx + az * bw], dim=-1)


def splat_attributes(scene: GaussianScene) -> np.ndarray:
    """float32 ``(N, len(PROPERTIES))``: the scene's Gaussians as the columns of :data:`PROPERTIES`."""
    scene = scene.to("cpu")
    n = len(scene)
    means = scene.means.double().numpy() @ WORLD_TO_FILE.T
    quats = quaternion_product(torch.tensor(WORLD_TO_FILE_QUAT, dtype=torch.float64).expand(n, 4),
                               scene.unit_quats().double())
    columns = [means, np.zeros((n, 3)), ((scene.colors().double() - 0.5) / SH_C0).numpy(), np.zeros((n, SH_REST)),
               scene.opacity_logits.double().numpy()[:, None], scene.log_scales.double().numpy(), quats.numpy()]
    return np.concatenate(columns, axis=1).astype(np.float32)


def write_splat_ply(scene: GaussianScene, path: str | Path) -> Path:
    """Write ``scene`` as a binary 3DGS ``.ply`` (see the module docstring for the layout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = splat_attributes(scene)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(values)}"]
    header += [f"property float {name}" for name in PROPERTIES] + ["end_header"]
    with path.open("wb") as handle:
        handle.write(("\n".join(header) + "\n").encode("ascii"))
        handle.write(values.astype("<f4").tobytes())
    return path
