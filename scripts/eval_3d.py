"""The paper's 3D measures of a reconstruction against ground truth.

    python scripts/eval_3d.py --recon outputs/a/3d --gt data/synthetic/synthetic_0_00000

--recon is a folder written by scripts/reconstruct_3d.py (gaussians.pt, mesh.obj,
views/cameras.json). --gt is an object folder of scripts/render_synthetic_orbits.py (RGBA
views, cameras.json, object.json).

* Held-out views: every ground-truth view whose camera is not one of the reconstruction's
  input cameras (same elevation and azimuth within 0.01 degrees) is rendered from the fitted
  Gaussians at its resolution and compared on white: PSNR (dB) and SSIM.
* Meshes: the predicted mesh against the ground-truth surface (the exact SDF of object.json
  through marching tetrahedra, or --gt_mesh), both normalised (bounding box centred at the
  origin, longest side 1): Chamfer distance (mean of the two one-way mean nearest-neighbour
  distances) and volume IoU. See sgm/recon/metrics.py.

Prints the measures and writes them to --output (default RECON/metrics.json).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sgm.cli import run_main
from sgm.common.devices import resolve_device
from sgm.data.synthetic_orbits import ObjectSpec
from sgm.recon.cameras import OrbitCameras, cameras_at
from sgm.recon.export import Mesh, read_mesh
from sgm.recon.gaussians import GaussianScene
from sgm.recon.metrics import image_metrics, mesh_metrics, sdf_surface
from sgm.recon.rasterize import BACKENDS, render_views
from sgm.recon.views import ViewError, read_pixels, split_rgba

ANGLE_TOLERANCE_DEG = 0.01


def read_json(path: Path) -> dict:
    """A JSON file's content.

    Raises:
        ViewError: naming a missing or malformed file.
    """
    if not path.is_file():
        raise ViewError(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ViewError(f"{path} is not valid JSON ({err})") from err


def read_cameras(path: Path) -> tuple[dict, OrbitCameras]:
    """The record and cameras of a cameras.json file.

    Raises:
        ViewError: missing, malformed or of another convention.
    """
    record = read_json(path)
    try:
        return record, OrbitCameras.from_json(record)
    except (KeyError, ValueError) as err:
        raise ViewError(f"cannot use {path}: {err}") from err


def same_angles(a: OrbitCameras, b: OrbitCameras) -> np.ndarray:
    """``(len(a), len(b))`` bool: equal elevation and azimuth (modulo 360) within the tolerance."""
    d_elev = np.abs(a.elevations_deg[:, None] - b.elevations_deg[None])
    d_azim = np.abs((a.azimuths_deg[:, None] - b.azimuths_deg[None] + 180.0) % 360.0 - 180.0)
    return (d_elev < ANGLE_TOLERANCE_DEG) & (d_azim < ANGLE_TOLERANCE_DEG)


def input_cameras(recon_dir: Path) -> OrbitCameras:
    """The cameras of the views the reconstruction was fitted to (role ``input`` in views/cameras.json)."""
    record, cameras = read_cameras(recon_dir / "views" / "cameras.json")
    roles = np.asarray(record.get("roles", ["input"] * len(cameras)))
    return cameras_at(cameras.elevations_deg[roles == "input"], cameras.azimuths_deg[roles == "input"],
                      cameras.distance, cameras.fov_deg, cameras.width, cameras.height)


def held_out_views(gt_dir: Path, train: OrbitCameras, max_views: int | None) -> tuple[np.ndarray, OrbitCameras]:
    """Ground-truth images on white ``(V, H, W, 3)`` and cameras of the views not used for fitting."""
    record, cameras = read_cameras(gt_dir / "cameras.json")
    held = np.nonzero(~same_angles(cameras, train).any(axis=1))[0]
    if max_views is not None and len(held) > max_views:
        held = held[np.linspace(0, len(held) - 1, max_views).round().astype(int)]
    if len(held) == 0:
        raise ViewError(f"every view in {gt_dir} was used for fitting: no held-out view to evaluate")
    images, _ = split_rgba(np.stack([read_pixels(gt_dir / record["files"][k]) for k in held]))
    picked = cameras_at(cameras.elevations_deg[held], cameras.azimuths_deg[held], cameras.distance,
                        cameras.fov_deg, cameras.width, cameras.height)
    return images, picked


def ground_truth_mesh(gt_dir: Path, gt_mesh: Path | None, resolution: int) -> Mesh:
    """``gt_mesh`` when given, else the zero level set of ``gt_dir/object.json``'s exact SDF."""
    if gt_mesh is not None:
        return read_mesh(gt_mesh)
    return sdf_surface(ObjectSpec.from_json(read_json(gt_dir / "object.json")), resolution)


def evaluate(recon_dir: Path, gt_dir: Path, pred_mesh: Path | None = None, gt_mesh: Path | None = None,
             max_views: int | None = None, num_points: int = 20000, iou_resolution: int = 128,
             gt_mesh_resolution: int = 128, device: str = "auto", backend: str = "auto", seed: int = 0) -> dict:
    """All measures of one reconstruction as a JSON-ready dict (see the module docstring)."""
    scene = GaussianScene.load(recon_dir / "gaussians.pt", resolve_device(device))
    images, cameras = held_out_views(gt_dir, input_cameras(recon_dir), max_views)
    rendered, _, _ = render_views(scene, cameras, backend=backend)
    mesh = read_mesh(pred_mesh or recon_dir / "mesh.obj")
    target = ground_truth_mesh(gt_dir, gt_mesh, gt_mesh_resolution)
    return {"recon": str(recon_dir), "gt": str(gt_dir), "views": image_metrics(rendered, images),
            "mesh": mesh_metrics(mesh, target, num_points, iou_resolution, seed),
            "normalization": "bounding box centred at the origin, longest side 1"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recon", required=True, type=Path, help="output folder of reconstruct_3d.py")
    parser.add_argument("--gt", required=True, type=Path, help="ground-truth object folder (cameras.json, object.json)")
    parser.add_argument("--pred_mesh", type=Path, default=None, help="mesh to evaluate (default RECON/mesh.obj)")
    parser.add_argument("--gt_mesh", type=Path, default=None, help="ground-truth mesh (default: from object.json)")
    parser.add_argument("--max_views", type=int, default=None, help="evaluate at most this many held-out views")
    parser.add_argument("--num_points", type=int, default=20000, help="surface samples per mesh for Chamfer")
    parser.add_argument("--iou_resolution", type=int, default=128, help="voxels per axis for volume IoU")
    parser.add_argument("--gt_mesh_resolution", type=int, default=128, help="grid of the ground-truth SDF mesh")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="rasteriser for the held-out views")
    parser.add_argument("--seed", type=int, default=0, help="seed of the surface sampling")
    parser.add_argument("--output", type=Path, default=None, help="results JSON (default RECON/metrics.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    results = evaluate(args.recon, args.gt, args.pred_mesh, args.gt_mesh, args.max_views, args.num_points,
                       args.iou_resolution, args.gt_mesh_resolution, args.device, args.backend, args.seed)
    output = args.output or args.recon / "metrics.json"
    output.write_text(json.dumps(results, indent=1))
    views, mesh = results["views"], results["mesh"]
    print(f"held-out views: {views['num_views']}  PSNR {views['psnr']:.2f} dB  SSIM {views['ssim']:.4f}")
    print(f"mesh (normalised): Chamfer {mesh['chamfer']:.4f}  volume IoU {mesh['volume_iou']:.4f}")
    print(f"written to {output}")
    return results


if __name__ == "__main__":
    run_main(main)
