"""The Python API of Hi3D: one object owning both stage models, reused across calls.

Example::

    from sgm.pipelines.hi3d import Hi3DPipeline
    pipe = Hi3DPipeline.from_pretrained("ckpts")          # ckpts/first_stage.pt, ckpts/second_stage.pt
    # or: Hi3DPipeline.from_pretrained("hf://hbyang/Hi3D", stage1_checkpoint="ckpts/first_stage.pt")
    result = pipe("demo/object_a_elev10.png", "outputs/a", elevation_deg=10, seed=0,
                  stages=("orbit", "refine", "mesh"))
    result.orbit.images[0].show(); print(result.videos, result.mesh_path)
"""
from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..common.devices import resolve_device
from ..common.errors import MissingCheckpointError, UsageError
from ..common.images import (
    OUTPUT_TYPES,
    contact_sheet,
    foreground_masks,
    frames_as,
    pixels_to_tensor,
    read_image,
    resize_and_center_crop,
    resize_bilinear,
    tensor_to_pixels,
)
from ..common.progress import StepCallback
from ..common.video_io import mp4_round_trip, read_mp4, write_mp4, write_views
from ..config import load_config, model_node
from ..hub import KNOWN_FILES, HubFileError, is_hub_reference, local_path
from ..hub import join as hub_join
from ..recon.reconstruct import ReconstructConfig, ReconstructResult, check_output_dir, reconstruct
from ..recon.views import views_from_frames
from .checks import RunSettings, check_settings, require_finite_frames
from .compilation import BackgroundCompile, compile_unet, resolve_compile
from .conv_shapes import guard_inference_convolutions
from .inputs import InputImage, load_input, open_input
from .loading import (
    PROJECT_ROOT,
    ExecutionPlan,
    ModelSpec,
    checkpoint_source,
    load_stage_model,
    resolve_checkpoint,
    resolve_dtype,
)
from .outputs import OutputLayout
from .replicas import resolve_devices
from .records import check_stage1_outputs, image_sha256, read_stage1_record, write_stage1_record, write_stage2_record
from .sampling import frame_guider, generate_orbit, refine_orbit, stage2_input_frames
from .staging import StagedOutput

log = logging.getLogger(__name__)
STAGES = ("orbit", "refine", "mesh")
STAGE_NUMBERS = {"orbit": 1, "refine": 2}
CONFIG_DIR = PROJECT_ROOT / "configs"
# The released weights of each stage model and the config of its architecture (see ckpts/README.md).
PRETRAINED = {"orbit": ("first_stage.pt", CONFIG_DIR / "inference-v01.yaml"),
              "refine": ("second_stage.pt", CONFIG_DIR / "inference-v02.yaml")}
# The demo models (stage 1, stage 2): small networks trained by scripts/train_demo_models.py on the
# project's procedural objects; their configs name the weights in demo/models/.
DEMO_CONFIGS = (CONFIG_DIR / "demo-v01.yaml", CONFIG_DIR / "demo-v02.yaml")


@dataclass
class StageResult:
    """What one stage made: the views themselves (``pixels``, uint8 (T, H, W, 3), exactly the PNGs' values),
    the same as ``frames`` in the call's ``output_type`` (see :func:`~sgm.common.images.frames_as`),
    and the files written (video, per-view PNGs, ``extra``; None / empty when nothing was written)."""

    video: Path | None
    views: list[Path]
    pixels: np.ndarray
    extra: dict[str, Path] = field(default_factory=dict)
    frames: object = None

    @property
    def images(self) -> list[Image.Image]:
        """The views as PIL images (RGB), in orbit order."""
        return [Image.fromarray(view) for view in self.pixels]


@dataclass
class Hi3DResult:
    """What :meth:`Hi3DPipeline.__call__` produced; a stage that did not run is None."""

    output_dir: Path | None
    orbit: StageResult | None = None
    refined: StageResult | None = None
    mesh: ReconstructResult | None = None

    @property
    def videos(self) -> dict[str, Path]:
        """Video path of each stage that ran and wrote one ("orbit", "refine")."""
        return {name: stage.video for name, stage in (("orbit", self.orbit), ("refine", self.refined))
                if stage is not None and stage.video is not None}

    @property
    def mesh_path(self) -> Path | None:
        """The textured mesh (``OUT/3d/mesh.glb``), when the mesh stage ran."""
        return self.mesh.mesh_glb if self.mesh is not None else None


class Hi3DPipeline:
    """Image -> 16-view orbit (stage 1) -> refined orbit (stage 2).

    Args:
        stage1, stage2: where each stage model comes from (None: that stage is unavailable).
        device: "auto" (cuda if present), "cpu", "cuda", "cuda:1", ...
        dtype: "auto" (fp16 on cuda, fp32 on cpu), "float32", "float16", "bfloat16".
        use_rembg: remove the background of RGB inputs with rembg when it is installed.
        low_memory: keep the models on the CPU and move each part to ``device`` only for its
            phase, with half-size guided UNet calls and one-frame decoding (same outputs).
        compile: how each UNet is compiled with ``torch.compile`` (:mod:`~sgm.pipelines.compilation`):
            "auto" ("background" on CUDA unless ``low_memory``, else "off"), "background" (eager
            until a child process has compiled it, compiled from the next run on: no wait), "on" (the
            first call waits about 2 minutes for the compilation on a new machine) or "off".
        devices: 1, or 2 to run the conditional half of every guided UNet call on the next device
            (``device`` cuda:0 -> cuda:1) while ``device`` runs the unconditional half
            (:mod:`~sgm.pipelines.replicas`); not with ``low_memory``.

    Models are built on first use and kept for later calls.
    """

    def __init__(
        self,
        stage1: ModelSpec | None,
        stage2: ModelSpec | None = None,
        device: str | None = "auto",
        dtype: str | None = "auto",
        use_rembg: bool = True,
        low_memory: bool = False,
        compile: str | bool = "auto",
        devices: int = 1,
    ):
        self.specs = {"orbit": stage1, "refine": stage2}
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.use_rembg = use_rembg
        self.plan = ExecutionPlan(self.device, low_memory, helpers=resolve_devices(self.device, devices)[1:])
        self.compile = resolve_compile(compile, self.device, low_memory)
        self._models: dict[str, torch.nn.Module] = {}
        self._compiling: dict[str, list[BackgroundCompile]] = {}
        self._weights: dict[str, dict] = {}  # per stage: the config and checkpoint its model came from

    @classmethod
    def from_configs(
        cls,
        stage1_config: str | Path | None,
        stage2_config: str | Path | None = None,
        stage1_checkpoint: str | Path | None = None,
        stage2_checkpoint: str | Path | None = None,
        **kwargs,
    ) -> "Hi3DPipeline":
        """Pipeline from config paths; checkpoints (local paths or ``hf://`` hub references, see
        :mod:`sgm.hub`) default to each config's ``checkpoint`` entry."""
        def spec(config, checkpoint):
            if config is None:
                return None
            if checkpoint is not None and not is_hub_reference(str(checkpoint)):
                checkpoint = Path(checkpoint)
            return ModelSpec(Path(config), None if checkpoint is None else checkpoint)
        return cls(spec(stage1_config, stage1_checkpoint), spec(stage2_config, stage2_checkpoint), **kwargs)

    @classmethod
    def from_pretrained(cls, ckpt_dir: str | Path = "ckpts", stage1_checkpoint: str | Path | None = None,
                        stage2_checkpoint: str | Path | None = None, **kwargs) -> "Hi3DPipeline":
        """Pipeline of the released models: ``first_stage.pt`` and ``second_stage.pt`` of ``ckpt_dir``
        with the architectures of ``configs/inference-v01.yaml`` / ``inference-v02.yaml``.

        ``ckpt_dir`` is a local folder or a hub repository (``"hf://hbyang/Hi3D"``, see :mod:`sgm.hub`):
        hub files are downloaded into the hub cache now (``HF_HUB_OFFLINE=1``: the cache only).
        ``stage1_checkpoint`` / ``stage2_checkpoint`` (a path or an ``hf://`` file) replace that
        stage's file of ``ckpt_dir``; the stage-1 checkpoint is not on the hub, so
        ``from_pretrained("hf://hbyang/Hi3D", stage1_checkpoint="ckpts/first_stage.pt")``.

        Raises:
            MissingCheckpointError: a file is absent or cannot be downloaded (the message names every
                such file, where to get it and where to put it).
        """
        chosen = {"orbit": stage1_checkpoint, "refine": stage2_checkpoint}
        files, problems = {}, []
        for stage, (name, _) in PRETRAINED.items():
            source = chosen[stage] if chosen[stage] is not None else hub_join(ckpt_dir, name)
            try:
                files[stage] = local_path(source)
            except HubFileError as err:
                problems.append(str(err))
                continue
            if not files[stage].is_file():
                problems.append(f"{files[stage]} not found: {KNOWN_FILES[name].advice(files[stage])}")
        if problems:
            raise MissingCheckpointError(
                f"checkpoints missing: {' | '.join(problems)}. The released Hi3D checkpoints are listed in "
                "ckpts/README.md")
        (_, config1), (_, config2) = PRETRAINED["orbit"], PRETRAINED["refine"]
        return cls.from_configs(config1, config2, files["orbit"], files["refine"], **kwargs)

    def model(self, stage: str) -> torch.nn.Module:
        """The model of ``stage`` ("orbit" or "refine"), built once; from the run after a background
        compilation of its UNet has finished, with the compiled UNet."""
        if stage not in self._models:
            spec = self.specs.get(stage)
            if spec is None:
                raise UsageError(f"this pipeline was built without a model for stage {stage!r}")
            home = torch.device("cpu") if self.plan.low_memory else self.device
            model, checkpoint = load_stage_model(spec, home, self.dtype)
            config = load_config(spec.config)  # parsed once for the checks and the compilation
            guard_inference_convolutions(model, config, self.device, self.dtype)  # wrong cuDNN kernels (issue 20)
            source = checkpoint_source(spec)
            named = str(source) if is_hub_reference(str(source)) else checkpoint  # a hub file by its reference
            self._weights[stage] = {"config": str(spec.config), "checkpoint": None if named is None else str(named)}
            network_config = model_node(config)["params"]["network_config"]
            networks = [model.model, *self.plan.replicate(model.model)]  # copied before any compilation
            compiling = [compile_unet(network.diffusion_model, self.compile, f"stage {stage!r}", network_config)
                         for network in networks]
            self._compiling[stage] = [job for job in compiling if job is not None]
            self._models[stage] = model
        for job in self._compiling[stage]:
            job.adopt()  # between runs: a run's UNet calls all take one path
        return self._models[stage]

    def is_untrained(self, stage: str) -> bool:
        """Whether the model of ``stage`` gets random weights (no checkpoint); reads only its config."""
        spec = self.specs.get(stage)
        if spec is None:
            raise UsageError(f"this pipeline was built without a model for stage {stage!r}")
        source = checkpoint_source(spec)
        if source is not None and not is_hub_reference(str(source)):
            resolve_checkpoint(spec)  # a missing local file is named now; a hub file is fetched when the model is built
        return source is None

    def release_memory(self) -> None:
        """Return cached accelerator memory to the driver (the models stay where they live)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _generator(self, seed: int | None, generator: torch.Generator | None = None) -> torch.Generator:
        """The caller's ``generator`` (checked to be on the sampling device), else one seeded with ``seed``."""
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise UsageError(f"generator must be a torch.Generator, got {type(generator).__name__}")
            if generator.device.type != self.device.type:
                raise UsageError(f"generator is on {generator.device} but this pipeline samples on {self.device}: "
                                 f"make it with torch.Generator(device={str(self.device)!r})")
            return generator
        torch.manual_seed(seed)  # anything outside our explicit generator is seeded too
        return torch.Generator(device=self.device).manual_seed(seed)

    def load_input(self, image: str | Path | Image.Image) -> InputImage:
        """Read and check the stage-1 input and remove its background (see :func:`~sgm.pipelines.inputs.load_input`)."""
        return load_input(image, self.use_rembg)

    def run_orbit(
        self, image, output_dir: str | Path, elevation_deg: float = 0.0, seed: int = 0,
        num_steps: int | None = None, min_cfg: float | None = None, max_cfg: float | None = None,
        overwrite: bool = False, callback: StepCallback | None = None,
    ) -> StageResult:
        """Stage 1: write the input images, the orbit video, its views, a contact sheet and
        ``first_step/run.json`` (see :meth:`__call__` for the checks and the all-or-nothing writing)."""
        return self(image, output_dir, elevation_deg, seed, num_steps, min_cfg, max_cfg, stages=("orbit",),
                    overwrite=overwrite, callback=callback).orbit

    def run_refine(
        self, output_dir: str | Path, elevation_deg: float = 0.0, seed: int = 0,
        num_steps: int | None = None, min_cfg: float | None = None, max_cfg: float | None = None,
        overwrite: bool = False, callback: StepCallback | None = None, image=None,
    ) -> StageResult:
        """Stage 2: read ``white.png`` and ``first.mp4`` from ``output_dir``, write the refined orbit.

        The stage-1 files must match their record (``first_step/run.json``); ``image`` (a path or
        PIL image), when given, must be the one stage 1 was run on.
        """
        return self(image, output_dir, elevation_deg, seed, num_steps, min_cfg, max_cfg, stages=("refine",),
                    overwrite=overwrite, callback=callback).refined

    def _check_stage1(self, layout: OutputLayout, image) -> dict | None:
        """Stage-1 outputs present, matching their record and, when ``image`` is given, made from it."""
        layout.require_stage1()
        if image is None:
            return check_stage1_outputs(layout)
        picture, _, name = open_input(image)
        return check_stage1_outputs(layout, image_sha256(picture), name)

    def _sample_stage1(self, source: InputImage, settings: RunSettings, generator: torch.Generator,
                       callback: StepCallback | None) -> np.ndarray:
        """The orbit of ``source``, uint8 (T, H, W, 3)."""
        model = self.model("orbit")
        frame = pixels_to_tensor(resize_and_center_crop(np.asarray(source.white), model_resolution(model)))
        frames = generate_orbit(model, frame, settings.elevation_deg, generator, settings.num_steps, callback,
                                self.plan, guider=frame_guider(model, settings.min_cfg, settings.max_cfg))
        pixels = tensor_to_pixels(require_finite_frames(frames, "stage 1 (orbit)", self.dtype))
        self._after_stage()
        return pixels

    def _write_stage1(self, source: InputImage, target: OutputLayout, pixels: np.ndarray,
                      settings: RunSettings) -> None:
        """Write stage 1's files into ``target``."""
        target.rgba.parent.mkdir(parents=True, exist_ok=True)
        source.rgba.save(target.rgba)
        source.white.save(target.white)
        write_mp4(pixels, target.stage1_video)
        write_views(pixels, target.stage1_views)
        Image.fromarray(contact_sheet(pixels)).save(target.stage1_sheet)
        write_stage1_record(target, source.path, source.sha256, settings, self._weights["orbit"])

    def refine_video(self, video: np.ndarray, white: np.ndarray, settings: RunSettings, generator: torch.Generator,
                     callback: StepCallback | None = None) -> np.ndarray:
        """Refine a stage-1 orbit as stage 2 reads it (``video`` uint8 (T, h, w, 3) decoded from the mp4,
        ``white`` the input on white, uint8 (H, W, 3)); returns uint8 (T, S, S, 3). ``settings`` from
        :func:`~sgm.pipelines.checks.check_settings`; ``generator`` on the execution device."""
        model = self.model("refine")
        size = model_resolution(model)
        views = stage2_input_frames(video, resize_bilinear(white, *video.shape[1:3]), model.num_samples)
        frames = pixels_to_tensor(resize_bilinear(views, size, size))
        refined = refine_orbit(model, frames, settings.elevation_deg, generator, settings.num_steps,
                               callback=callback, plan=self.plan,
                               guider=frame_guider(model, settings.min_cfg, settings.max_cfg))
        pixels = tensor_to_pixels(require_finite_frames(refined, "stage 2 (refine)", self.dtype))
        self._after_stage()
        return pixels

    def _write_stage2(self, target: OutputLayout, pixels: np.ndarray, settings: RunSettings,
                      stage1: dict | None) -> None:
        """Write stage 2's files into ``target``."""
        write_mp4(pixels, target.stage2_video)
        write_views(pixels, target.stage2_views)
        masks = foreground_masks(pixels).astype(np.uint8) * 255
        target.stage2_masks.mkdir(parents=True, exist_ok=True)
        for index, mask in enumerate(masks):
            Image.fromarray(mask).save(target.stage2_masks / f"mask_{index:02d}.png")
        Image.fromarray(contact_sheet(pixels)).save(target.stage2_sheet)
        write_stage2_record(target, settings, self._weights["refine"], stage1)

    def run_mesh(
        self, output_dir: str | Path, elevation_deg: float = 0.0, overwrite: bool = False,
        config: ReconstructConfig | None = None, callback: StepCallback | None = None,
    ) -> ReconstructResult:
        """3D: fit Gaussians to the refined views of ``output_dir``, render novel views, write
        ``OUT/3d/mesh.glb`` and ``mesh.obj`` (see :func:`sgm.recon.reconstruct.reconstruct`).

        ``callback(step_index, total_steps)`` follows every step of the reconstruction (the Gaussian
        fit's iterations, the novel views, the meshing; see :func:`~sgm.recon.reconstruct.reconstruct`).
        """
        layout = OutputLayout(Path(output_dir))
        return reconstruct(layout.root, elevation_deg, layout.mesh_dir, config=config or ReconstructConfig(),
                           device=self.device, overwrite=overwrite, callback=callback)

    def __call__(
        self, image, output_dir: str | Path | None = None, elevation_deg: float = 0.0, seed: int | None = 0,
        num_steps: int | None = None, min_cfg: float | None = None, max_cfg: float | None = None,
        stages: tuple[str, ...] = ("orbit", "refine"), overwrite: bool = False,
        callback: StepCallback | None = None, mesh_config: ReconstructConfig | None = None,
        generator: torch.Generator | None = None, output_type: str = "pil",
    ) -> Hi3DResult:
        """Run the requested stages in order on one image.

        ``elevation_deg`` is in degrees (finite; outside the trained -10..40 it runs with a warning),
        ``seed`` an integer in 0..2^64-1. ``generator`` (a ``torch.Generator`` on the pipeline's
        device) replaces ``seed``: the stages draw from it in turn. ``min_cfg`` / ``max_cfg``
        (guidance of the first / last frame) apply to both diffusion stages; None keeps each config's
        values. ``image`` (a path or a PIL image) is the input of "orbit"; with "refine" alone it is
        optional and, when given, must be the image stage 1 was run on. ``output_type`` ("pil",
        "np" or "pt") is the type of each stage result's ``frames`` (:func:`~sgm.common.images.frames_as`).

        ``output_dir=None`` writes nothing and returns the results (views, and for "mesh" the
        Gaussians and meshes in ``result.mesh``); the stages must then start at "orbit", and stage 2
        refines the orbit as it would come back from ``first.mp4`` (its lossy H.264 encoding, through
        a temporary file), so the results equal those of a run that writes.

        Everything is checked before any model is built and anything is written: the settings, the
        image, the output folder (and, for "refine" alone, the stage-1 outputs against their record).
        The diffusion stages write into a temporary folder inside ``output_dir`` whose contents
        replace earlier results only when every requested diffusion stage has succeeded
        (:class:`~sgm.pipelines.staging.StagedOutput`): a failed run leaves ``output_dir`` as it was.

        ``callback(step_index, total_steps)`` is called after each step of every stage that runs
        (sampler steps of the two diffusion stages, reconstruction steps of "mesh"); each stage
        counts its own steps from 0.
        In low-memory mode cached GPU memory is released after each stage.
        """
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise UsageError(f"unknown stages {sorted(unknown)}: choose from {STAGES}")
        if output_type not in OUTPUT_TYPES:
            raise UsageError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        diffusion = [stage for stage in ("orbit", "refine") if stage in stages]
        settings = (check_settings(elevation_deg, None if generator is not None else seed, num_steps, min_cfg, max_cfg)
                    if diffusion else None)
        if generator is not None:
            self._generator(None, generator)  # checked before any work
        if output_dir is None:
            result = self._run_in_memory(image, elevation_deg, settings, stages, generator, callback, mesh_config)
        else:
            result = self._run_on_disk(image, Path(output_dir), elevation_deg, settings, stages, overwrite, generator,
                                       callback, mesh_config)
        for stage in (result.orbit, result.refined):
            if stage is not None:
                stage.frames = frames_as(stage.pixels, output_type)
        return result

    def _run_in_memory(self, image, elevation_deg: float, settings: RunSettings | None, stages: tuple[str, ...],
                       generator: torch.Generator | None, callback: StepCallback | None,
                       mesh_config: ReconstructConfig | None) -> Hi3DResult:
        """The stages of :meth:`__call__` with ``output_dir=None``: nothing is written."""
        ordered = [stage for stage in STAGES if stage in stages]
        if ordered != list(STAGES[:len(ordered)]):
            raise UsageError(f"without an output_dir the stages must start at 'orbit' and follow in order "
                             f"{STAGES} (got {tuple(stages)}): a later stage reads the one before from output_dir")
        source = self.load_input(image)
        for stage in ordered[:2]:
            self.model(stage)  # a bad checkpoint stops the run before any sampling
        result = Hi3DResult(None)
        orbit = self._sample_stage1(source, settings, self._generator(settings.seed, generator), callback)
        result.orbit = StageResult(None, [], orbit)
        if "refine" in stages:
            white = np.asarray(source.white.convert("RGB"))
            refined = self.refine_video(mp4_round_trip(orbit), white, settings,
                                          self._generator(settings.seed, generator), callback)
            result.refined = StageResult(None, [], refined)
        if "mesh" in stages:
            views = views_from_frames(result.refined.pixels, elevation_deg)
            result.mesh = reconstruct(views, elevation_deg, None, config=mesh_config or ReconstructConfig(),
                                      device=self.device, callback=callback)
            self._after_stage()
        return result

    def _run_on_disk(self, image, output_dir: Path, elevation_deg: float, settings: RunSettings | None,
                     stages: tuple[str, ...], overwrite: bool, generator: torch.Generator | None,
                     callback: StepCallback | None, mesh_config: ReconstructConfig | None) -> Hi3DResult:
        """The stages of :meth:`__call__`, writing into ``output_dir`` (see there)."""
        layout = OutputLayout(output_dir)
        diffusion = [stage for stage in ("orbit", "refine") if stage in stages]
        for stage in diffusion:
            layout.ensure_writable(STAGE_NUMBERS[stage], overwrite)
        if "mesh" in stages:
            check_output_dir(layout.mesh_dir, overwrite)
        source = self.load_input(image) if "orbit" in stages else None
        stage1 = self._check_stage1(layout, image) if diffusion == ["refine"] else None
        for stage in diffusion:
            self.model(stage)  # a bad checkpoint stops the run here, before anything is written
        result = Hi3DResult(layout.root)
        if diffusion:
            with StagedOutput(layout.root, overwrite) as folder:
                staged = OutputLayout(folder)
                if source is not None:
                    orbit = self._sample_stage1(source, settings, self._generator(settings.seed, generator), callback)
                    self._write_stage1(source, staged, orbit, settings)
                    stage1 = read_stage1_record(staged)
                if "refine" in stages:
                    read_from = staged if source is not None else layout
                    white = np.asarray(read_image(read_from.white).convert("RGB"))
                    refined = self.refine_video(read_mp4(read_from.stage1_video), white, settings,
                                                  self._generator(settings.seed, generator), callback)
                    self._write_stage2(staged, refined, settings, stage1)
            if source is not None:
                result.orbit = StageResult(layout.stage1_video, _views(layout.stage1_views, orbit), orbit,
                                           {"contact_sheet": layout.stage1_sheet, "white": layout.white,
                                            "rgba": layout.rgba, "record": layout.stage1_record})
            if "refine" in stages:
                result.refined = StageResult(layout.stage2_video, _views(layout.stage2_views, refined), refined,
                                             {"contact_sheet": layout.stage2_sheet, "masks": layout.stage2_masks,
                                              "record": layout.stage2_record})
            _warn_about_stale_results(layout, stages)
        if "mesh" in stages:
            result.mesh = self.run_mesh(output_dir, elevation_deg, overwrite, mesh_config, callback)
            self._after_stage()
        return result

    def _after_stage(self) -> None:
        if self.plan.low_memory:
            self.release_memory()


def _views(folder: Path, pixels: np.ndarray, prefix: str = "view") -> list[Path]:
    """Paths of the per-view PNGs that :func:`~sgm.common.video_io.write_views` wrote for ``pixels``."""
    return [folder / f"{prefix}_{index:02d}.png" for index in range(len(pixels))]


def _warn_about_stale_results(layout: OutputLayout, stages: tuple[str, ...]) -> None:
    """Warn when results of the next stage, left in place, were made from the outputs just replaced."""
    last = "refine" if "refine" in stages else "orbit"
    following = {"orbit": ("refine", layout.stage2_video.parent), "refine": ("mesh", layout.mesh_dir)}[last]
    stage, folder = following
    if stage not in stages and folder.exists():
        log.warning("%s holds results made from earlier stage-%d outputs, not from this run's: rerun the %r stage "
                    "(and any after it) with overwrite (--overwrite) to update them", folder, STAGE_NUMBERS[last],
                    stage)


def model_resolution(model) -> int:
    """Pixel resolution a stage model works at, from its config (``resolution`` attribute)."""
    resolution = getattr(model, "resolution", None)
    if resolution is None:
        raise AttributeError(f"{type(model).__name__} has no 'resolution' (pixel size of its frames)")
    return int(resolution)
