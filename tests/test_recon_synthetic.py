"""End to end on a known object: 16 views -> Gaussians -> novel views -> mesh -> the paper's measures.

The object (``random_object(3)``: six spheres, boxes and a cylinder, textured) is traced at
64 x 64 px on one ring at elevation 20 degrees, written like the pipeline's stage-2 output
(RGB on white plus masks), reconstructed on the CPU with a small budget, and evaluated
with ``scripts/eval_3d.py`` on 8 held-out views (between the input azimuths and on the
rings at 0 and 40 degrees) and against the exact surface of its SDF.

Thresholds (measured on this set-up: PSNR 26.4 dB, Chamfer 0.016, IoU 0.90; with the
azimuth sign flipped PSNR 15.5 dB, Chamfer 0.048, IoU 0.68; with the elevation sign flipped
PSNR 16.1 dB, Chamfer 0.047, IoU 0.68):

* held-out PSNR >= 23 dB: an RMS error of 7 % of the range, what remains when texture
  edges are placed to about a pixel at 64 px; a mirrored or misplaced object stays below 17.
* Chamfer <= 0.03 (normalised units, object's longest side 1): about one voxel of the
  64^3 fusion grid (0.026 normalised); the floor from sampling 10k points is ~0.009.
* volume IoU >= 0.8 on a 64^3 grid: even depth maps from the exact SDF fused at this
  resolution reach only ~0.9 on thin parts, since half a voxel of erosion costs several
  per cent; a wrong convention distorts the solid far beyond that (0.68).

The same procedure with the azimuth sign flipped in the views' cameras.json (the object
turning the wrong way) must miss all three thresholds.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sgm.data.synthetic_orbits import random_object, render_views
from sgm.recon.cameras import cameras_at, orbit_cameras
from sgm.recon.fit import FitConfig
from sgm.recon.reconstruct import ReconstructConfig, reconstruct

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RESOLUTION, ELEVATION, OBJECT_SEED = 64, 20.0, 3
MIN_PSNR, MAX_CHAMFER, MIN_IOU = 23.0, 0.03, 0.8
CONFIG = ReconstructConfig(
    fit=FitConfig(iterations=300, num_init=3000, max_gaussians=5000, init_resolution=64, densify_from=50,
                  densify_every=75, densify_until_fraction=0.75, seed=0, backend="torch"),
    resolution=None, num_novel_views=8, mesh_resolution=64, texture_size=256)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trace(spec, cameras) -> np.ndarray:
    """uint8 RGBA renders (V, H, W, 4)."""
    return np.stack([(v.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for v in render_views(spec, cameras)])


@pytest.fixture(scope="module")
def single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory, single_thread) -> dict[str, Path]:
    """Pipeline-style training views (views/ + masks/) and a ground-truth folder of held-out views."""
    root = tmp_path_factory.mktemp("synthetic")
    spec = random_object(OBJECT_SEED)
    rgba = _trace(spec, orbit_cameras(ELEVATION, 16, width=RESOLUTION, height=RESOLUTION))
    (root / "views").mkdir()
    (root / "masks").mkdir()
    for k, pixels in enumerate(rgba):
        alpha = pixels[..., 3:].astype(np.float32) / 255.0
        white = (pixels[..., :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
        Image.fromarray(white).save(root / "views" / f"view_{k:02d}.png")
        mask = np.where(alpha[..., 0] >= 0.5, 255, 0).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"mask_{k:02d}.png")
    held = cameras_at([20.0] * 4 + [0.0, 0.0, 40.0, 40.0], [11.25, 101.25, 191.25, 281.25, 45.0, 225.0, 135.0, 315.0],
                      width=RESOLUTION, height=RESOLUTION)
    gt = root / "gt"
    gt.mkdir()
    names = [f"{k:03d}.png" for k in range(len(held))]
    for name, pixels in zip(names, _trace(spec, held)):
        Image.fromarray(pixels, mode="RGBA").save(gt / name)
    (gt / "cameras.json").write_text(json.dumps({**held.to_json(), "files": names}))
    (gt / "object.json").write_text(json.dumps(spec.to_json()))
    return {"views": root / "views", "gt": gt}


def _reconstruct_and_evaluate(views: Path, gt: Path, out: Path) -> dict:
    reconstruct(views, ELEVATION, out, CONFIG, device="cpu", progress=False)
    return _script("eval_3d").main(["--recon", str(out), "--gt", str(gt), "--device", "cpu", "--num_points", "10000",
                                    "--iou_resolution", "64", "--gt_mesh_resolution", "96"])


def test_reconstruction_of_known_object_passes_thresholds(scene_files, tmp_path, single_thread):
    results = _reconstruct_and_evaluate(scene_files["views"], scene_files["gt"], tmp_path / "out")
    views, mesh = results["views"], results["mesh"]
    assert views["num_views"] == 8
    assert views["psnr"] >= MIN_PSNR, results
    assert mesh["chamfer"] <= MAX_CHAMFER, results
    assert mesh["volume_iou"] >= MIN_IOU, results
    out = tmp_path / "out"
    written = json.loads((out / "views" / "cameras.json").read_text())
    assert written["roles"].count("novel") == 8 and (out / "views" / "view_novel_07.png").is_file()
    assert (out / "mesh.glb").stat().st_size > 0 and (out / "masks" / "mask_novel_00.png").is_file()


def test_wrong_camera_convention_fails_the_same_thresholds(scene_files, tmp_path, single_thread):
    """Azimuth sign flipped: the views are declared to turn clockwise instead of counter-clockwise."""
    views = tmp_path / "flipped" / "views"
    views.mkdir(parents=True)
    for path in scene_files["views"].glob("view_*.png"):
        (views / path.name).write_bytes(path.read_bytes())
    (views.parent / "masks").mkdir()
    for path in (scene_files["views"].parent / "masks").glob("mask_*.png"):
        (views.parent / "masks" / path.name).write_bytes(path.read_bytes())
    ring = orbit_cameras(ELEVATION, 16, width=RESOLUTION, height=RESOLUTION)
    wrong = cameras_at(ring.elevations_deg, -ring.azimuths_deg, width=RESOLUTION, height=RESOLUTION)
    names = [f"view_{k:02d}.png" for k in range(16)]
    (views / "cameras.json").write_text(json.dumps({**wrong.to_json(), "files": names}))
    results = _reconstruct_and_evaluate(views, scene_files["gt"], tmp_path / "out")
    assert results["views"]["psnr"] < MIN_PSNR, results
    assert results["mesh"]["chamfer"] > MAX_CHAMFER, results
    assert results["mesh"]["volume_iou"] < MIN_IOU, results
