"""Public names of the conditioning embedders, at the class paths the official configs use.

Each embedder family lives in its own module; this file only re-exports them so that
``sgm.modules.encoders.modules.<Name>`` resolves.
"""
from .aesthetic import AesEmbedder
from .base import AbstractEmbModel
from .condition_latent import VideoPredictionEmbedderWithEncoder
from .conditioner import GeneralConditioner
from .depth import DepthEmbedder
from .openclip import FrozenOpenCLIPImageEmbedder, FrozenOpenCLIPImagePredictionEmbedder
from .timestep import ConcatTimestepEmbedderND

__all__ = [
    "AbstractEmbModel",
    "AesEmbedder",
    "ConcatTimestepEmbedderND",
    "DepthEmbedder",
    "FrozenOpenCLIPImageEmbedder",
    "FrozenOpenCLIPImagePredictionEmbedder",
    "GeneralConditioner",
    "VideoPredictionEmbedderWithEncoder",
]
