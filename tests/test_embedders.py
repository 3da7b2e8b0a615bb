"""Unit tests of the pretrained-network embedders (OpenCLIP image, aesthetic, depth).

Tiny architectures keep everything fast on a CPU; the full-size networks are only built on the
meta device to check their parameter names and shapes against the official manifest.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import kornia
import open_clip
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sgm.common.errors import CheckpointError
from sgm.modules.diffusionmodules.util import timestep_embedding
from sgm.modules.encoders.aesthetic import AesEmbedder, middle_frame_pixels
from sgm.modules.encoders.depth import DepthEmbedder
from sgm.modules.encoders.image_ops import CLIP_MEAN, CLIP_STD, antialiased_resize, clip_normalize
from sgm.modules.encoders.openclip import FrozenOpenCLIPImageEmbedder, FrozenOpenCLIPImagePredictionEmbedder
from sgm.modules.encoders.pretrained import MissingPretrainedError

REPO = Path(__file__).resolve().parents[1]
INNER_TARGET = "sgm.modules.encoders.openclip.FrozenOpenCLIPImageEmbedder"

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16, "patch_size": 56},
    "text_cfg": {"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2, "layers": 1},
}
TINY_MIDAS = {
    "image_size": 64,
    "stem_channels": 32,
    "stage_channels": [128, 128, 128],
    "stage_depths": [1, 1, 1],
    "embed_dim": 64,
    "depth": 2,
    "num_heads": 2,
    "block_hooks": [0, 1],
    "features": 32,
    "head_channels": 8,
}


def manifest_path() -> Path:
    reference = os.environ.get("HI3D_REFERENCE_DIR")
    base = Path(reference) if reference else REPO.parent / "shared" / "reference" / "public"
    return base.parent / "state_dict_manifest.json"


def tiny_openclip(version=None) -> FrozenOpenCLIPImageEmbedder:
    return FrozenOpenCLIPImageEmbedder(arch=TINY_CLIP, version=version)


def tiny_aes(version=None, mlp_version=None) -> AesEmbedder:
    return AesEmbedder(version=version, mlp_version=mlp_version, clip_arch=TINY_CLIP)


def tiny_depth(version=None, **kwargs) -> DepthEmbedder:
    return DepthEmbedder(version=version, midas_arch=TINY_MIDAS, scale_factor=1.0, **kwargs)


def random_images(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=generator) * 2 - 1


class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Write ``state_dict`` as a TorchScript archive (the format of OpenAI's CLIP files)."""
    root = _Holder()
    for key, value in state_dict.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, _Holder())
            module = getattr(module, name)
        module.register_buffer(leaf, value)
    torch.jit.script(root).save(str(path))


# --- checkpoint layout -------------------------------------------------------------------


@pytest.mark.parametrize(
    "stage, prefix, build",
    [
        (
            "stage1",
            "conditioner.embedders.0.",
            lambda: FrozenOpenCLIPImagePredictionEmbedder(
                {"target": INNER_TARGET, "params": {"version": None, "freeze": True}}, n_cond_frames=1, n_copies=1
            ),
        ),
        (
            "stage2",
            "conditioner.embedders.0.",
            lambda: FrozenOpenCLIPImagePredictionEmbedder(
                {"target": INNER_TARGET, "params": {"version": None}}, n_cond_frames=1, n_copies=1
            ),
        ),
        ("stage1", "conditioner.embedders.1.", lambda: AesEmbedder(version=None, mlp_version=None)),
        ("stage2", "conditioner.embedders.2.", lambda: DepthEmbedder(version=None, shuffle_size=3)),
    ],
)
def test_full_size_keys_match_manifest(stage, prefix, build):
    path = manifest_path()
    if not path.is_file():
        pytest.skip(f"no state-dict manifest at {path}")
    expected = {
        key[len(prefix) :]: tuple(shape)
        for key, shape in json.loads(path.read_text())[stage].items()
        if key.startswith(prefix)
    }
    with torch.device("meta"):
        module = build()
    got = {key: tuple(t.shape) for key, t in module.state_dict().items()}
    assert sorted(set(expected) - set(got)) == []
    assert sorted(set(got) - set(expected)) == []
    assert {k: got[k] for k in expected if got[k] != expected[k]} == {}


# --- weight files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, key",
    [
        (lambda p: tiny_openclip(version=p), "FrozenOpenCLIPImageEmbedder.params.version"),
        (lambda p: tiny_aes(version=p), "AesEmbedder.params.version"),
        (lambda p: tiny_aes(mlp_version=p), "AesEmbedder.params.mlp_version"),
        (lambda p: tiny_depth(version=p), "DepthEmbedder.params.version"),
    ],
)
def test_missing_weights_file_is_named(tmp_path, build, key):
    missing = tmp_path / "ckpts" / "absent.pt"
    with pytest.raises(MissingPretrainedError) as info:
        build(str(missing))
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in message
    assert key in message
    assert "README.md section 'Checkpoints'" in message


def test_openclip_loads_full_clip_file_without_text_tower(tmp_path):
    torch.manual_seed(1)
    full_clip = open_clip.CLIP(**TINY_CLIP).eval()  # text transformer included, as in the release
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(full_clip.state_dict(), path)

    embedder = tiny_openclip(version=str(path))
    images = random_images(3, 3, 40, 56)
    expected = full_clip.encode_image(embedder.preprocess(images))
    torch.testing.assert_close(embedder(images), expected)


def test_openclip_roundtrip_through_version(tmp_path):
    source = tiny_openclip()
    path = tmp_path / "clip.bin"
    torch.save(source.model.state_dict(), path)
    images = random_images(2, 3, 32, 32)
    torch.testing.assert_close(tiny_openclip(version=str(path))(images), source(images), rtol=0, atol=0)


def test_aesthetic_roundtrip_torchscript_clip_and_mlp(tmp_path):
    source = tiny_aes()
    clip_state = {k: v.half() for k, v in source.aesthetic_model.state_dict().items()}
    clip_state["input_resolution"] = torch.tensor(224)  # metadata entries of OpenAI's files
    clip_state["transformer.resblocks.0.ln_1.weight"] = torch.ones(16)  # a text-tower entry
    clip_path, mlp_path = tmp_path / "ViT-L-14.pt", tmp_path / "mlp.pth"
    save_torchscript(clip_state, clip_path)
    torch.save(source.aesthetic_mlp.state_dict(), mlp_path)
    with torch.no_grad():
        source.aesthetic_model.load_state_dict({k: v.float() for k, v in clip_state.items() if k in source.aesthetic_model.state_dict()})

    loaded = tiny_aes(version=str(clip_path), mlp_version=str(mlp_path))
    video = random_images(2, 3, 4, 48, 64)
    torch.testing.assert_close(loaded(video), source(video), rtol=0, atol=0)


def test_depth_roundtrip_through_version(tmp_path):
    source = tiny_depth()
    path = tmp_path / "dpt_hybrid_384.pt"
    torch.save(source.model.model.state_dict(), path)
    frames = random_images(2, 3, 64, 64)
    torch.testing.assert_close(tiny_depth(version=str(path))(frames), source(frames), rtol=0, atol=0)


def test_strict_loading_names_bad_keys(tmp_path):
    state = tiny_depth().model.model.state_dict()
    state.pop("scratch.layer1_rn.weight")
    state["scratch.extra"] = torch.zeros(1)
    state["scratch.output_conv.4.bias"] = torch.zeros(2)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        tiny_depth(version=str(path))
    message = str(info.value)
    assert "scratch.layer1_rn.weight" in message
    assert "scratch.extra" in message
    assert "scratch.output_conv.4.bias" in message


# --- freezing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: FrozenOpenCLIPImagePredictionEmbedder(
            {"target": INNER_TARGET, "params": {"arch": TINY_CLIP, "version": None}}, n_cond_frames=1, n_copies=1
        ),
        tiny_aes,
        tiny_depth,
    ],
)
def test_frozen_embedders_stay_frozen(build):
    module = build()
    assert sum(p.numel() for p in module.parameters()) > 0
    assert [n for n, p in module.named_parameters() if p.requires_grad] == []
    module.train()
    assert [n for n, m in module.named_modules() if m.training and n] == []


@pytest.mark.parametrize("build", [lambda: FrozenOpenCLIPImageEmbedder(arch=TINY_CLIP, version=None, freeze=False),
                                   lambda: tiny_depth(freeze=False)], ids=["openclip", "depth"])
def test_unfrozen_embedder_trains_every_parameter_it_marks_trainable(build):
    # Data-parallel training (DDP) stops at its second step when a parameter that requires a
    # gradient gets none; the checkpoint-only parts (CLIP's text leftovers, the DPT's classifier
    # head and the skip unit of its deepest fusion block) must not require one.
    module = build().train()
    assert module.training
    module(random_images(2, 3, 64, 64)).float().square().sum().backward()
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    assert len(trainable) > 10
    assert [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None] == []


def test_unfrozen_embedders_keep_every_checkpoint_key():
    clip = FrozenOpenCLIPImageEmbedder(arch=TINY_CLIP, version=None, freeze=False)
    assert all(p.requires_grad for p in clip.model.visual.parameters())
    assert {"model.text_projection", "model.ln_final.weight"} <= set(clip.state_dict())
    depth = tiny_depth(freeze=False)
    assert {"model.model.pretrained.model.head.weight",
            "model.model.scratch.refinenet4.resConfUnit1.conv1.weight"} <= set(depth.state_dict())


# --- OpenCLIP ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(512, 512), (1024, 700), (300, 180), (64, 80)])
def test_antialiased_resize_matches_kornia(size):
    images = random_images(2, 3, *size)
    expected = kornia.geometry.resize(images, (224, 224), interpolation="bicubic", align_corners=True, antialias=True)
    torch.testing.assert_close(antialiased_resize(images, (224, 224)), expected, rtol=0, atol=1e-6)


def test_antialiased_resize_blurs_only_when_shrinking():
    images = random_images(1, 3, 448, 448)
    plain = F.interpolate(images, size=(224, 224), mode="bicubic", align_corners=True)
    assert (antialiased_resize(images, (224, 224)) - plain).abs().max() > 1e-2
    small = random_images(1, 3, 100, 120)
    plain = F.interpolate(small, size=(224, 224), mode="bicubic", align_corners=True)
    torch.testing.assert_close(antialiased_resize(small, (224, 224)), plain, rtol=0, atol=0)


def test_openclip_preprocess_range_and_size():
    embedder = tiny_openclip()
    white = torch.ones(1, 3, 50, 70)
    pixels = embedder.preprocess(white)
    assert pixels.shape == (1, 3, 224, 224)
    torch.testing.assert_close(pixels, clip_normalize(torch.ones(1, 3, 224, 224)))


def test_prediction_embedder_regroups_and_repeats():
    config = {"target": INNER_TARGET, "params": {"arch": TINY_CLIP, "version": None}}
    wrapper = FrozenOpenCLIPImagePredictionEmbedder(config, n_cond_frames=2, n_copies=3)
    frames = random_images(4, 3, 32, 32)  # 2 clips x 2 condition frames
    tokens = wrapper(frames)
    per_frame = wrapper.open_clip(frames)
    assert tokens.shape == (6, 2, TINY_CLIP["embed_dim"])
    for clip in range(2):
        for copy in range(3):
            torch.testing.assert_close(tokens[clip * 3 + copy], per_frame[2 * clip : 2 * clip + 2])


def test_openclip_output_follows_input_dtype_under_autocast():
    embedder = tiny_openclip()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert embedder.model.encode_image(embedder.preprocess(random_images(1, 3, 32, 32))).dtype == torch.bfloat16
        assert embedder(random_images(1, 3, 32, 32)).dtype == torch.float32


# --- aesthetic ---------------------------------------------------------------------------


class PooledFeatures(nn.Module):
    """Stand-in image tower: 16x16 average pooling, 768 features."""

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(pixels, 16).flatten(1) + 0.1


def test_aesthetic_output_layout():
    embedder = AesEmbedder(version=None, mlp_version=None, image_encoder=PooledFeatures())
    out = embedder(random_images(3, 3, 5, 40, 60))
    score = out[:, :1]
    assert out.shape == (3, 256)
    torch.testing.assert_close(out[:, 1:], timestep_embedding(score[:, 0] * 100, 255))


def test_aesthetic_reads_only_the_middle_frame():
    embedder = AesEmbedder(version=None, mlp_version=None, image_encoder=PooledFeatures())
    video = random_images(2, 3, 6, 32, 32)
    changed = video.clone()
    changed[:, :, [0, 1, 2, 4, 5]] = 0
    torch.testing.assert_close(embedder(video), embedder(changed), rtol=0, atol=0)


def test_aesthetic_crop_keeps_central_columns():
    video = torch.zeros(1, 3, 1, 224, 384)
    video[..., 80:304] = 1.0  # central square white, sides black
    pixels = middle_frame_pixels(video)
    torch.testing.assert_close(pixels, clip_normalize(torch.ones(1, 3, 224, 224)))


def test_aesthetic_feature_scale_does_not_matter():
    embedder = AesEmbedder(version=None, mlp_version=None, image_encoder=PooledFeatures())
    video = random_images(2, 3, 3, 32, 32)
    scaled = AesEmbedder(version=None, mlp_version=None, image_encoder=nn.Module())
    scaled.aesthetic_mlp.load_state_dict(embedder.aesthetic_mlp.state_dict())
    scaled.aesthetic_model.encode_image = lambda px: 7.0 * PooledFeatures().encode_image(px)
    torch.testing.assert_close(scaled(video), embedder(video))


def test_aesthetic_mlp_follows_ambient_autocast():
    embedder = AesEmbedder(version=None, mlp_version=None, image_encoder=PooledFeatures())
    video = random_images(1, 3, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        score = embedder.score(video)
        out = embedder(video)
    assert score.dtype == torch.bfloat16
    assert out.dtype == torch.float32


def test_aesthetic_rejects_encoder_and_version_together():
    with pytest.raises(ValueError):
        AesEmbedder(version="ckpts/ViT-L-14.pt", mlp_version=None, image_encoder=PooledFeatures())


# --- depth -------------------------------------------------------------------------------


class MeanDepth(nn.Module):
    """Stand-in depth network: mean over RGB plus 1.5."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.mean(dim=1) + 1.5


def test_depth_output_shape_and_range():
    embedder = tiny_depth()
    out = embedder(random_images(3, 3, 64, 96))
    assert out.shape == (3, 9, 8, 12)
    per_frame = F.pixel_shuffle(out, 3).flatten(1)
    torch.testing.assert_close(per_frame.amin(1), torch.zeros(3))
    torch.testing.assert_close(per_frame.amax(1), torch.ones(3))


def test_depth_resizes_by_scale_factor():
    seen = []

    class Recorder(MeanDepth):
        def forward(self, frames):
            seen.append(tuple(frames.shape[-2:]))
            return super().forward(frames)

    embedder = DepthEmbedder(version=None, depth_model=Recorder(), scale_factor=2.6666)
    embedder(random_images(2, 3, 256, 512))
    assert seen == [(96, 192)]  # int(256 / 2.6666 / 32) * 32, int(512 / 2.6666 / 32) * 32


def test_depth_space_to_depth_channel_order():
    class Ramp(nn.Module):
        def forward(self, frames):
            h, w = frames.shape[-2:]
            return torch.arange(h * w, dtype=frames.dtype).reshape(1, h, w).expand(frames.shape[0], h, w)

    embedder = DepthEmbedder(version=None, depth_model=Ramp(), scale_factor=8 / 3)
    out = embedder(random_images(1, 3, 96, 96))  # depth at 32x32, resized to 36x36
    depth = F.pixel_shuffle(out, 3)
    for row in range(3):
        for col in range(3):
            torch.testing.assert_close(out[:, 3 * row + col], depth[:, 0, row::3, col::3])


def test_depth_clips_and_frames_agree():
    embedder = DepthEmbedder(version=None, depth_model=MeanDepth(), scale_factor=2.0)
    clips = random_images(2, 3, 5, 64, 64)
    frames = clips.transpose(1, 2).flatten(0, 1)
    torch.testing.assert_close(embedder(clips), embedder(frames), rtol=0, atol=0)
    volumetric = DepthEmbedder(version=None, depth_model=MeanDepth(), scale_factor=2.0, use_3d=True)(clips)
    assert volumetric.shape == (2, 9, 5, 8, 8)
    torch.testing.assert_close(volumetric.transpose(1, 2).flatten(0, 1), embedder(frames))


def test_depth_constant_frame_does_not_divide_by_zero():
    embedder = DepthEmbedder(version=None, depth_model=MeanDepth(), scale_factor=2.0)
    out = embedder(torch.zeros(1, 3, 64, 64))
    # resampling noise of a constant map (~1e-7) is divided by the 1e-6 floor, not by itself
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() < 0.5


def test_depth_embedder_refuses_frames_too_small_for_its_scale():
    import re

    from sgm.modules.encoders.depth import DepthEmbedder

    class Flat(torch.nn.Module):
        def forward(self, y):
            return y.mean(dim=1)

    embedder = DepthEmbedder(version=None, depth_model=Flat())
    with pytest.raises(ValueError, match=re.escape("scale_factor=2.6666")):
        embedder(torch.zeros(2, 3, 64, 64))


def test_clip_normalize_applies_the_clip_statistics_per_channel():
    pixels = torch.rand(2, 3, 4, 5)
    mean = torch.tensor(CLIP_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).reshape(1, 3, 1, 1)
    torch.testing.assert_close(clip_normalize(pixels), (pixels - mean) / std, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\) RGB, got shape \(2, 4, 4, 5\)"):
        clip_normalize(torch.rand(2, 4, 4, 5))
