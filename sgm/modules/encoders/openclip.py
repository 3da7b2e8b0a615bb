"""OpenCLIP image embedding of the conditioning frame (the cross-attention context).

:class:`FrozenOpenCLIPImageEmbedder` maps images in [-1, 1] to CLIP image embeddings with
open_clip's ViT-H/14; :class:`FrozenOpenCLIPImagePredictionEmbedder` regroups those
embeddings per clip as ``(B, n_cond_frames, D)`` tokens.

open_clip is used as a library for the network only: models are built from a config
(``open_clip.get_model_config`` or a dict), never with ``pretrained=``, so nothing is
downloaded; weights come from a local file through :func:`load_pretrained`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import open_clip
import torch

from sgm.modules.encoders.base import AbstractEmbModel
from sgm.modules.encoders.image_ops import antialiased_resize, clip_normalize
from sgm.modules.encoders.pretrained import FrozenEmbModel, load_pretrained
from sgm.util import instantiate_from_config

# Keys of a full CLIP checkpoint that belong to the text transformer, which the image-only
# embedders delete (the other text-side tensors stay, as in the released checkpoints).
TEXT_TOWER_PREFIX = "transformer."


def build_clip_image_model(arch: str | Mapping[str, Any], quick_gelu: bool = False) -> open_clip.CLIP:
    """An open_clip ``CLIP`` with random weights and its text transformer deleted.

    Kept besides ``visual.*``: ``token_embedding``, ``positional_embedding``, ``ln_final``,
    ``text_projection``, ``logit_scale`` (part of the official checkpoints' key set).

    Args:
        arch: an open_clip model name (e.g. ``"ViT-H-14"``) or a model config dict
            ``{"embed_dim", "vision_cfg", "text_cfg"}`` (small ones make tiny test models).
        quick_gelu: use ``x * sigmoid(1.702 x)`` as the MLP activation (OpenAI's models).
    """
    if isinstance(arch, str):
        config = open_clip.get_model_config(arch)
        if config is None:
            raise ValueError(f"unknown open_clip architecture {arch!r}; known: {open_clip.list_models()}")
    else:
        config = dict(arch)
    model = open_clip.CLIP(**config, quick_gelu=quick_gelu)
    del model.transformer
    return model


class FrozenOpenCLIPImageEmbedder(FrozenEmbModel):
    """Images in [-1, 1] -> OpenCLIP image embeddings.

    Forward: (N, 3, H, W) in [-1, 1] -> :meth:`preprocess` -> ``model.encode_image`` ->
    (N, D) (D = 1024 for ViT-H-14), cast to the input dtype.

    Args:
        arch: open_clip model name or config dict (see :func:`build_clip_image_model`).
        version: open_clip weights file (``open_clip_pytorch_model.bin``), or ``None`` for
            random weights. The file's text-transformer keys are discarded.
        freeze: freeze the network (no gradients, always eval).
        antialias: Gaussian pre-blur when the resize to the model's input size shrinks.
    """

    def __init__(
        self,
        arch: str | Mapping[str, Any] = "ViT-H-14",
        version: str | None = "ckpts/open_clip_pytorch_model.bin",
        freeze: bool = True,
        antialias: bool = True,
    ):
        super().__init__()
        self.antialias = antialias
        self.model = build_clip_image_model(arch)
        load_pretrained(
            self.model,
            version,
            "conditioner_config ... FrozenOpenCLIPImageEmbedder.params.version",
            discard_prefixes=(TEXT_TOWER_PREFIX,),
        )
        if freeze:
            self.freeze()
        else:  # only the ViT trains: the text tower's leftovers (kept for the official keys) take no part in
            # encode_image, and data-parallel training needs every trainable parameter used in each step
            self.model.requires_grad_(False)
            self.model.visual.requires_grad_(True)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the ViT takes (224 x 224 for ViT-H-14)."""
        return tuple(self.model.visual.image_size)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [-1, 1] -> (N, 3, h, w) CLIP-normalised ViT input.

        Resize to the model's input size with bicubic ``align_corners=True`` interpolation
        (antialiased as in kornia 0.6 when ``antialias``), map to [0, 1], normalise with the
        CLIP mean/std.
        """
        if self.antialias:
            image = antialiased_resize(image, self.image_size, mode="bicubic", align_corners=True)
        else:
            image = torch.nn.functional.interpolate(image, size=self.image_size, mode="bicubic", align_corners=True)
        return clip_normalize((image + 1.0) / 2.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] -> (N, D) image embeddings in ``image.dtype``."""
        return self.model.encode_image(self.preprocess(image)).to(image.dtype)


class FrozenOpenCLIPImagePredictionEmbedder(AbstractEmbModel):
    """Per-clip CLIP context tokens from the clips' condition frames.

    Forward: (B * n_cond_frames, 3, H, W) in [-1, 1], frames of one clip consecutive ->
    inner embedder (B * n_cond_frames, D) -> (B, n_cond_frames, D) -> each clip repeated
    ``n_copies`` times consecutively -> (B * n_copies, n_cond_frames, D).

    Args:
        open_clip_embedding_config: config node ``{target, params}`` of the inner embedder
            (a :class:`FrozenOpenCLIPImageEmbedder`); kept as attribute ``open_clip``.
        n_cond_frames: condition frames per clip.
        n_copies: repetitions of every clip's tokens.
    """

    def __init__(self, open_clip_embedding_config: Mapping[str, Any], n_cond_frames: int, n_copies: int):
        super().__init__()
        self.n_cond_frames = n_cond_frames
        self.n_copies = n_copies
        self.open_clip = instantiate_from_config(open_clip_embedding_config)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B * n_cond_frames, 3, H, W) -> (B * n_copies, n_cond_frames, D)."""
        if frames.shape[0] % self.n_cond_frames:
            raise ValueError(
                f"got {frames.shape[0]} frames, not a multiple of n_cond_frames={self.n_cond_frames}"
            )
        tokens = self.open_clip(frames)
        tokens = tokens.reshape(-1, self.n_cond_frames, tokens.shape[-1])
        return tokens.repeat_interleave(self.n_copies, dim=0)
