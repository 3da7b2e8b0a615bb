"""A VAE that downsamples by 4 (the demo models') instead of the SD VAE's 8: latent shapes, the
depth channels of stage 2 and both sampling stages follow the VAE's factor."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sgm.config import build_model, load_config
from sgm.models.autoencoder import AutoencoderKL
from sgm.modules.encoders.depth import DepthEmbedder
from sgm.pipelines.sampling import generate_orbit, latent_shape, refine_orbit

ROOT = Path(__file__).resolve().parents[1]
VAE_FACTOR_4 = [1, 2, 2]
SIZE = 32
TINY_DPT = {"image_size": 64, "stem_channels": 32, "stage_channels": [128, 128, 128], "stage_depths": [1, 1, 1],
            "embed_dim": 64, "depth": 2, "num_heads": 2, "block_hooks": [0, 1], "features": 32, "head_channels": 8}


def ddconfig(ch_mult: list[int]) -> dict:
    return {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
            "ch_mult": ch_mult, "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}


@pytest.mark.parametrize("ch_mult, factor", [([1, 1, 2, 2], 8), (VAE_FACTOR_4, 4), ([1, 2], 2)])
def test_the_downsample_factor_is_two_to_the_levels_minus_one(ch_mult, factor):
    vae = AutoencoderKL(embed_dim=4, ddconfig=ddconfig(ch_mult))
    assert vae.downsample_factor == factor
    assert vae.encode(torch.zeros(1, 3, 16, 16)).shape == (1, 4, 16 // factor, 16 // factor)


def test_depth_channels_follow_the_latent_downsample():
    embedder = DepthEmbedder(version=None, scale_factor=1.0, midas_arch=TINY_DPT, latent_downsample=4)
    assert embedder(torch.zeros(2, 3, 64, 64)).shape == (2, 9, 16, 16)
    assert DepthEmbedder(version=None, scale_factor=1.0, midas_arch=TINY_DPT)(torch.zeros(2, 3, 64, 64)).shape == \
        (2, 9, 8, 8)


def stage_model(name: str, depth_downsample: bool = False):
    config = load_config(ROOT / "configs" / name)
    params = config.model.params
    params.first_stage_config.params.ddconfig.ch_mult = VAE_FACTOR_4
    for embedder in params.conditioner_config.params.emb_models:
        if "encoder_config" in embedder.params:
            embedder.params.encoder_config.params.ddconfig.ch_mult = VAE_FACTOR_4
        if depth_downsample and embedder.target.endswith("DepthEmbedder"):
            embedder.params.latent_downsample = 4
    torch.manual_seed(0)
    return build_model(config).eval()


def test_both_stages_sample_at_the_vae_factor():
    stage1 = stage_model("tiny-train-v01.yaml")
    assert latent_shape(stage1, 16, SIZE, SIZE) == (16, 4, SIZE // 4, SIZE // 4)
    image = torch.rand(3, SIZE, SIZE) * 2 - 1
    orbit = generate_orbit(stage1, image, 10.0, torch.Generator().manual_seed(0), num_steps=2)
    assert orbit.shape == (16, 3, SIZE, SIZE) and torch.isfinite(orbit).all()

    stage2 = stage_model("tiny-train-v02.yaml", depth_downsample=True)
    frames = torch.nn.functional.interpolate(orbit, scale_factor=2, mode="bicubic").clamp(-1, 1)
    refined = refine_orbit(stage2, frames, 10.0, torch.Generator().manual_seed(0), num_steps=2)
    assert refined.shape == (16, 3, 2 * SIZE, 2 * SIZE) and torch.isfinite(refined).all()
