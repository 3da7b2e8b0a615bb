"""Shared pieces of the inference command lines: common flags and error reporting.

The scripts (``pipeline_i2v_eval_v01.py``, ``pipeline_i2v_eval_v02.py``, ``scripts/run_hi3d.py``)
are thin: they parse flags and call :class:`~sgm.pipelines.hi3d.Hi3DPipeline`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Callable

from .common.errors import USER_ERRORS
from .common.orbit import TRAINED_ELEVATION_RANGE_DEG
from .pipelines.checks import SEED_MAX
from .pipelines.compilation import COMPILE_CHOICES, for_single_run

if TYPE_CHECKING:
    from .pipelines.hi3d import Hi3DPipeline

UNTRAINED_NOTICE = ("NOTE: a config names no checkpoint: the model has UNTRAINED random weights and its outputs are "
                    "noise. For real results place the released checkpoints in ckpts/ (see ckpts/README.md).")
DEMO_NOTICE = ("NOTE: the demo models are small networks this project trained briefly on its own procedural objects "
               "(scripts/train_demo_models.py): they know only such objects, and their orbits are blurry and "
               "approximate. For real images place the released checkpoints in ckpts/ (see ckpts/README.md).")


def add_model_args(parser: argparse.ArgumentParser, stage: int) -> None:
    """The model flags (official names) of the script of ``stage`` (1 or 2): its config and weights."""
    version, released = {1: ("v01", "first_stage.pt"), 2: ("v02", "second_stage.pt")}[stage]
    parser.add_argument("--denoise_config", default=f"configs/inference-{version}.yaml",
                        help=f"stage-{stage} model config")
    parser.add_argument("--denoise_checkpoint", default=None,
                        help=f"stage-{stage} weights: a released .pt, a .safetensors, a hub file "
                             "(hf://OWNER/NAME/FILE, downloaded into the hub cache; HF_HUB_OFFLINE=1: the cache only), "
                             "or a training run's checkpoints/last.ckpt (a file, or a DeepSpeed folder) (default: the "
                             f"config's 'checkpoint', ckpts/{released})")


def add_sampling_args(parser: argparse.ArgumentParser, image_required: bool = True,
                      image_help: str | None = None) -> None:
    """Flags shared by both stages (stage 2 reads the stage-1 outputs; its optional --image_path is checked
    to be the image stage 1 was run on)."""
    image_help = image_help or (
        "input image (RGBA, or RGB: background removed with rembg if installed)" if image_required else
        "optional: the image stage 1 was run on; refused if the stage-1 outputs were made from another")
    parser.add_argument("--image_path", required=image_required, help=image_help)
    parser.add_argument("--output_dir", required=True, help="folder for this image's results")
    low, high = TRAINED_ELEVATION_RANGE_DEG
    parser.add_argument("--elevation", type=float, default=0.0,
                        help=f"camera elevation of the input view, in degrees; the models were trained on {low:g} to "
                             f"{high:g}: other values run with a warning, NaN/inf are refused")
    parser.add_argument("--seed", type=int, default=0,
                        help=f"random seed, 0 to {SEED_MAX}: the same seed gives the same output")
    parser.add_argument("--num_steps", type=int, default=None, help="sampling steps (default: the config's, 25)")
    parser.add_argument("--min_cfg", type=float, default=None, help="guidance scale of frame 0 (default: the config's, 1.0)")
    parser.add_argument("--max_cfg", type=float, default=None, help="guidance scale of the last frame (default: the config's)")
    add_execution_args(parser)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace earlier results of this stage in --output_dir (only once the run has succeeded)")


def add_execution_args(parser: argparse.ArgumentParser) -> None:
    """Where and how the models run: flags shared by the command lines and the web app."""
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (float16 on cuda, float32 on cpu), float32, float16, bfloat16")
    parser.add_argument("--no_rembg", action="store_true", help="never run rembg on RGB inputs")
    parser.add_argument("--devices", type=int, default=1, choices=(1, 2),
                        help="GPUs per image: 2 runs the conditional half of every guided UNet call on the next GPU "
                             "(--device cuda:0 -> cuda:1) at the same time as the unconditional half; run_hi3d.py "
                             "spreads a folder of images over the GPUs instead")
    parser.add_argument("--low_memory", action="store_true",
                        help="keep models on the CPU, move each part to the GPU only for its phase (same outputs)")
    parser.add_argument("--compile", nargs="?", const="on", default="auto", choices=COMPILE_CHOICES,
                        help="torch.compile the UNets: auto (default: background on CUDA unless --low_memory and "
                             "several images are run; off for one image), background (eager until a child process has "
                             "compiled the UNet, compiled from the next image on), on (the first call waits about 2 "
                             "minutes per stage on a new machine), off")


def pipeline_options(args: argparse.Namespace, single_run: bool = False) -> dict:
    """Keyword arguments of :class:`~sgm.pipelines.hi3d.Hi3DPipeline` from the shared flags; a process that
    runs each stage once (``single_run``) does not compile by default (:func:`~sgm.pipelines.compilation.for_single_run`)."""
    return dict(device=args.device, dtype=args.dtype, use_rembg=not args.no_rembg, low_memory=args.low_memory,
                compile=for_single_run(args.compile) if single_run else args.compile, devices=args.devices)


def run_settings(args: argparse.Namespace) -> dict:
    """Keyword arguments of one stage's run (``Hi3DPipeline.run_orbit`` / ``run_refine``) from the flags of
    :func:`add_sampling_args`."""
    return dict(elevation_deg=args.elevation, seed=args.seed, num_steps=args.num_steps, min_cfg=args.min_cfg,
                max_cfg=args.max_cfg, overwrite=args.overwrite)


def stage_pipeline(args: argparse.Namespace, stage: int) -> Hi3DPipeline:
    """The pipeline of the script of ``stage`` (1 or 2) from its flags (:func:`add_model_args`,
    :func:`add_sampling_args`); prints :data:`UNTRAINED_NOTICE` when the model has untrained weights."""
    from .pipelines.hi3d import Hi3DPipeline  # the model code, imported by the inference scripts only

    configs = (args.denoise_config, None) if stage == 1 else (None, args.denoise_config)
    pipe = Hi3DPipeline.from_configs(*configs, **{f"stage{stage}_checkpoint": args.denoise_checkpoint},
                                     **pipeline_options(args, single_run=True))
    if pipe.is_untrained("orbit" if stage == 1 else "refine"):
        print(UNTRAINED_NOTICE)
    return pipe


def run_main(main: Callable[[], None]) -> None:
    """Run ``main`` with logging set up; user errors print one line and exit with code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
