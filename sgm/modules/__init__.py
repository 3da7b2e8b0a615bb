"""Networks, conditioning and diffusion math."""
from .encoders.conditioner import GeneralConditioner

__all__ = ["GeneralConditioner"]
