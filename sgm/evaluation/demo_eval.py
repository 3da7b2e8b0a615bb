"""Evaluating the two stage models on one held-out object (the work of ``scripts/eval_demo.py``).

For an object, a ring ``r`` and a start azimuth ``s`` (see :mod:`sgm.evaluation.held_out`):

* input: ground-truth frame 0 (file ``16 r + s``) on white at the stage-1 size, with the ring's
  true elevation; the model pipeline makes the stage-1 orbit and its stage-2 refinement.
* stage 1, against the ring's ground truth at the stage-1 size: the model; the input copied to
  every frame; the untrained models (same seed); the model given the elevation plus an offset.
* stage 2, against the ground truth at the stage-2 size: the refined views; bicubic upsampling of
  the model's stage-1 views.
* 3D (optional): the 3D step (:func:`sgm.recon.reconstruct.reconstruct`, nothing written) fitted
  to the refined views and, for reference, to the ground-truth views at the stage-2 size, both with
  the ring's true cameras and masks from the white threshold; each mesh scored against the surface
  of the object's exact SDF with :func:`sgm.recon.metrics.mesh_metrics` (Chamfer distance and
  volume IoU after bounding-box normalisation).

Scores are those of :mod:`sgm.evaluation.orbit_metrics` (frame 0 excluded from the means).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from sgm.common.errors import UsageError
from sgm.config import load_config
from sgm.pipelines.hi3d import Hi3DPipeline, model_resolution
from sgm.recon.export import Mesh
from sgm.recon.metrics import mesh_metrics
from sgm.recon.reconstruct import ReconstructConfig, reconstruct
from sgm.recon.views import ViewError, split_rgba, validate_views

from .held_out import HeldOutObject
from .orbit_metrics import (
    IMAGE_METRICS,
    bicubic_upsample,
    copied_input,
    mean_std,
    score_orbit,
)

MESH_METRICS = ("chamfer", "volume_iou")
# Rows of the results: (section, method) in table order.
METHODS = (("stage1", "model"), ("stage1", "copied_input"), ("stage1", "untrained"), ("stage1", "wrong_elevation"),
           ("stage2", "model"), ("stage2", "bicubic"), ("mesh", "refined"), ("mesh", "ground_truth"))


@dataclass(frozen=True)
class EvalSettings:
    """How each object is evaluated.

    Attributes:
        seed: sampling seed of both diffusion stages (every object, every run of the object).
        num_steps: sampling steps of both stages (None: each config's).
        start: azimuth index of the input view (frame 0).
        elevation_offset: degrees added to the true elevation for the wrong-elevation run (0: no such run).
        mesh: settings of the 3D step.
        gt_mesh_resolution: grid of the true surface (marching tetrahedra over the SDF), per axis.
        iou_resolution: voxels per axis of the volume IoU.
        num_points: surface samples per mesh for the Chamfer distance.
    """

    seed: int = 0
    num_steps: int | None = None
    start: int = 0
    elevation_offset: float = 20.0
    mesh: ReconstructConfig = field(default_factory=ReconstructConfig)
    gt_mesh_resolution: int = 128
    iou_resolution: int = 128
    num_points: int = 20000


@dataclass
class Models:
    """The pipelines compared; ``untrained`` is None when the model itself has the untrained baseline's
    configs and weights (then the baseline's views are the model's: same weights, same seed)."""

    model: Hi3DPipeline
    untrained: Hi3DPipeline | None

    def sizes(self) -> tuple[int, int]:
        """Pixel sizes of the model's stage-1 and stage-2 views, from their configs (builds the models)."""
        return model_resolution(self.model.model("orbit")), model_resolution(self.model.model("refine"))


def untrained_config(config: Path, folder: Path) -> tuple[Path, bool]:
    """``config`` with every source of trained weights removed, written to ``folder``: no ``checkpoint``,
    no ``model.params.ckpt_path``, ``random_pretrained_encoders: true``. Built without a checkpoint, the
    model gets the fixed random initialisation of :func:`sgm.pipelines.loading.load_stage_model`
    (seed :data:`~sgm.pipelines.loading.RANDOM_WEIGHTS_SEED`), the same on every run.

    Returns:
        (the new config's path, whether it equals ``config``: then ``config`` is itself untrained).
    """
    original = load_config(config)
    stripped = load_config(config)
    stripped.checkpoint = None
    stripped.model.random_pretrained_encoders = True
    if "ckpt_path" in stripped.model.params:
        stripped.model.params.ckpt_path = None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"untrained-{config.name}"
    OmegaConf.save(stripped, path)
    same = OmegaConf.to_container(original) == OmegaConf.to_container(stripped)
    return path, same


def input_image(view: np.ndarray) -> Image.Image:
    """The pipeline input: the ground-truth frame 0 on white, uint8 ``(S, S, 3)``, as an RGB image."""
    return Image.fromarray(view, mode="RGB")


def stage1_views(pipe: Hi3DPipeline, image: Image.Image, elevation_deg: float, settings: EvalSettings) -> np.ndarray:
    """Stage-1 orbit of ``image``, uint8 ``(T, S1, S1, 3)``."""
    return pipe(image, None, elevation_deg=elevation_deg, seed=settings.seed, num_steps=settings.num_steps,
                stages=("orbit",), output_type="np").orbit.pixels


def check_frames(views: np.ndarray, obj: HeldOutObject) -> None:
    """The model makes one view per azimuth of the object's rings."""
    if len(views) != obj.num_azimuths:
        raise UsageError(f"the model makes {len(views)} views per orbit but {obj.name} has {obj.num_azimuths} "
                         "azimuths per ring: render the held-out objects with --azimuths "
                         f"{len(views)}")


def mesh_scores(views: np.ndarray, obj: HeldOutObject, ring: int, start: int, target: Mesh,
                settings: EvalSettings, device) -> dict:
    """The 3D step on ring views uint8 ``(T, S, S, 3)`` with their true cameras, scored against ``target``.

    Returns ``{"chamfer", "volume_iou", ...}``, or ``{"error": why}`` when the views give no mesh
    to score (e.g. noise with no white background, so no silhouette).
    """
    start_time = time.perf_counter()
    images, masks = split_rgba(views)
    cameras = obj.cameras(ring, start, views.shape[1], len(views))
    try:
        view_set = validate_views(images, masks, cameras, tuple(f"view_{k:02d}.png" for k in range(len(views))))
        result = reconstruct(view_set, obj.ring_elevation(ring), None, config=settings.mesh, device=device,
                             progress=False)
        scores = mesh_metrics(result.mesh, target, settings.num_points, settings.iou_resolution, settings.seed)
    except (ViewError, ValueError) as err:  # no silhouette, or an empty / degenerate mesh
        return {"error": str(err), "seconds": time.perf_counter() - start_time}
    scores.update(mesh_faces=len(result.mesh.faces), seconds=time.perf_counter() - start_time)
    return scores


def evaluate_object(obj: HeldOutObject, ring: int, models: Models, settings: EvalSettings,
                    with_mesh: bool = False) -> dict:
    """Every score of one object (see the module docstring) as a JSON-ready dict."""
    started = time.perf_counter()
    size1, size2 = models.sizes()
    elevation = obj.ring_elevation(ring)
    truth1 = obj.views(ring, settings.start, size1)
    truth2 = obj.views(ring, settings.start, size2)
    image = input_image(truth1[0])
    result = models.model(image, None, elevation_deg=elevation, seed=settings.seed, num_steps=settings.num_steps,
                          stages=("orbit", "refine"), output_type="np")
    orbit, refined = result.orbit.pixels, result.refined.pixels
    check_frames(orbit, obj)
    stage1 = {"size": size1, "model": score_orbit(orbit, truth1),
              "copied_input": score_orbit(copied_input(truth1[0], len(truth1)), truth1)}
    if models.untrained is None:
        stage1["untrained"] = {**stage1["model"], "same_as_model": True}
    else:
        untrained = stage1_views(models.untrained, image, elevation, settings)
        stage1["untrained"] = score_orbit(untrained, obj.views(ring, settings.start, untrained.shape[1]))
    if settings.elevation_offset:
        wrong = elevation + settings.elevation_offset
        stage1["wrong_elevation"] = {**score_orbit(stage1_views(models.model, image, wrong, settings), truth1),
                                     "elevation_deg": wrong}
    stage2 = {"size": size2, "model": score_orbit(refined, truth2),
              "bicubic": score_orbit(bicubic_upsample(orbit, size2), truth2)}
    sampled = time.perf_counter()
    record = {"name": obj.name, "folder": str(obj.folder), "ring": ring, "elevation_deg": elevation,
              "start": settings.start, "input_file": obj.files(ring, settings.start, 1)[0].name,
              "seed": settings.seed, "stage1": stage1, "stage2": stage2}
    if with_mesh:
        target = obj.true_surface(settings.gt_mesh_resolution)
        device = models.model.device
        record["mesh"] = {"refined": mesh_scores(refined, obj, ring, settings.start, target, settings, device),
                          "ground_truth": mesh_scores(truth2, obj, ring, settings.start, target, settings, device)}
    finished = time.perf_counter()
    record["seconds"] = {"views": sampled - started, "mesh": finished - sampled, "total": finished - started}
    return record


def aggregate(records: list[dict]) -> dict:
    """Mean and std over objects of every score: ``{section: {method: {metric: mean_std}}}``.

    3D rows also count the objects whose 3D step gave no mesh (``failed``), which are left out of the means.
    """
    means: dict = {}
    for section, method in METHODS:
        rows = [r[section][method] for r in records if method in r.get(section, {})]
        if not rows:
            continue
        metrics = MESH_METRICS if section == "mesh" else IMAGE_METRICS
        scored = [row for row in rows if "error" not in row]
        entry = {metric: mean_std([row[metric] for row in scored]) for metric in metrics}
        if section == "mesh":
            entry["failed"] = len(rows) - len(scored)
        means.setdefault(section, {})[method] = entry
    return means
