"""Hi3D: high-resolution image-to-3D generation with video diffusion models (clean reimplementation).

The package mirrors the layout of Stability-AI's generative-models so the official Hi3D
YAML configs resolve: ``sgm.modules`` holds the networks and diffusion math,
``sgm.models`` the autoencoder and the Lightning diffusion engine.
"""
__version__ = "0.1.0"
