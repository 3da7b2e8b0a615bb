"""Views -> 3D in one call: fit Gaussians, render novel views, fuse a coloured mesh, write everything.

Output folder::

    OUT/views/view_XX.png, view_novel_XX.png, cameras.json   inputs (as fitted) and novel views
    OUT/masks/mask_XX.png, mask_novel_XX.png                 their masks
    OUT/gaussians.pt                                         the fitted scene (GaussianScene.load)
    OUT/gaussians.ply                                        the same, standard 3DGS layout (sgm.recon.splat_ply)
    OUT/mesh.glb                                             UV-textured mesh, Y-up (see sgm.recon.export)
    OUT/mesh.obj                                             the same surface with vertex colours
    OUT/report.json                                          settings, counts, timings

Progress: ``reconstruct(..., callback=...)`` reports every step of the whole run to one
:data:`~sgm.modules.diffusionmodules.sampling.StepCallback`, ``callback(step_index, total_steps)``,
as the diffusion samplers do (see :func:`reconstruct` for what a step is).

Example::

    from sgm.recon.reconstruct import ReconstructConfig, reconstruct
    result = reconstruct("outputs/a", elevation_deg=10, output_dir="outputs/a/3d")
    print(result.mesh_glb)
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sgm.common.devices import resolve_device
from sgm.common.errors import OutputExistsError
from sgm.common.progress import StepCallback
from sgm.recon.cameras import OrbitCameras
from sgm.recon.export import Mesh, write_glb, write_obj
from sgm.recon.fit import FitConfig, FitResult, fit_gaussians
from sgm.recon.gaussians import GaussianScene
from sgm.recon.mesh import color_vertices, fuse_depths, mesh_from_volume, reject_depth_outliers
from sgm.recon.novel_views import NovelViews, novel_view_cameras, render_novel_views, write_view_folder
from sgm.recon.rasterize import render_views
from sgm.recon.simplify import simplify_to_faces
from sgm.recon.splat_ply import write_splat_ply
from sgm.recon.texture import bake_texture, unwrap
from sgm.recon.views import ViewError, ViewSet, load_views, resize_views

log = logging.getLogger(__name__)
# Views rendered for meshing (the novel views too, since they are fused) use the plain-PyTorch
# rasteriser on any device: it gives the median depth, while gsplat gives only the expected
# depth, which averages a surface with whatever shows through a gap in it and lets the fusion
# carve tunnels (one 96 px scene fused at 128^3: Chamfer 0.020 with expected, 0.016 with median
# depths).
DEPTH_BACKEND = "torch"
OUTPUT_NAMES = ("views", "masks", "gaussians.pt", "gaussians.ply", "mesh.obj", "mesh.glb", "report.json")
DEFAULT_MAX_FACES = 50_000


@dataclass(frozen=True)
class ReconstructConfig:
    """Settings of :func:`reconstruct`; angles in degrees, lengths in world units.

    Attributes:
        fit: Gaussian fitting settings.
        resolution: longer image side the views are scaled to before fitting (None keeps them).
        num_novel_views: extra views rendered and fused (0 for none).
        novel_elevation_offset: elevation step of the off-ring novel views.
        mesh_resolution: TSDF voxels per axis over ``[-mesh_bound, mesh_bound]``.
        truncation_voxels: TSDF truncation in voxels.
        min_component_fraction: pieces smaller than this fraction of the largest are removed.
        surface: "cubes" (marching cubes) or "tetrahedra" (:mod:`sgm.recon.isosurface`).
        max_faces: face budget of the mesh (quadric simplification), None for no limit.
        texture_size: side of the baked texture in texels; 0 writes vertex colours only.
    """

    fit: FitConfig = field(default_factory=FitConfig)
    resolution: int | None = 512
    num_novel_views: int = 16
    novel_elevation_offset: float = 20.0
    mesh_resolution: int = 128
    mesh_bound: float = 0.75
    truncation_voxels: float = 3.0
    min_component_fraction: float = 0.05
    surface: str = "cubes"
    max_faces: int | None = DEFAULT_MAX_FACES
    texture_size: int = 1024


@dataclass
class ReconstructResult:
    """Paths written by :func:`reconstruct` (None when it wrote nothing) plus the in-memory scene, mesh and report."""

    output_dir: Path | None
    views_dir: Path | None
    scene_path: Path | None
    mesh_obj: Path | None
    mesh_glb: Path | None
    report_path: Path | None
    fit: FitResult
    mesh: Mesh
    report: dict
    scene_ply: Path | None = None
    textured: Mesh | None = None


def concat_cameras(first: OrbitCameras, second: OrbitCameras) -> OrbitCameras:
    """The cameras of ``first`` then ``second`` (same distance, fov and image size expected)."""
    names = ("elevations_deg", "azimuths_deg", "K", "world_to_camera")
    return dataclasses.replace(first, **{n: np.concatenate([getattr(first, n), getattr(second, n)]) for n in names})


class _StepCounter:
    """Numbers the steps of consecutive phases as one sequence ``callback(step_index, total_steps)``.

    An instance is itself a StepCallback that a phase can report to: each call counts one step
    (the phase's own numbering is ignored).
    """

    def __init__(self, callback: StepCallback | None, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def __call__(self, *_phase_step) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done - 1, self.total)


def fuse_mesh_steps(num_views: int, num_novel_views: int, textured: bool = False) -> int:
    """Steps :func:`fuse_mesh` reports: a depth render per input view, each view fused, the surface
    extraction and simplification, each view coloured; with a texture, the UV atlas and each view baked."""
    steps = num_views + 2 * (num_views + num_novel_views) + 1
    return steps + 1 + num_views + num_novel_views if textured else steps


def reconstruct_steps(config: ReconstructConfig, num_views: int) -> int:
    """Steps :func:`reconstruct` reports for ``num_views`` input views: the fit's iterations, a render
    per novel view, :func:`fuse_mesh_steps`, and writing the files (one)."""
    return (config.fit.iterations + config.num_novel_views
            + fuse_mesh_steps(num_views, config.num_novel_views, config.texture_size > 0) + 1)


def fuse_mesh(scene: GaussianScene, views: ViewSet, novel: NovelViews | None, config: ReconstructConfig,
              callback: StepCallback | None = None) -> tuple[Mesh, Mesh | None]:
    """Fuse the input views (their masks and colours, depth rendered from ``scene``) and the novel views.

    An input pixel inside its mask whose rendered opacity is below 0.5 has no depth and says
    nothing; outside its mask it marks free space, whatever was rendered there. Depths far
    behind their neighbours are dropped first (:func:`~sgm.recon.mesh.reject_depth_outliers`,
    tolerance = the truncation distance). The surface is simplified to ``config.max_faces``.
    Colours come from the input images and the rendered novel views, per vertex
    (:func:`~sgm.recon.mesh.color_vertices`) and, when ``config.texture_size`` > 0, per texel of a
    UV atlas (:mod:`sgm.recon.texture`, the vertex colours as its fallback); depth tolerance one voxel.

    ``callback(step_index, total_steps)`` follows the steps of :func:`fuse_mesh_steps`.

    Returns:
        (the closed mesh with vertex colours, the same surface cut along UV seams with its texture,
        or None without a texture).
    """
    num_novel = 0 if novel is None else len(novel.cameras)
    steps = _StepCounter(callback, fuse_mesh_steps(len(views), num_novel, config.texture_size > 0))
    _, alphas, depths = render_views(scene, views.cameras, backend=DEPTH_BACKEND, callback=steps)
    masks = views.masks >= 0.5
    depths = np.where(masks & (alphas >= 0.5), depths, np.nan)
    cameras, colors = views.cameras, views.images
    if novel is not None:
        cameras = concat_cameras(cameras, novel.cameras)
        masks = np.concatenate([masks, novel.masks >= 0.5])
        depths = np.concatenate([depths, np.where(novel.masks >= 0.5, novel.depths, np.nan)])
        colors = np.concatenate([colors, novel.colors])
    truncation = config.truncation_voxels * 2.0 * config.mesh_bound / config.mesh_resolution
    depths = reject_depth_outliers(depths, tolerance=truncation)
    volume = fuse_depths(depths, masks, cameras, config.mesh_resolution, config.mesh_bound, config.truncation_voxels,
                         callback=steps)
    mesh = simplify_to_faces(mesh_from_volume(volume, config.min_component_fraction, config.surface), config.max_faces)
    steps()
    mesh = Mesh(mesh.vertices, mesh.faces, color_vertices(mesh, colors, depths, cameras, tolerance=volume.spacing,
                                                          callback=steps))
    if config.texture_size <= 0:
        return mesh, None
    atlas = unwrap(mesh)
    steps()
    return mesh, bake_texture(atlas, colors, depths, cameras, volume.spacing, config.texture_size, callback=steps)


def output_names(names: tuple[str, ...]) -> list[str]:
    """File names of the input views in the output folder: kept when they are ``view_*.png``, else numbered."""
    kept = [n if n.startswith("view_") and n.endswith(".png") else f"view_{k:02d}.png" for k, n in enumerate(names)]
    return kept if len(set(kept)) == len(kept) else [f"view_{k:02d}.png" for k in range(len(names))]


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse a folder that holds earlier results unless ``overwrite``.

    Raises:
        OutputExistsError: naming the first existing result.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputExistsError(f"{output_dir} exists and is not a folder")
    existing = [output_dir / n for n in OUTPUT_NAMES if (output_dir / n).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{output_dir} already holds 3D results ({existing[0]}); pass overwrite=True "
                              "(--overwrite) or choose another folder")


def reconstruct(views: str | Path | ViewSet, elevation_deg: float, output_dir: str | Path | None,
                config: ReconstructConfig = ReconstructConfig(), device: str | torch.device = "auto",
                overwrite: bool = False, progress: bool = True, callback: StepCallback | None = None
                ) -> ReconstructResult:
    """Fit, augment, mesh and write (see the module docstring for the files).

    Args:
        views: a folder / video / pipeline output folder for :func:`~sgm.recon.views.load_views`, or loaded views.
        elevation_deg: elevation of the input orbit in degrees (used when the views carry no cameras.json).
        output_dir: where results go; None writes nothing (the result holds the scene, meshes and report).
        config: settings.
        device: ``auto``, ``cpu``, ``cuda``, ...
        overwrite: replace earlier results in ``output_dir``.
        progress: show progress bars (tqdm).
        callback: called as ``callback(step_index, total_steps)`` after each step, ``step_index``
            counting 0 .. ``total_steps - 1`` over the whole run, ``total_steps`` =
            :func:`reconstruct_steps`: first the Gaussian fit's optimisation steps, then one per
            novel view rendered, then the meshing (:func:`fuse_mesh_steps`) and last writing the
            files. Loading the views and initialising the Gaussians come before the first report.

    Raises:
        ViewError: unusable views; OutputExistsError: earlier results without ``overwrite``.
    """
    output_dir = None if output_dir is None else Path(output_dir)
    if output_dir is not None:
        check_output_dir(output_dir, overwrite)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    view_set = views if isinstance(views, ViewSet) else load_views(views, elevation_deg)
    if config.resolution is not None:
        view_set = resize_views(view_set, config.resolution)
    device = resolve_device(device)
    timings["load"] = time.perf_counter() - start
    steps = _StepCounter(callback, reconstruct_steps(config, len(view_set)))

    try:
        fit = fit_gaussians(view_set, config.fit, device, progress, callback=steps)
    except ValueError as err:
        raise ViewError(str(err)) from err
    timings["fit"] = fit.seconds

    start = time.perf_counter()
    height, width = view_set.images.shape[1:3]
    ring_elevation = float(np.median(view_set.cameras.elevations_deg))
    novel = None
    names = output_names(view_set.names)
    images, masks, cameras = view_set.images, view_set.masks, view_set.cameras
    roles = ["input"] * len(names)
    if config.num_novel_views > 0:
        novel_cams = novel_view_cameras(ring_elevation, config.num_novel_views, width, height, len(view_set),
                                        config.novel_elevation_offset, cameras.distance, cameras.fov_deg)
        novel = render_novel_views(fit.scene, novel_cams, DEPTH_BACKEND, callback=steps)
        names += [f"view_novel_{k:02d}.png" for k in range(config.num_novel_views)]
        roles += ["novel"] * config.num_novel_views
        images, masks = np.concatenate([images, novel.colors]), np.concatenate([masks, novel.masks])
        cameras = concat_cameras(cameras, novel.cameras)
    views_dir = None if output_dir is None else write_view_folder(output_dir, images, masks, cameras, names, roles)
    timings["novel_views"] = time.perf_counter() - start

    start = time.perf_counter()
    mesh, textured = fuse_mesh(fit.scene, view_set, novel, config, callback=steps)
    timings["mesh"] = time.perf_counter() - start

    report = {
        "views": len(view_set), "novel_views": config.num_novel_views, "resolution": [width, height],
        "elevation_deg": ring_elevation, "device": str(device), "backend": fit.backend,
        "gaussians": len(fit.scene), "final_loss": float(np.mean(fit.losses[-50:])),
        "mesh_vertices": len(mesh.vertices), "mesh_faces": len(mesh.faces),
        "texture": None if textured is None else list(textured.texture.shape[:2]), "seconds": timings,
        "config": dataclasses.asdict(config),
    }
    files = _write_results(output_dir, fit.scene, mesh, textured, report) if output_dir is not None else {}
    steps()
    log.info("3D results%s: %d Gaussians, mesh of %d faces", f" in {output_dir}" if output_dir else "", len(fit.scene),
             len(mesh.faces))
    return ReconstructResult(output_dir, views_dir, files.get("gaussians.pt"), files.get("mesh.obj"),
                             files.get("mesh.glb"), files.get("report.json"), fit, mesh, report,
                             files.get("gaussians.ply"), textured)


def _write_results(output_dir: Path, scene: GaussianScene, mesh: Mesh, textured: Mesh | None,
                   report: dict) -> dict[str, Path]:
    """Write the scene (``.pt`` and ``.ply``), the meshes and the report; their paths by file name."""
    report_path = output_dir / "report.json"
    report_path.write_text(json.dumps(report, indent=1))
    return {"gaussians.pt": scene.save(output_dir / "gaussians.pt"),
            "gaussians.ply": write_splat_ply(scene, output_dir / "gaussians.ply"),
            "mesh.obj": write_obj(mesh, output_dir / "mesh.obj"),
            "mesh.glb": write_glb(textured or mesh, output_dir / "mesh.glb"), "report.json": report_path}
