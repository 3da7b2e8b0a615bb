"""Which models the web app serves: the released checkpoints, explicit configs, or the demo configs."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from ..hub import is_hub_reference
from ..pipelines.hi3d import DEMO_CONFIGS, PRETRAINED, Hi3DPipeline
from ..recon.fit import FitConfig
from ..recon.reconstruct import ReconstructConfig

DEMO_NOTICE = (
    "**Demo mode: small models this project trained briefly on its own procedural objects** "
    "(`scripts/train_demo_models.py`, `configs/demo-v0{{1,2}}.yaml`). They know only such objects: give them a "
    "render like `demo/object_a_elev10.png` and expect blurry, approximate orbits (scores on held-out objects in "
    "`BENCHMARKS.md`). For real images download the released checkpoints, place `first_stage.pt` and "
    "`second_stage.pt` in `{ckpt_dir}/` (see `ckpts/README.md`) and restart the app."
)
UNTRAINED_NOTICE = (
    "**These configs name no checkpoint: the models have untrained, random weights, so the views and the "
    "videos are noise.** Steps 1 and 2 show the pipeline working; step 3 cannot make a 3D model from noise "
    "(it finds no object on a white background) and says so. For real results place `first_stage.pt` and "
    "`second_stage.pt` in `{ckpt_dir}/` (see `ckpts/README.md`) and restart the app."
)
PRETRAINED_NOTICE = "Using the released Hi3D checkpoints in `{ckpt_dir}/`."
CONFIGS_NOTICE = "Using the configs `{stage1}` and `{stage2}`."


@dataclass(frozen=True)
class ModelChoice:
    """How the app's pipeline is built, and the notice the page shows about it."""

    mode: str  # "demo", "pretrained" or "configs"
    factory: Callable[[], Hi3DPipeline]
    notice: str


def choose_models(ckpt_dir: str | Path = "ckpts", demo: bool = False, stage1_config: str | Path | None = None,
                  stage2_config: str | Path | None = None, ckpt_dir_given: bool = False,
                  **pipeline_kwargs) -> ModelChoice:
    """Pick the models: explicit configs if given; else the released checkpoints when ``ckpt_dir``
    holds any of them (or was named explicitly); else the demo configs.

    ``ckpt_dir`` may be a hub repository (``hf://OWNER/NAME``), downloaded by the first job.
    The pipeline is not built here: a missing checkpoint is reported to the first job, in the page.
    """
    on_hub = is_hub_reference(str(ckpt_dir))
    ckpt_dir = str(ckpt_dir) if on_hub else Path(ckpt_dir)
    if stage1_config is not None or stage2_config is not None:
        stage1 = Path(stage1_config) if stage1_config is not None else PRETRAINED["orbit"][1]
        stage2 = Path(stage2_config) if stage2_config is not None else PRETRAINED["refine"][1]
        factory = partial(Hi3DPipeline.from_configs, stage1, stage2, **pipeline_kwargs)
        notice = CONFIGS_NOTICE.format(stage1=stage1.name, stage2=stage2.name)
        if _untrained(factory):
            notice = UNTRAINED_NOTICE.format(ckpt_dir=ckpt_dir)
        return ModelChoice("configs", factory, notice)
    present = on_hub or any((ckpt_dir / name).is_file() for name, _ in PRETRAINED.values())
    if not demo and (present or ckpt_dir_given):
        return ModelChoice("pretrained", partial(Hi3DPipeline.from_pretrained, ckpt_dir, **pipeline_kwargs),
                           PRETRAINED_NOTICE.format(ckpt_dir=ckpt_dir))
    return ModelChoice("demo", partial(Hi3DPipeline.from_configs, *DEMO_CONFIGS, **pipeline_kwargs),
                       DEMO_NOTICE.format(ckpt_dir=ckpt_dir))


def _untrained(factory: Callable[[], Hi3DPipeline]) -> bool:
    """Whether a config names no checkpoint (reads the configs only; builds no model)."""
    try:
        pipe = factory()
        return pipe.is_untrained("orbit") or pipe.is_untrained("refine")
    except Exception:  # noqa: BLE001 - an unusable config or missing file is reported to the first job, in the page
        return False


def mesh_settings(on_gpu: bool, iterations: int | None = None, resolution: int | None = None) -> ReconstructConfig:
    """Settings of the 3D stage: the full defaults on a GPU, a light preset on a CPU (about a minute
    on 2 cores for the demo); ``iterations`` / ``resolution`` override the Gaussian-fit steps / view size."""
    if on_gpu:
        base = ReconstructConfig()
    else:
        base = ReconstructConfig(fit=FitConfig(iterations=100, num_init=2000, max_gaussians=20_000), resolution=64,
                                 num_novel_views=4, mesh_resolution=64, texture_size=512)
    fit = dataclasses.replace(base.fit, iterations=iterations or base.fit.iterations)
    return dataclasses.replace(base, fit=fit, resolution=resolution or base.resolution)
