"""Shared test fixtures: where the official reference tensors live, the small demo configs and their
pipeline, and folder digests."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def share_cores_between_workers() -> None:
    """Under pytest-xdist, give each worker process (and the programs its tests start) an equal share of
    the cores instead of all of them: the workers' torch thread pools would otherwise contend."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(threads)


share_cores_between_workers()


def reference_dir() -> Path:
    """Folder of the parity cases: ``$HI3D_REFERENCE_DIR`` or ``<repo>/../shared/reference/public``."""
    return Path(os.environ.get("HI3D_REFERENCE_DIR", ROOT.parent / "shared" / "reference" / "public"))


def manifest_path() -> Path:
    """``state_dict_manifest.json`` beside the case folder."""
    return reference_dir().parent / "state_dict_manifest.json"


@pytest.fixture(scope="session")
def manifest() -> dict:
    path = manifest_path()
    if not path.is_file():
        pytest.fail(f"state-dict manifest not found at {path} (set HI3D_REFERENCE_DIR)")
    return json.loads(path.read_text())


def small_demo_configs(folder: Path, size1: int = 64, size2: int = 128) -> tuple[Path, Path]:
    """The demo configs at smaller resolutions (same networks), written to ``folder``: fast CPU runs."""
    from omegaconf import OmegaConf

    from sgm.config import load_config

    paths = []
    for name, size in (("demo-v01.yaml", size1), ("demo-v02.yaml", size2)):
        config = load_config(ROOT / "configs" / name)  # its base: chain resolved
        config.model.params.resolution = size
        OmegaConf.save(config, folder / name)
        paths.append(folder / name)
    return paths[0], paths[1]


@pytest.fixture(scope="session")
def configs(tmp_path_factory) -> tuple[Path, Path]:
    """The stage-1 and stage-2 demo configs at small resolutions (:func:`small_demo_configs`), written once."""
    return small_demo_configs(tmp_path_factory.mktemp("configs"))


@pytest.fixture(scope="session")
def pipe(configs):
    """A CPU :class:`~sgm.pipelines.hi3d.Hi3DPipeline` of :func:`configs`, built once for every test module that
    uses it (they only run it: none changes its settings or models)."""
    from sgm.pipelines.hi3d import Hi3DPipeline

    return Hi3DPipeline.from_configs(*configs, device="cpu")


def digest_tree(root: Path) -> dict[str, str]:
    """SHA-256 of every file below ``root``, by path relative to it: a folder's content, for before/after checks."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def require(available: bool, what: str) -> None:
    """Skip a test whose optional tool is absent; under CI (``$CI`` set) fail instead, since CI installs it."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing, and CI is set: .ci/run must install it")
    pytest.skip(f"{what} is not installed")


@torch.no_grad()
def redraw_zero_parameters(module: torch.nn.Module, std: float = 0.02) -> None:
    """Draw every all-zero parameter of ``module`` from N(0, std^2) with the global RNG.

    A randomly built UNet's zero-initialised output layers would leave most gradients exactly 0.
    """
    for param in module.parameters():
        if not param.any():
            param.normal_(0.0, std)


def write_synthetic_stage2(out: Path, size: int, elevation_deg: float = 20.0, seed: int = 3) -> Path:
    """A stage-2 output folder (``second_step_video/views`` and ``masks``) of a procedural object's
    orbit (:mod:`sgm.data.synthetic_orbits`) at ``size`` px, as the 3D step reads it; returns ``out``."""
    from PIL import Image

    from sgm.data.synthetic_orbits import random_object, render_views
    from sgm.recon.cameras import orbit_cameras

    views, masks = out / "second_step_video" / "views", out / "second_step_video" / "masks"
    views.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    cameras = orbit_cameras(elevation_deg, width=size, height=size)
    for index, rgba in enumerate(render_views(random_object(seed), cameras)):
        rgba = rgba.permute(1, 2, 0).numpy()
        rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
        Image.fromarray((rgb * 255).round().astype(np.uint8)).save(views / f"view_{index:02d}.png")
        Image.fromarray(((rgba[..., 3] > 0.5) * 255).astype(np.uint8)).save(masks / f"mask_{index:02d}.png")
    return out


def ray_sphere_views(cameras, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact views of a sphere of ``radius`` (world units) at the origin, by ray casting per pixel centre.

    Returns:
        depths ``(V, H, W)`` (camera depth along the optical axis, world units; meaningful where hit),
        hits ``(V, H, W)`` bool, and the world points hit ``(V, H, W, 3)``.
    """
    height, width = int(cameras.height), int(cameras.width)
    rows, cols = np.mgrid[:height, :width] + 0.5
    depths, hits, points = [], [], []
    for k in range(len(cameras)):
        rotation, t = cameras.world_to_camera[k, :3, :3], cameras.world_to_camera[k, :3, 3]
        fx, fy, cx, cy = cameras.K[k, 0, 0], cameras.K[k, 1, 1], cameras.K[k, 0, 2], cameras.K[k, 1, 2]
        direction = np.stack([(cols - cx) / fx, (rows - cy) / fy, np.ones_like(cols)], -1)
        d_world, origin = direction @ rotation, -rotation.T @ t
        a, b, c = (d_world ** 2).sum(-1), 2 * d_world @ origin, origin @ origin - radius ** 2
        disc = b * b - 4 * a * c
        depth = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
        depths.append(depth)
        hits.append(disc > 0)
        points.append(origin + depth[..., None] * d_world)
    return np.stack(depths), np.stack(hits), np.stack(points)


def load_script(name: str):
    """The module of ``scripts/<name>.py`` (scripts are not a package), registered in ``sys.modules``."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def render_orbits(out: Path, size: int, count: int = 2, seed: int = 0) -> Path:
    """``count`` procedural objects rendered at ``size`` px into ``out`` on the CPU, without antialiasing
    (scripts/render_synthetic_orbits.py; seconds at 32 px)."""
    code = load_script("render_synthetic_orbits").main(["--out", str(out), "--num-objects", str(count), "--resolution",
                                                        str(size), "--seed", str(seed), "--edge-samples", "1",
                                                        "--device", "cpu"])
    assert code == 0
    return out
