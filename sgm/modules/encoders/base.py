"""The interface every conditioning embedder implements."""
from __future__ import annotations

import torch.nn as nn


class AbstractEmbModel(nn.Module):
    """An embedder turns one batch entry (``batch[input_key]``) into a conditioning tensor.

    :class:`~sgm.modules.encoders.conditioner.GeneralConditioner` sets the three routing
    attributes from the config node of each embedder:

    - ``input_key``: the batch key read (e.g. ``"cond_frames"``);
    - ``ucg_rate``: probability of dropping the output to zeros during training
      (classifier-free guidance dropout);
    - ``is_trainable``: whether its parameters receive gradients.

    The output rank decides where it goes: 2-D -> ``vector``, 3-D -> ``crossattn``,
    4-D or 5-D -> ``concat``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.input_key: str | None = None
        self.ucg_rate: float = 0.0
        self.is_trainable: bool = False
