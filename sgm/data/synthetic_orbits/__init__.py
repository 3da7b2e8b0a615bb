"""Procedural textured objects and a sphere tracer (CPU or GPU) that renders their orbits.

- :mod:`.spec`: :class:`ObjectSpec` (smooth union of textured SDF primitives), JSON round trip.
- :mod:`.random_objects`: :func:`random_object`, a normalised random object from a seed.
- :mod:`.render`: :func:`render_views`, straight-alpha RGBA ``(4, H, W)`` views of an object
  from :class:`sgm.recon.cameras.OrbitCameras` on a chosen device, tuned by :class:`RenderSettings`.
- :mod:`.fused_trace`: the Triton kernels that march rays on a CUDA device (imported on use).

Lengths are world units; angles in degrees unless a name says otherwise.
"""
from sgm.data.synthetic_orbits.random_objects import MAX_OBJECT_RADIUS, random_object
from sgm.data.synthetic_orbits.render import RenderSettings, render_views
from sgm.data.synthetic_orbits.spec import (
    OBJECT_FORMAT,
    SIZE_FIELDS,
    TEXTURE_KINDS,
    ObjectSpec,
    Primitive,
    Texture,
    smooth_union,
)

__all__ = [
    "MAX_OBJECT_RADIUS",
    "OBJECT_FORMAT",
    "SIZE_FIELDS",
    "TEXTURE_KINDS",
    "ObjectSpec",
    "Primitive",
    "RenderSettings",
    "Texture",
    "random_object",
    "render_views",
    "smooth_union",
]
