"""Unit tests of the spatio-temporal VideoUNet and its blocks (tiny random models, CPU)."""
from __future__ import annotations

import sys
import warnings

import pytest
import torch

from sgm.modules import attention
from sgm.modules.attention import SpatialTransformer
from sgm.modules.diffusionmodules.video_model import VideoUNet
from sgm.modules.video_attention import SpatialVideoTransformer

CLIPS, FRAMES, SIZE, IN_CH, ADM, CTX = 2, 3, 8, 4, 8, 16

TINY = dict(
    in_channels=IN_CH,
    model_channels=32,
    out_channels=4,
    num_res_blocks=1,
    attention_resolutions=[2, 1],
    channel_mult=[1, 2],
    num_head_channels=16,
    use_linear_in_transformer=True,
    context_dim=CTX,
    num_classes="sequential",
    adm_in_channels=ADM,
    spatial_transformer_attn_type="softmax",
    extra_ff_mix_layer=True,
    use_spatial_context=True,
    merge_strategy="learned_with_images",
    video_kernel_size=[3, 1, 1],
)

OFFICIAL = dict(
    model_channels=320,
    out_channels=4,
    attention_resolutions=[4, 2, 1],
    num_res_blocks=2,
    channel_mult=[1, 2, 4, 4],
    num_head_channels=64,
    use_linear_in_transformer=True,
    transformer_depth=1,
    context_dim=1024,
    spatial_transformer_attn_type="softmax-xformers",
    extra_ff_mix_layer=True,
    use_spatial_context=True,
    merge_strategy="learned_with_images",
    video_kernel_size=[3, 1, 1],
    num_classes="sequential",
    use_checkpoint=True,
)


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter (zero-initialised ones included) with small random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return module


def tiny_unet(seed: int = 0, **overrides) -> VideoUNet:
    return randomize(VideoUNet(**{**TINY, **overrides}), seed).eval()


def inputs(seed: int = 1) -> dict:
    """Inputs for CLIPS clips of FRAMES frames; context and y have one row per clip."""
    gen = torch.Generator().manual_seed(seed)
    rows = CLIPS * FRAMES
    return dict(
        x=torch.randn(rows, IN_CH, SIZE, SIZE, generator=gen),
        timesteps=torch.rand(rows, generator=gen),
        context=torch.randn(CLIPS, 1, CTX, generator=gen),
        y=torch.randn(CLIPS, ADM, generator=gen),
        num_video_frames=FRAMES,
    )


def frames_of(out: torch.Tensor, clip: int) -> torch.Tensor:
    return out[clip * FRAMES : (clip + 1) * FRAMES]


@torch.no_grad()
def test_output_shape():
    out = tiny_unet()(**inputs())
    assert out.shape == (CLIPS * FRAMES, 4, SIZE, SIZE)
    assert torch.isfinite(out).all()


@torch.no_grad()
def test_per_clip_conditioning_equals_rows_repeated_per_frame():
    model, args = tiny_unet(), inputs()
    per_clip = model(**args)
    args["context"] = args["context"].repeat_interleave(FRAMES, dim=0)
    args["y"] = args["y"].repeat_interleave(FRAMES, dim=0)
    torch.testing.assert_close(model(**args), per_clip, rtol=0, atol=0)


def test_checkpointing_keeps_outputs_and_gradients():
    plain = tiny_unet().train()
    ckpt = VideoUNet(**{**TINY, "use_checkpoint": True}).train()
    ckpt.load_state_dict(plain.state_dict())
    results = []
    for model in (plain, ckpt):
        args = inputs()
        args["x"].requires_grad_(True)
        out = model(**args)
        out.square().mean().backward()
        grads = {name: p.grad for name, p in model.named_parameters()}
        results.append((out.detach(), args["x"].grad, grads))
    (out_a, gx_a, g_a), (out_b, gx_b, g_b) = results
    torch.testing.assert_close(out_b, out_a)
    torch.testing.assert_close(gx_b, gx_a)
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        torch.testing.assert_close(g_b[name], g_a[name], msg=name)


@pytest.mark.parametrize("stage, adm, in_channels", [("stage1", 768, 8), ("stage2", 512, 17)])
def test_full_size_keys_and_shapes_match_official_manifest(manifest, stage, adm, in_channels):
    """``manifest`` (tests/conftest.py): the official whole-model keys and shapes."""
    prefix = "model.diffusion_model."
    expected = {k[len(prefix) :]: v for k, v in manifest[stage].items() if k.startswith(prefix)}
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = VideoUNet(in_channels=in_channels, adm_in_channels=adm, **OFFICIAL)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(got) ^ set(expected)) == []
    assert {k: v for k, v in got.items() if expected[k] != v} == {}


@torch.no_grad()
def test_xformers_type_without_xformers_warns_once_and_matches_softmax(monkeypatch):
    monkeypatch.setitem(sys.modules, "xformers", None)
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    monkeypatch.setattr(attention, "_xformers_fallback_warned", False)
    reference = tiny_unet()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = VideoUNet(**{**TINY, "spatial_transformer_attn_type": "softmax-xformers"}).eval()
        VideoUNet(**{**TINY, "spatial_transformer_attn_type": "softmax-xformers"})
    assert len([w for w in caught if "xformers" in str(w.message)]) == 1
    model.load_state_dict(reference.state_dict())
    args = inputs()
    torch.testing.assert_close(model(**args), reference(**args), rtol=0, atol=0)


@torch.no_grad()
def test_clips_are_independent():
    model, args = tiny_unet(), inputs()
    before = model(**args)
    args["x"][FRAMES:] += torch.randn_like(args["x"][FRAMES:])  # clip 1 only
    after = model(**args)
    torch.testing.assert_close(frames_of(after, 0), frames_of(before, 0), rtol=0, atol=0)
    assert not torch.allclose(frames_of(after, 1), frames_of(before, 1))


@torch.no_grad()
@pytest.mark.parametrize("image_only, mixes", [(0.0, True), (1.0, False)])
def test_frames_mix_only_when_alpha_below_one(image_only, mixes):
    model, args = tiny_unet(), inputs()
    args["image_only_indicator"] = torch.full((CLIPS, FRAMES), image_only)
    before = model(**args)
    args["x"][2] += torch.randn_like(args["x"][2])  # clip 0, frame 2
    after = model(**args)
    assert torch.allclose(after[1], before[1]) != mixes


@torch.no_grad()
def test_video_transformer_on_images_equals_spatial_transformer():
    video = randomize(SpatialVideoTransformer(32, 2, 16, context_dim=CTX, use_spatial_context=True,
                                              merge_strategy="learned_with_images"))
    image = SpatialTransformer(32, 2, 16, context_dim=CTX)
    missing, unexpected = image.load_state_dict(video.state_dict(), strict=False)
    assert missing == [] and unexpected
    x, context = torch.randn(CLIPS * FRAMES, 32, 4, 4), torch.randn(CLIPS * FRAMES, 1, CTX)
    ones = torch.ones(CLIPS, FRAMES)
    torch.testing.assert_close(video(x, context, FRAMES, ones), image(x, context))
    assert not torch.allclose(video(x, context, FRAMES, torch.zeros(CLIPS, FRAMES)), image(x, context))


@torch.no_grad()
def test_time_context_drives_temporal_cross_attention_without_spatial_context():
    model = tiny_unet(use_spatial_context=False, time_context_dim=12)
    args = inputs()
    first = model(**args, time_context=torch.randn(CLIPS, 1, 12))
    second = model(**args, time_context=torch.randn(CLIPS, 1, 12))
    assert first.shape == (CLIPS * FRAMES, 4, SIZE, SIZE)
    assert not torch.allclose(first, second)


def test_disabled_temporal_crossattention_has_no_temporal_attn2():
    keys = VideoUNet(**{**TINY, "disable_temporal_crossattention": True}).state_dict().keys()
    assert not any(".time_stack.0.attn2." in k for k in keys)
    assert any(".transformer_blocks.0.attn2." in k for k in keys)


@pytest.mark.parametrize(
    "override",
    [
        {"use_scale_shift_norm": True},
        {"resblock_updown": True},
        {"conv_resample": False},
        {"dims": 3},
        {"use_linear_in_transformer": False},
        {"num_classes": 10},
        {"spatial_transformer_attn_type": "vanilla"},
        {"merge_strategy": "sometimes"},
        {"num_heads": 2},
    ],
)
def test_unsupported_settings_raise(override):
    with pytest.raises(ValueError):
        VideoUNet(**{**TINY, **override})


def test_forward_needs_num_video_frames_and_matching_rows():
    model, args = tiny_unet(), inputs()
    with pytest.raises(ValueError):
        model(**{**args, "num_video_frames": None})
    with pytest.raises(ValueError):
        model(**{**args, "y": torch.randn(4, ADM)})


def test_single_token_cross_attention_shortcut_equals_full_attention():
    from sgm.modules.attention import CrossAttention, attention

    torch.manual_seed(0)
    layer = CrossAttention(query_dim=32, context_dim=24, heads=2, dim_head=16)
    x, context = torch.randn(3, 10, 32), torch.randn(3, 1, 24)
    q, k, v = (t.reshape(3, -1, 2, 16) for t in (layer.to_q(x), layer.to_k(context), layer.to_v(context)))
    full = layer.to_out(attention(q, k, v).reshape(3, 10, 32))
    with torch.no_grad():
        torch.testing.assert_close(layer(x, context), full)
    layer(x, context).sum().backward()  # training keeps the full graph: every parameter gets a gradient
    assert all(p.grad is not None for p in layer.parameters())
