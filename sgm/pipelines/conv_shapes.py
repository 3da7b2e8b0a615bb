"""The distinct convolutions a Hi3D stage model runs, listed from its config on meta tensors.

The model is built under ``torch.device("meta")`` (no memory, no weights read) and each phase of a
run is traced with :func:`sgm.common.conv_check.record_conv_shapes` at the config's resolution
(``model.resolution``, 512 px for stage 1 and 1024 px for stage 2) and frame count T
(``model.num_samples``, 16):

- inference (:func:`inference_conv_shapes`), as :mod:`sgm.pipelines.sampling` runs it: stage 2
  encodes its T input frames; the conditioner (CLIP, aesthetic and depth embedders, the VAE
  encoder of the condition frames) runs on one clip; the UNet runs on the guidance batch
  [uc ; c] of 2T frames, and on T frames (``--low_memory`` splits the guidance batch); the VAE
  decodes T latents in the config's chunks, and one at a time (``--low_memory``);
- training (:func:`training_conv_shapes`): B clips (``data.params.batch_size``) of T frames: the
  VAE encoder and the conditioner on B*T (stage 2) or B frames, the UNet on B*T.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ..common.conv_check import CACHE_ENV, ConvShape, GuardReport, ensure_trustworthy_convolutions, record_conv_shapes
from ..config import build_model, load_config
from ..models.diffusion import AUTOCAST_DTYPES
from ..models.hi3d import Stage2VideoLDM


def meta_model(config: DictConfig | str | Path):
    """The model of ``config`` on the meta device (random pretrained encoders: no file is read)."""
    config = load_config(config) if not isinstance(config, DictConfig) else config
    with torch.device("meta"):
        return build_model(config, random_pretrained_encoders=True, ckpt_path=None).eval()


def _clip_batch(model, clips: int) -> dict:
    size, frames = model.resolution, model.num_samples
    return {"video": torch.empty(clips, 3, frames, size, size, device="meta"),
            "elevation": torch.empty(clips, device="meta")}


def _unet(model, cond: dict, clips: int, copies: int) -> None:
    """One denoiser call on ``copies`` stacked copies of the conditioning of ``clips`` clips (2: the
    guidance batch [uc ; c], as :func:`~sgm.modules.diffusionmodules.guiders.batch_uncond_cond` makes it)."""
    vae, frames = model.first_stage_model, model.num_samples
    side = model.resolution // vae.downsample_factor
    rows = copies * clips * frames
    x = torch.empty(rows, vae.embed_dim, side, side, device="meta")
    sigma = torch.empty(rows, device="meta")
    model.denoiser(model.model, x, sigma, {key: torch.cat([value] * copies) for key, value in cond.items()},
                   num_video_frames=frames)


def _vae_encode(model, frames: int) -> None:
    """The VAE encoder on ``frames`` frames in the model's chunks (as ``encode_first_stage``, whose
    autocast context does not exist on meta tensors)."""
    size = model.resolution
    chunk = model.encode_chunk_size or frames
    for part in torch.empty(frames, 3, size, size, device="meta").split(chunk):
        model.first_stage_model.posterior(part)


def _vae_decode(model, frames: int, chunk: int | None) -> None:
    """The VAE decoder on ``frames`` latents, ``chunk`` at a time (default: the config's, else all)."""
    vae = model.first_stage_model
    side = model.resolution // vae.downsample_factor
    for part in torch.empty(frames, vae.embed_dim, side, side, device="meta").split(chunk or model.chunk_size or frames):
        vae.decode(part)


def inference_conv_shapes(model) -> list[ConvShape]:
    """Every distinct convolution of one image through ``model`` (a meta model, :func:`meta_model`)."""
    frames = model.num_samples

    def run():
        batch = _clip_batch(model, 1)
        with torch.no_grad():
            if isinstance(model, Stage2VideoLDM):  # stage 2 encodes its input frames
                _vae_encode(model, frames)
            batch = model.add_custom_cond(batch, infer=True)
            cond, _ = model.conditioner.get_unconditional_conditioning(batch, model.unconditional_keys)
            for copies in (2, 1):
                _unet(model, cond, 1, copies)
            _vae_decode(model, frames, None)
            _vae_decode(model, frames, 1)

    return record_conv_shapes(run)


def training_conv_shapes(model, clips: int) -> list[ConvShape]:
    """Every distinct convolution of a training step on ``clips`` clips (forward; the backward runs
    the same shapes' gradient kernels)."""
    frames = model.num_samples

    def run():
        batch = _clip_batch(model, clips)
        with torch.no_grad():
            _vae_encode(model, clips * frames)
            batch = model.add_custom_cond(batch, infer=True)  # training's condition frames have the same sizes
            cond = model.conditioner(batch)
        _unet(model, cond, clips, 1)

    return record_conv_shapes(run)


# Lightning precision -> the dtype the convolutions run in (autocast or half weights).
TRAINING_DTYPES = {**AUTOCAST_DTYPES, "32-true": torch.float32, "32": torch.float32, "16-true": torch.float16,
                   "bf16-true": torch.bfloat16}


def tf32_allowed() -> bool:
    """Whether a run may switch failing float32 convolutions to TF32: when it accepted TF32 for its
    matrix products (``torch.set_float32_matmul_precision("high")`` or ``"medium"``); with the
    default ``"highest"`` the failing shapes go through PyTorch's own kernels instead."""
    return torch.get_float32_matmul_precision() != "highest"


def listed_once(config: DictConfig | str | Path, kind: str, lister) -> list[ConvShape]:
    """``lister(meta_model(config))``, kept on disk beside the check results (keyed by the model
    node, ``kind`` and the torch version): listing a full-size model costs 4-13 s of CPU (BENCHMARKS.md)."""
    config = load_config(config) if not isinstance(config, DictConfig) else config
    text = OmegaConf.to_yaml(OmegaConf.create({"model": config.model, "kind": kind, "torch": str(torch.__version__),
                                               "data": config.get("data")}), resolve=True)
    folder = os.environ.get(CACHE_ENV, str(Path.home() / ".cache" / "hi3d" / "conv-check"))
    path = Path(folder) / f"shapes-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json" if folder else None
    if path is not None and path.is_file():
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            return [ConvShape.from_json(row) for row in json.loads(path.read_text())]
    shapes = lister(meta_model(config))
    if path is not None:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps([asdict(s) for s in shapes]))
            tmp.replace(path)
    return shapes


def guard_inference_convolutions(model, config: DictConfig | str | Path, device: torch.device,
                                 dtype: torch.dtype) -> GuardReport | None:
    """Check this GPU's kernels for every convolution an inference run of ``config`` makes, in
    ``dtype``; route the failing ones (:func:`~sgm.common.conv_check.ensure_trustworthy_convolutions`).
    Nothing at all off CUDA."""
    return ensure_trustworthy_convolutions(model, device, dtype, allow_tf32=tf32_allowed(),
                                           shapes=lambda: listed_once(config, "inference", inference_conv_shapes))


def guard_training_convolutions(model, config: DictConfig, precision) -> GuardReport | None:
    """The same for a training step (forward and gradients) of ``config`` at Lightning ``precision``,
    on the device ``model`` was built on. Nothing at all off CUDA."""
    device = next(model.parameters()).device
    dtype = TRAINING_DTYPES.get(str(precision if precision is not None else "32-true"))
    if device.type != "cuda" or dtype is None:
        return None
    clips = int(((config.get("data") or {}).get("params") or {}).get("batch_size", 1))
    return ensure_trustworthy_convolutions(model, device, dtype, allow_tf32=tf32_allowed(), backward=True,
                                           shapes=lambda: listed_once(
                                               config, "training", lambda m: training_conv_shapes(m, clips)))
