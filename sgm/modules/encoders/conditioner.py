"""GeneralConditioner: runs every embedder on its batch key and routes outputs by rank."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from ...util import ConfigError, append_dims, instantiate_from_config
from .base import AbstractEmbModel

# Output rank -> conditioning key, and the dim along which same-key outputs are concatenated.
RANK_TO_KEY = {2: "vector", 3: "crossattn", 4: "concat", 5: "concat"}
CONCAT_DIM = {"vector": 1, "crossattn": 2, "concat": 1}


def route(embedding: torch.Tensor) -> str:
    """Conditioning key of an embedder output from its rank."""
    try:
        return RANK_TO_KEY[embedding.ndim]
    except KeyError:
        raise ValueError(f"embedder output of rank {embedding.ndim} has no conditioning slot (2-5 expected)") from None


def drop_rows(embedding: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each row (dim 0) of ``embedding`` independently with probability ``rate``."""
    keep = torch.rand(embedding.shape[0], device=embedding.device, generator=generator) >= rate
    return embedding * append_dims(keep.to(embedding.dtype), embedding.ndim)


class GeneralConditioner(nn.Module):
    """Build the conditioning dict ``{vector, crossattn, concat}`` from a batch.

    Args:
        emb_models: list of embedder config nodes. Besides ``target``/``params`` each node may
            hold ``input_key`` (required), ``ucg_rate`` (default 0) and ``is_trainable``
            (default False). Frozen embedders run without gradients and stay in eval mode.

    Embedders run in list order; outputs of the same key are concatenated in that order
    (``vector`` and ``concat`` on dim 1, ``crossattn`` on dim 2).
    """

    def __init__(self, emb_models: Sequence[dict]):
        super().__init__()
        embedders = []
        for index, node in enumerate(emb_models):
            embedder = instantiate_from_config(node)
            if not isinstance(embedder, AbstractEmbModel):
                raise ConfigError(
                    f"emb_models[{index}] ({node['target']}) is not an AbstractEmbModel subclass"
                )
            if "input_key" not in node:
                raise ConfigError(f"emb_models[{index}] ({node['target']}) has no 'input_key'")
            embedder.input_key = node["input_key"]
            embedder.ucg_rate = float(node.get("ucg_rate", 0.0))
            embedder.is_trainable = bool(node.get("is_trainable", False))
            if not embedder.is_trainable:
                embedder.requires_grad_(False)
                embedder.eval()
            embedders.append(embedder)
        self.embedders = nn.ModuleList(embedders)

    def train(self, mode: bool = True) -> "GeneralConditioner":
        """Set training mode on trainable embedders only; frozen ones stay in eval."""
        self.training = mode
        for embedder in self.embedders:
            embedder.train(mode and embedder.is_trainable)
        return self

    def forward(
        self,
        batch: dict,
        force_zero_embeddings: Iterable[str] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Conditioning dict for ``batch``.

        Args:
            batch: must hold every embedder's ``input_key``.
            force_zero_embeddings: input keys whose embedders output zeros (unconditional).
            generator: RNG of the training-time ``ucg_rate`` dropout.

        In training mode each embedder with ``ucg_rate > 0`` zeroes each output row with that
        probability (rows are clips for vector/crossattn outputs, frames for concat outputs).
        """
        zeroed = set(force_zero_embeddings or ())
        embeddings = []
        for embedder, embedding in zip(self.embedders, self._embeddings(batch)):
            if self.training and embedder.ucg_rate > 0:
                embedding = drop_rows(embedding, embedder.ucg_rate, generator)
            embeddings.append(embedding)
        return self._assemble(embeddings, zeroed)

    def _embeddings(self, batch: dict) -> list[torch.Tensor]:
        """Each embedder's output on its batch key, in list order (no dropout, nothing zeroed)."""
        outputs = []
        for embedder in self.embedders:
            if embedder.input_key not in batch:
                raise KeyError(
                    f"{type(embedder).__name__} reads batch[{embedder.input_key!r}], "
                    f"which is missing (batch keys: {sorted(batch)})"
                )
            grad = contextlib.nullcontext() if embedder.is_trainable else torch.no_grad()
            with grad:
                outputs.append(embedder(batch[embedder.input_key]))
        return outputs

    def _assemble(self, embeddings: Sequence[torch.Tensor], zeroed: set[str]) -> dict[str, torch.Tensor]:
        """The conditioning dict of the embedders' outputs, those reading a ``zeroed`` key as zeros."""
        output: dict[str, torch.Tensor] = {}
        for embedder, embedding in zip(self.embedders, embeddings):
            key = route(embedding)
            if embedder.input_key in zeroed:
                embedding = torch.zeros_like(embedding)
            output[key] = embedding if key not in output else torch.cat([output[key], embedding], CONCAT_DIM[key])
        return output

    def get_unconditional_conditioning(
        self, batch: dict, force_uc_zero_embeddings: Iterable[str] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(c, uc)`` without dropout; ``uc`` zeroes the embedders reading ``force_uc_zero_embeddings``.

        Every embedder runs once: without dropout the embedders are deterministic, so the
        unconditional half takes the conditional half's outputs (zeroed where forced).
        """
        embeddings = self._embeddings(batch)
        return self._assemble(embeddings, set()), self._assemble(embeddings, set(force_uc_zero_embeddings or ()))
