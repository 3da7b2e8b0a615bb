"""MiDaS v3 DPT-Hybrid monocular depth network (architecture only; weights are loaded by the caller)."""
from sgm.modules.encoders.midas.dpt import DPTConfig, DPTDepthModel
from sgm.modules.encoders.midas.encoder import HybridViTConfig

__all__ = ["DPTConfig", "DPTDepthModel", "HybridViTConfig"]
