"""Aesthetic-score conditioning of stage 1 (official name ``vtdm.encoders.AesEmbedder``).

The middle frame of the target clip is scored by the LAION "improved aesthetic predictor"
(an MLP on L2-normalised OpenAI CLIP ViT-L/14 image features); the score and its sinusoidal
embedding form a 256-wide vector condition.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from sgm.modules.diffusionmodules.util import timestep_embedding
from sgm.modules.encoders.image_ops import clip_normalize
from sgm.modules.encoders.openclip import TEXT_TOWER_PREFIX, build_clip_image_model
from sgm.modules.encoders.pretrained import FrozenEmbModel, load_pretrained

# Non-weight entries of OpenAI's CLIP state dict.
OPENAI_CLIP_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
# Width of the ViT-L/14 image features the released MLP was trained on.
OPENAI_CLIP_FEATURE_DIM = 768

# The middle frame is stretched to this (height, width), then the central square is kept.
STRETCH_SIZE = (224, 384)
CROP_COLUMNS = slice(80, 304)
# The score enters the embedding multiplied by this, embedded with this many channels.
SCORE_EMBED_SCALE = 100.0
SCORE_EMBED_DIM = 255


class AestheticMLP(nn.Module):
    """The improved-aesthetic-predictor head: linear layers only, dropout between the first four.

    ``layers`` indices 0, 2, 4, 6, 7 hold the Linear weights (768->1024->128->64->16->1);
    1, 3, 5 are dropouts (inactive in eval). There are no activation functions.

    Forward: (N, in_features) -> (N, 1) score.
    """

    def __init__(self, in_features: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_features, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


def l2_normalize_rows(features: torch.Tensor) -> torch.Tensor:
    """(N, D) -> rows divided by their L2 norm, computed in float32; zero rows stay zero."""
    features = features.float()
    norm = features.norm(dim=-1, keepdim=True)
    return features / torch.where(norm == 0, torch.ones_like(norm), norm)


def middle_frame_pixels(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] -> (B, 3, 224, 224) CLIP input from frame ``T // 2``.

    The frame is bilinearly resized (``align_corners=False``, no antialias) to 224 x 384,
    ignoring its aspect ratio, columns 80..303 are kept, then it is mapped to [0, 1] and
    CLIP-normalised.
    """
    frame = video[:, :, video.shape[2] // 2]
    frame = F.interpolate(frame, size=STRETCH_SIZE, mode="bilinear", align_corners=False)
    frame = frame[..., CROP_COLUMNS]
    return clip_normalize((frame + 1.0) / 2.0)


class AesEmbedder(FrozenEmbModel):
    """Video clip -> ``[score, temb(100 * score, 255)]`` (B, 256) vector condition.

    Forward on ``video`` (B, 3, T, H, W) in [-1, 1]:
    :func:`middle_frame_pixels` -> ``aesthetic_model.encode_image`` (B, 768) ->
    :func:`l2_normalize_rows` -> :class:`AestheticMLP` score ``s`` (B, 1) ->
    ``cat([s, timestep_embedding(100 * s, 255)])``.

    The MLP runs in the dtype of its weights, under whatever autocast is active (the official
    model runs it under CUDA fp16 autocast, so ``s`` and ``100 * s`` are fp16 there).

    Args:
        version: OpenAI CLIP ViT-L/14 weights (TorchScript ``ViT-L-14.pt`` or a state dict),
            or ``None`` for random weights. Text-transformer keys are discarded.
        mlp_version: aesthetic MLP weights (``sac+logos+ava1-l14-linearMSE.pth``), or ``None``.
        freeze: freeze both networks (no gradients, always eval).
        clip_arch: open_clip model name or config dict of the image tower (built with QuickGELU,
            as OpenAI's CLIP); a small dict gives a tiny test model.
        image_encoder: use this module (anything with ``encode_image((B, 3, 224, 224)) -> (B, F)``)
            instead of building CLIP; ``version`` must then be ``None``.
        mlp_in: MLP input width; defaults to the CLIP image tower's output width, or 768 (that
            of ViT-L/14, which the released MLP expects) with a custom ``image_encoder``.
    """

    def __init__(
        self,
        version: str | None = "ckpts/ViT-L-14.pt",
        mlp_version: str | None = "ckpts/metric_models/sac+logos+ava1-l14-linearMSE.pth",
        freeze: bool = True,
        clip_arch: str | Mapping[str, Any] = "ViT-L-14",
        image_encoder: nn.Module | None = None,
        mlp_in: int | None = None,
    ):
        super().__init__()
        if image_encoder is None:
            image_encoder = build_clip_image_model(clip_arch, quick_gelu=True)
            load_pretrained(
                image_encoder,
                version,
                "conditioner_config ... AesEmbedder.params.version",
                discard_prefixes=(TEXT_TOWER_PREFIX,),
                discard_keys=OPENAI_CLIP_METADATA_KEYS,
            )
            feature_dim = image_encoder.visual.output_dim
        elif version is not None:
            raise ValueError("AesEmbedder: pass either image_encoder or version, not both")
        else:
            feature_dim = OPENAI_CLIP_FEATURE_DIM
        self.aesthetic_model = image_encoder
        self.aesthetic_mlp = AestheticMLP(mlp_in or feature_dim)
        load_pretrained(self.aesthetic_mlp, mlp_version, "conditioner_config ... AesEmbedder.params.mlp_version")
        if freeze:
            self.freeze()

    def score(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, 1) aesthetic score (about 1..10 for real images)."""
        features = self.aesthetic_model.encode_image(middle_frame_pixels(video))
        weight = self.aesthetic_mlp.layers[0].weight
        return self.aesthetic_mlp(l2_normalize_rows(features).to(weight.dtype))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, 256): score then its 255-channel embedding."""
        score = self.score(video)
        embedding = timestep_embedding(score[:, 0] * SCORE_EMBED_SCALE, SCORE_EMBED_DIM)
        return torch.cat([score.to(embedding.dtype), embedding], dim=1)
