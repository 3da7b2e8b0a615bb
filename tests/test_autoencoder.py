"""Unit tests of the KL autoencoder on tiny random models (parity with the official release is
checked separately against the reference tensors)."""
from __future__ import annotations

import pytest
import torch

from sgm.models.autoencoder import AutoencoderKL, AutoencoderKLModeOnly
from sgm.modules.diffusionmodules.model import AttnBlock, Decoder, Encoder
from sgm.modules.distributions.distributions import DiagonalGaussianDistribution


def tiny_ddconfig(**overrides) -> dict:
    """Two levels (factor 2), width 32 so that GroupNorm(32) fits."""
    config = dict(
        attn_type="vanilla-xformers",
        double_z=True,
        z_channels=4,
        resolution=16,
        in_channels=3,
        out_ch=3,
        ch=32,
        ch_mult=[1, 2],
        num_res_blocks=1,
        attn_resolutions=[],
        dropout=0.0,
    )
    config.update(overrides)
    return config


def full_ddconfig() -> dict:
    """The first-stage / condition-encoder ddconfig of the official Hi3D configs."""
    return tiny_ddconfig(resolution=256, ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2)


def tiny_model(cls=AutoencoderKL, seed: int = 0, **overrides) -> AutoencoderKL:
    torch.manual_seed(seed)
    return cls(embed_dim=4, ddconfig=tiny_ddconfig(**overrides)).eval()


def images(n: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_encode_decode_shapes():
    model = tiny_model()
    x = images(n=2, size=16)
    dist = model.encode(x, return_dist=True)
    assert dist.parameters.shape == (2, 8, 8, 8)
    assert dist.mode().shape == (2, 4, 8, 8)
    z = model.encode(x)
    assert z.shape == (2, 4, 8, 8)
    assert model.decode(z).shape == (2, 3, 16, 16)
    reconstruction, posterior = model(x)
    assert reconstruction.shape == x.shape and isinstance(posterior, DiagonalGaussianDistribution)


@torch.no_grad()
def test_encoder_output_width_follows_double_z():
    torch.manual_seed(0)
    x = images(size=16)
    assert Encoder(**tiny_ddconfig(double_z=True))(x).shape == (2, 8, 8, 8)
    assert Encoder(**tiny_ddconfig(double_z=False))(x).shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="double_z"):
        AutoencoderKL(embed_dim=4, ddconfig=tiny_ddconfig(double_z=False))


@torch.no_grad()
def test_mode_only_encode_returns_posterior_mean():
    sampling = tiny_model(AutoencoderKL)
    mode_only = tiny_model(AutoencoderKLModeOnly)
    mode_only.load_state_dict(sampling.state_dict(), strict=True)
    x = images()
    mean = sampling.encode(x, return_dist=True).mean
    torch.testing.assert_close(mode_only.encode(x), mean, rtol=0, atol=0)
    assert not torch.equal(sampling.encode(x), mean)


@torch.no_grad()
def test_seeded_sample_is_reproducible_and_is_mean_plus_std_noise():
    model = tiny_model()
    x = images()
    z1 = model.encode(x, generator=torch.Generator().manual_seed(7))
    z2 = model.encode(x, generator=torch.Generator().manual_seed(7))
    z3 = model.encode(x, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(z1, z2, rtol=0, atol=0)
    assert not torch.equal(z1, z3)

    dist = model.encode(x, return_dist=True)
    noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(z1 - dist.mode(), dist.std * noise)


@torch.no_grad()
def test_unseeded_sample_uses_global_rng():
    model = tiny_model()
    x = images()
    torch.manual_seed(3)
    z1 = model.encode(x)
    torch.manual_seed(3)
    z2 = model.encode(x)
    torch.testing.assert_close(z1, z2, rtol=0, atol=0)


def test_distribution_split_clamp_and_kl():
    mean = torch.randn(2, 3, 4, 4)
    logvar = torch.full((2, 3, 4, 4), 50.0)
    logvar[:, 0] = -100.0
    dist = DiagonalGaussianDistribution(torch.cat([mean, logvar], dim=1))
    assert torch.equal(dist.mode(), mean)
    assert torch.all(dist.logvar[:, 0] == -30.0) and torch.all(dist.logvar[:, 1:] == 20.0)
    torch.testing.assert_close(dist.std, torch.exp(dist.logvar / 2))

    standard = DiagonalGaussianDistribution(torch.zeros(2, 6, 4, 4))
    torch.testing.assert_close(standard.kl(), torch.zeros(2))
    shifted = DiagonalGaussianDistribution(torch.cat([torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)], dim=1))
    torch.testing.assert_close(shifted.kl(), torch.tensor([0.5 * 12]))


@torch.no_grad()
def test_attention_block_is_single_head_softmax_attention():
    torch.manual_seed(0)
    block = AttnBlock(32).eval()
    x = torch.randn(2, 32, 3, 5)
    h = block.norm(x)
    q, k, v = (proj(h).flatten(2) for proj in (block.q, block.k, block.v))  # (N, C, HW)
    weights = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / 32**0.5, dim=-1)
    attended = torch.einsum("nqk,nck->ncq", weights, v).reshape(x.shape)
    torch.testing.assert_close(block(x), x + block.proj_out(attended))


@torch.no_grad()
def test_attn_type_names_are_the_same_math_and_others_are_rejected():
    vanilla = tiny_model(attn_type="vanilla")
    xformers_name = tiny_model(attn_type="vanilla-xformers")
    xformers_name.load_state_dict(vanilla.state_dict(), strict=True)
    x = images()
    torch.testing.assert_close(xformers_name.encode(x, return_dist=True).parameters,
                               vanilla.encode(x, return_dist=True).parameters, rtol=0, atol=0)
    for bad in ("linear", "none", "memory-efficient-cross-attn"):
        with pytest.raises(ValueError, match="attn_type"):
            Encoder(**tiny_ddconfig(attn_type=bad))
        with pytest.raises(ValueError, match="attn_type"):
            Decoder(**tiny_ddconfig(attn_type=bad))


@torch.no_grad()
def test_attn_resolutions_add_level_attention():
    # resolution 16: encoder level 0 runs at 16, level 1 at 8; decoder level 1 at 8.
    model = tiny_model(attn_resolutions=[8])
    keys = model.state_dict().keys()
    assert "encoder.down.1.attn.0.q.weight" in keys and not any(k.startswith("encoder.down.0.attn") for k in keys)
    assert {"decoder.up.1.attn.0.q.weight", "decoder.up.1.attn.1.q.weight"} <= keys
    assert not any(k.startswith("decoder.up.0.attn") for k in keys)
    assert model.decode(model.encode(images())).shape == (2, 3, 16, 16)


@torch.no_grad()
def test_dtype_follows_the_input():
    model = tiny_model().double()
    x = images().double()
    z = model.encode(x, generator=torch.Generator().manual_seed(0))
    assert z.dtype == torch.float64 and model.decode(z).dtype == torch.float64


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
@pytest.mark.parametrize(
    "cls, prefix",
    [(AutoencoderKL, "first_stage_model."), (AutoencoderKLModeOnly, "conditioner.embedders.3.encoder.")],
)
def test_full_size_layout_matches_manifest(manifest, stage, cls, prefix):
    """Keys and shapes of the released checkpoints (manifest fixture from conftest.py)."""
    expected = {k[len(prefix):]: tuple(shape) for k, shape in manifest[stage].items() if k.startswith(prefix)}
    assert expected, f"manifest {stage} has no keys under {prefix!r}"
    with torch.device("meta"):
        model = cls(embed_dim=4, ddconfig=full_ddconfig(), lossconfig={"target": "torch.nn.Identity"})
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got.keys() == expected.keys(), (sorted(got.keys() - expected.keys()), sorted(expected.keys() - got.keys()))
    assert got == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.no_grad()
def test_generator_on_another_device_than_the_input():
    """A CPU generator seeds a CUDA encode (the official draw), and a CUDA generator a CPU encode."""
    model = tiny_model().cuda()
    x = images().cuda()
    dist = model.encode(x, return_dist=True)
    cpu_noise = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(5))
    z = model.encode(x, generator=torch.Generator().manual_seed(5))
    assert z.device == x.device
    torch.testing.assert_close(z, dist.mean + dist.std * cpu_noise.to(x.device))

    cpu_model = tiny_model()
    cuda_noise = torch.randn(dist.mean.shape, generator=torch.Generator(x.device).manual_seed(5), device=x.device)
    z = cpu_model.encode(x.cpu(), generator=torch.Generator(x.device).manual_seed(5))
    cpu_dist = cpu_model.encode(x.cpu(), return_dist=True)
    assert z.device.type == "cpu"
    torch.testing.assert_close(z, cpu_dist.mean + cpu_dist.std * cuda_noise.cpu())
