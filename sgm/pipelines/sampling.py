"""Stage 1 and stage 2 of Hi3D as functions of tensors: no files, no command line.

Every random draw comes from one ``torch.Generator`` seeded by the caller, in the order of
the official scripts (initial noise, then VAE posterior samples, then condition noise), so
a seed fixes the output.
"""
from __future__ import annotations

import numpy as np
import torch

from ..common.errors import UsageError
from ..common.progress import StepCallback
from ..modules.diffusionmodules.guiders import LinearPredictionGuider
from ..modules.diffusionmodules.refinement import refine_latents
from ..modules.diffusionmodules.sampling import SamplingCallback
from .loading import ExecutionPlan, autocast_for, model_device_dtype



def frame_guider(model, min_scale: float | None, max_scale: float | None):
    """The per-frame guidance of one call: the config's guider with its first / last frame scales
    replaced where given, or None (the config's guider as it is) when neither is."""
    guider = model.sampler.guider
    if min_scale is None and max_scale is None:
        return None
    if not isinstance(guider, LinearPredictionGuider):
        raise TypeError(f"expected a LinearPredictionGuider in the sampler config, found {type(guider).__name__}")
    low = float(guider.frame_scales[0]) if min_scale is None else min_scale
    high = float(guider.frame_scales[-1]) if max_scale is None else max_scale
    return LinearPredictionGuider(max_scale=high, num_frames=guider.num_frames, min_scale=low)


def progress_of(callback: StepCallback | None) -> SamplingCallback | None:
    """The sampler's per-step report (a StepInfo dict) passed on as ``callback(step, total)``."""
    if callback is None:
        return None
    return lambda info: callback(info["step"], info["total"])


def _conditioning(model, batch: dict, generator: torch.Generator):
    batch = model.add_custom_cond(batch, infer=True, generator=generator)
    return model.conditioner.get_unconditional_conditioning(batch, model.unconditional_keys)


def _plan_and_dtype(model, plan: ExecutionPlan | None) -> tuple[ExecutionPlan, torch.dtype]:
    device, dtype = model_device_dtype(model)
    return (plan if plan is not None else ExecutionPlan(device)), dtype


def latent_shape(model, num_frames: int, height: int, width: int) -> tuple[int, ...]:
    """(T, C, H/f, W/f): the latents of ``num_frames`` frames of (height, width) pixels under the
    model's VAE (C its ``embed_dim``, f its ``downsample_factor``: 4 and 8 for the SD VAE)."""
    vae = model.first_stage_model
    return (num_frames, vae.embed_dim, height // vae.downsample_factor, width // vae.downsample_factor)


@torch.no_grad()
def generate_orbit(
    model,
    image: torch.Tensor,
    elevation_deg: float,
    generator: torch.Generator,
    num_steps: int | None = None,
    callback: StepCallback | None = None,
    plan: ExecutionPlan | None = None,
    guider=None,
) -> torch.Tensor:
    """Stage 1: one view -> an orbit of T views.

    Args:
        model: a :class:`~sgm.models.hi3d.Stage1VideoLDM`.
        image: (3, H, W) in [-1, 1], the input view on white.
        elevation_deg: camera elevation of the input view, in degrees.
        generator: RNG on the execution device, of every random draw.
        callback: ``callback(step, total)`` after each sampling step.
        plan: where the parts run (default: everything where the model is).
        guider: guidance of this call (:func:`frame_guider`; None: the config's).

    Returns:
        (T, 3, H, W) float32 frames in about [-1, 1]; frame 0 is the input azimuth.
    """
    plan, dtype = _plan_and_dtype(model, plan)
    device = plan.device
    frames = model.num_samples
    _, height, width = image.shape
    video = image.to(device)[None, :, None].expand(1, 3, frames, height, width)
    batch = {"video": video, "elevation": torch.tensor([elevation_deg], device=device)}
    with autocast_for(device, dtype):
        with plan.phase(model.conditioner):
            cond, uncond = _conditioning(model, batch, generator)
        noise = torch.randn(latent_shape(model, frames, height, width), generator=generator, device=device)
        with plan.phase(model.model):
            latents = model.sample(cond, uncond, noise, frames, num_steps=num_steps, callback=progress_of(callback),
                                   denoiser=plan.denoiser(model, frames), guider=guider, generator=generator)
    with plan.phase(model.first_stage_model):
        return model.decode_first_stage(latents, plan.decode_chunk).float()


def stage2_input_frames(first_video: np.ndarray, input_view: np.ndarray, num_frames: int) -> np.ndarray:
    """The stage-2 input views: the last ``num_frames`` of the stage-1 video with frame 0
    replaced by the input view (uint8 (H, W, 3), same size as the video frames)."""
    if first_video.shape[0] < num_frames:
        raise UsageError(f"the stage-1 video has {first_video.shape[0]} frames, stage 2 needs at least {num_frames}")
    frames = first_video[-num_frames:].copy()
    frames[0] = input_view
    return frames


@torch.no_grad()
def refine_orbit(
    model,
    frames: torch.Tensor,
    elevation_deg: float,
    generator: torch.Generator,
    num_steps: int | None = None,
    alpha_power: float = 40.0,
    callback: StepCallback | None = None,
    plan: ExecutionPlan | None = None,
    guider=None,
) -> torch.Tensor:
    """Stage 2: refine an orbit of T views at the model resolution.

    Args:
        model: a :class:`~sgm.models.hi3d.Stage2VideoLDM`.
        frames: (T, 3, H, W) in [-1, 1]; frame 0 is the input view.
        elevation_deg: camera elevation, degrees.
        generator: RNG on the execution device.
        alpha_power: exponent of the blending schedule toward the input latents.
        callback: ``callback(step, total)`` after each refinement step.
        plan: where the parts run (default: everything where the model is).
        guider: guidance of this call (:func:`frame_guider`; None: the config's).

    Returns:
        (T, 3, H, W) float32 refined frames in about [-1, 1].
    """
    plan, dtype = _plan_and_dtype(model, plan)
    device = plan.device
    num_frames, _, height, width = frames.shape
    if num_frames != model.num_samples:
        raise UsageError(f"got {num_frames} frames, the stage-2 model expects {model.num_samples}")
    frames = frames.to(device)
    noise = torch.randn(latent_shape(model, num_frames, height, width), generator=generator, device=device)
    with plan.phase(model.first_stage_model):
        z_input = model.encode_first_stage(frames, generator=generator).float()
    batch = {
        "video": frames.permute(1, 0, 2, 3)[None],
        "elevation": torch.tensor([elevation_deg], device=device),
    }
    with autocast_for(device, dtype):
        with plan.phase(model.conditioner):
            cond, uncond = _conditioning(model, batch, generator)
        with plan.phase(model.model):
            latents = refine_latents(model.sampler, plan.denoiser(model, num_frames), noise,
                                     z_input, cond, uncond, num_steps=num_steps, alpha_power=alpha_power,
                                     generator=generator, callback=progress_of(callback), guider=guider)
    with plan.phase(model.first_stage_model):
        return model.decode_first_stage(latents, plan.decode_chunk).float()
