"""How to reproduce each official reference case with our modules.

Every runner takes the case's ``config`` (from cases.json), its tensors, and a loader for
other cases' tensors, and returns our outputs keyed like the case's ``out.*`` entries.
Shapes and settings come only from the config and the tensors.
"""
from __future__ import annotations

import re
from typing import Callable

import torch
import torch.nn.functional as F

from sgm.models.autoencoder import AutoencoderKL
from sgm.modules.diffusionmodules.denoiser import Denoiser
from sgm.modules.diffusionmodules.denoiser_scaling import VScalingWithEDMcNoise
from sgm.modules.diffusionmodules.discretizer import EDMDiscretization
from sgm.modules.diffusionmodules.loss import StandardDiffusionLoss
from sgm.modules.diffusionmodules.refinement import refine_latents, refinement_alpha
from sgm.modules.diffusionmodules.sampling import EulerEDMSampler
from sgm.modules.diffusionmodules.util import timestep_embedding
from sgm.modules.diffusionmodules.video_model import VideoUNet
from sgm.modules.diffusionmodules.wrappers import OpenAIWrapper
from sgm.modules.encoders.aesthetic import AesEmbedder
from sgm.modules.encoders.conditioner import GeneralConditioner
from sgm.modules.encoders.depth import DepthEmbedder
from sgm.modules.encoders.image_ops import antialiased_resize, clip_normalize

Tensors = dict[str, torch.Tensor]
Loader = Callable[[str], Tensors]

DENOISER_CONFIG = {"target": "sgm.modules.diffusionmodules.denoiser.Denoiser",
                   "params": {"scaling_config": {"target": "sgm.modules.diffusionmodules.denoiser_scaling.VScalingWithEDMcNoise"}}}


def weights(tensors: Tensors) -> Tensors:
    """The ``w.*`` entries without their prefix."""
    return {k[2:]: v for k, v in tensors.items() if k.startswith("w.")}


def group(tensors: Tensors, prefix: str) -> Tensors:
    """Entries under ``prefix`` (e.g. ``in.c.``), prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def build_unet(case: dict, tensors: Tensors) -> VideoUNet:
    params = case["config"]["params"]
    unet = VideoUNet(**params)
    unet.load_state_dict(weights(tensors), strict=True)
    return unet.eval()


def bound_denoiser(unet: VideoUNet, num_frames: int, clips: int):
    """``denoiser(x, sigma, cond)`` over the UNet, as the engine builds it."""
    network = OpenAIWrapper(unet)
    denoiser = Denoiser(DENOISER_CONFIG["params"]["scaling_config"])
    indicator = torch.zeros(clips, num_frames)
    return lambda x, sigma, cond: denoiser(
        network, x, sigma, cond, num_video_frames=num_frames, image_only_indicator=indicator
    )


def sampler_from(config: dict) -> EulerEDMSampler:
    guider = config["guider"]
    return EulerEDMSampler(
        discretization_config={
            "target": "sgm.modules.diffusionmodules.discretizer.EDMDiscretization",
            "params": {"sigma_max": config["sigma_max"]},
        },
        num_steps=config["num_steps"],
        guider_config={
            "target": "sgm.modules.diffusionmodules.guiders.LinearPredictionGuider",
            "params": {"max_scale": guider["max_scale"], "min_scale": guider["min_scale"],
                       "num_frames": guider["num_frames"]},
        },
        s_churn=config.get("s_churn", 0.0),
    )


def run_unet(config: dict, t: Tensors, load: Loader, cases: dict) -> Tensors:
    unet = build_unet({"config": config}, t)
    with torch.no_grad():
        y = unet(t["in.x"], t["in.timesteps"], context=t["in.context"], y=t["in.y"],
                 num_video_frames=config["num_video_frames"], image_only_indicator=t["in.image_only_indicator"])
    return {"y": y}


def run_vae(config: dict, t: Tensors, load: Loader, cases: dict) -> Tensors:
    vae = AutoencoderKL(embed_dim=config["embed_dim"], ddconfig=config["ddconfig"]).eval()
    vae.load_state_dict(weights(t), strict=True)
    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(t["in.image"]))
        mode = moments.chunk(2, dim=1)[0]
        decoded = vae.decode(mode)
    return {"moments": moments, "mode": mode, "decoded": decoded}


def run_edm(config: dict, t: Tensors, load: Loader, cases: dict) -> Tensors:
    discretization = EDMDiscretization(sigma_max=config["sigma_max"])
    out = {}
    for key in group(t, "out."):
        match = re.fullmatch(r"sigmas_(\d+)", key)
        if match:
            out[key] = discretization(int(match.group(1)))
    out["c_skip"], out["c_out"], out["c_in"], out["c_noise"] = VScalingWithEDMcNoise()(t["in.sigma"])
    return out


def run_timestep_embedding(config: dict, t: Tensors, load: Loader, cases: dict) -> Tensors:
    out = {}
    for key in group(t, "out."):
        dim = int(re.fullmatch(r"dim_(\d+)", key).group(1))
        out[key] = timestep_embedding(t["in.t"], dim, max_period=config["max_period"])
    return out


def run_sampler(config: dict, t: Tensors, load: Loader, cases: dict) -> Tensors:
    unet_case = config["unet_case"]
    unet = build_unet(cases[unet_case], load(unet_case))
    num_frames = config["guider"]["num_frames"]
    clips = t["in.c.vector"].shape[0]
    denoiser = bound_denoiser(unet, num_frames, 2 * clips)
    with torch.no_grad():
        samples = sampler_from(config)(denoiser, t["in.noise"], group(t, "in.c."), group(t, "in.uc."))
    return {"samples": samples}


def run_stage2_refine(config: dict, t: Tensors, load: Loader, cases: dict) -> Tensors:
    unet_case = config["unet_case"]
    unet = build_unet(cases[unet_case], load(unet_case))
    num_frames = config["num_frames"]
    clips = t["in.c.vector"].shape[0]
    denoiser = bound_denoiser(unet, num_frames, 2 * clips)
    history = []  # the latents after each step, collected through the step callback
    with torch.no_grad():
        latents = refine_latents(
            sampler_from(config), denoiser, t["in.noise"], t["in.z"], group(t, "in.c."), group(t, "in.uc."),
            alpha_power=config["alpha_pow"], callback=lambda info: history.append(info["x"]),
        )
    n = config["num_steps"]
    alphas = torch.tensor([refinement_alpha(i, n, config["alpha_pow"]) for i in range(n)], dtype=torch.float64)
    return {"alphas": alphas, "latents": latents, "latents_per_step": torch.stack(history)}


def run_diffusion_loss(config: dict, t: Tensors, load: Loader, cases: dict) -> Tensors:
    unet_case = config["unet_case"]
    unet = build_unet(cases[unet_case], load(unet_case))
    weighting = config["weighting"]
    loss_fn = StandardDiffusionLoss(
        sigma_sampler_config={"target": "sgm.modules.diffusionmodules.sigma_sampling.EDMSampling"},
        loss_weighting_config={"target": f"sgm.modules.diffusionmodules.loss_weighting.{weighting}"},
        loss_type=config["loss_type"],
        num_frames=config["num_frames"],
        batch2model_keys=["num_video_frames", "image_only_indicator"],
    )
    clips = t["in.sigmas"].shape[0]
    batch = {"num_video_frames": config["num_frames"], "image_only_indicator": torch.zeros(clips, config["num_frames"])}
    denoiser = Denoiser(DENOISER_CONFIG["params"]["scaling_config"])
    with torch.no_grad():
        loss = loss_fn(OpenAIWrapper(unet), denoiser, group(t, "in.c."), t["in.x"], batch,
                       sigmas=t["in.sigmas"], noise=t["in.noise"])
    return {"loss": loss}


def _embedder_node(spec: str, vae_config: dict) -> dict:
    """Config node of one embedder described as text in the conditioner case."""
    name, _, args = spec.partition("(")
    input_key = args.split(",")[0].strip()
    if name == "ConcatTimestepEmbedderND":
        outdim = int(re.search(r",\s*(\d+)\)", spec).group(1))
        return {"target": "sgm.modules.encoders.modules.ConcatTimestepEmbedderND", "input_key": input_key,
                "params": {"outdim": outdim}}
    if name == "VideoPredictionEmbedderWithEncoder":
        n_cond = int(re.search(r"n_cond_frames=(\d+)", spec).group(1))
        n_copies = int(re.search(r"n_copies=(\d+)", spec).group(1))
        scale = float(re.search(r"scale ([\d.]+)", spec).group(1))
        return {"target": "sgm.modules.encoders.modules.VideoPredictionEmbedderWithEncoder", "input_key": input_key,
                "params": {"n_cond_frames": n_cond, "n_copies": n_copies, "is_ae": True, "scale_factor": scale,
                           "encoder_config": {"target": "sgm.models.autoencoder.AutoencoderKLModeOnly",
                                              "params": vae_config}}}
    raise ValueError(f"unknown embedder in the conditioner case: {spec!r}")


def run_conditioner(config: dict, t: Tensors, load: Loader, cases: dict) -> Tensors:
    vae_weights = weights(load("vae"))
    nodes = [_embedder_node(spec, cases["vae"]["config"]) for spec in config["embedders"]]
    conditioner = GeneralConditioner(nodes)
    for embedder in conditioner.embedders:
        if hasattr(embedder, "encoder"):
            embedder.encoder.load_state_dict(vae_weights, strict=True)
    batch = group(t, "in.")
    c, uc = conditioner.get_unconditional_conditioning(batch, config["force_uc_zero_embeddings"])
    return {**{f"c.{k}": v for k, v in c.items()}, **{f"uc.{k}": v for k, v in uc.items()}}


def run_clip_preprocess(config: dict, t: Tensors, load: Loader, cases: dict) -> Tensors:
    size = tuple(t["out.pixels"].shape[-2:])  # the ViT input size (224 for ViT-H/14)
    return {"pixels": clip_normalize((antialiased_resize(t["in.image"], size) + 1.0) / 2.0)}


class PooledPixelFeatures(torch.nn.Module):
    """The aesthetic case's stand-in for CLIP ViT-L/14: adaptive_avg_pool2d(pixels, 16).flatten(1) + 0.1."""

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(pixels, 16).flatten(1) + 0.1


class MeanDepth(torch.nn.Module):
    """The depth case's stand-in for MiDaS: depth(y) = y.mean(dim=1) + 1.5."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.mean(dim=1) + 1.5


def run_aesthetic_embedder(config: dict, t: Tensors, load: Loader, cases: dict) -> Tensors:
    embedder = AesEmbedder(version=None, mlp_version=None, image_encoder=PooledPixelFeatures(), mlp_in=config["mlp_in"])
    embedder.aesthetic_mlp.load_state_dict(group(t, "w.aesthetic_mlp."), strict=True)
    with torch.no_grad():
        return {"vector": embedder(t["in.video"])}


def run_depth_embedder(config: dict, t: Tensors, load: Loader, cases: dict) -> Tensors:
    embedder = DepthEmbedder(version=None, depth_model=MeanDepth(), shuffle_size=config["shuffle_size"],
                             scale_factor=config["scale_factor"])
    with torch.no_grad():
        return {"concat": embedder(t["in.frames"])}


RUNNERS: dict[str, Callable[..., Tensors]] = {
    "unet_stage1": run_unet,
    "unet_stage2": run_unet,
    "vae": run_vae,
    "edm": run_edm,
    "timestep_embedding": run_timestep_embedding,
    "sampler_stage1": run_sampler,
    "stage2_refine": run_stage2_refine,
    "diffusion_loss": run_diffusion_loss,
    "conditioner": run_conditioner,
    "clip_preprocess": run_clip_preprocess,
    "aesthetic_embedder": run_aesthetic_embedder,
    "depth_embedder": run_depth_embedder,
}
