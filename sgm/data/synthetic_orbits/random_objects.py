"""Random objects: :func:`random_object` draws an :class:`ObjectSpec` from an integer seed.

The object is normalised to the SyncDreamer scale of :mod:`sgm.recon.cameras` (bounding box
centred at the origin, longest side 1), shrinking it further when needed so it stays inside
a sphere of radius :data:`MAX_OBJECT_RADIUS`, which keeps it uncropped in every view of the
default orbit (distance 1.5, fov 49.1 degrees). Lengths are world units.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
import torch

from sgm.data.synthetic_orbits.spec import (
    SIZE_FIELDS,
    TEXTURE_KINDS,
    ObjectSpec,
    Primitive,
    Texture,
    one_thread,
)

MAX_OBJECT_RADIUS = 0.6  # world units; fits inside every view of the default orbit


def _random_rotation(rng: np.random.Generator) -> tuple[tuple[float, float, float], ...]:
    """Uniformly distributed rotation matrix (QR of a Gaussian matrix, signs fixed, det +1)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    q[:, 0] *= np.linalg.det(q)
    return tuple(tuple(row) for row in q.tolist())


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _random_colour(rng: np.random.Generator, hue: float) -> tuple[float, float, float]:
    rgb = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.45, 0.9), rng.uniform(0.55, 1.0))
    return tuple(float(c) for c in rgb)


def _random_texture(rng: np.random.Generator) -> Texture:
    kind = str(rng.choice(TEXTURE_KINDS, p=[0.15, 0.3, 0.25, 0.3]))
    hue = rng.uniform()
    color_a, color_b = _random_colour(rng, hue), _random_colour(rng, hue + rng.uniform(0.25, 0.75))
    phases = rng.uniform(0.0, 2.0 * math.pi, size=4)
    if kind == "stripes":
        vectors = _unit_vectors(rng, 1) * rng.uniform(3.0, 8.0)
    elif kind == "checker":
        vectors = np.eye(3) * rng.uniform(2.0, 5.0)
    elif kind == "noise":
        vectors = _unit_vectors(rng, 4) * rng.uniform(1.5, 4.0, size=(4, 1))
    else:
        vectors = np.zeros((0, 3))
    waves = tuple(tuple(float(v) for v in (*k, phase)) for k, phase in zip(vectors, phases))
    return Texture(kind, color_a, color_b, waves)


def _random_size(rng: np.random.Generator, kind: str) -> tuple[float, ...]:
    base = rng.uniform(0.12, 0.35)
    if kind == "sphere":
        return (base,)
    if kind in ("box", "round_box"):
        half = base * rng.uniform(0.5, 1.3, size=3)
        return (*half,) if kind == "box" else (*half, float(rng.uniform(0.1, 0.4) * half.min()))
    if kind == "torus":
        return (base, base * rng.uniform(0.2, 0.45))
    return (base * rng.uniform(0.6, 1.4), base * rng.uniform(0.3, 0.6))  # capsule, cylinder


def _normalised(spec: ObjectSpec, grid_size: int = 80) -> ObjectSpec:
    """Centre the bounding box at the origin with longest side 1, then fit in MAX_OBJECT_RADIUS."""
    bound = spec.bounding_radius()
    axis = torch.linspace(-bound, bound, grid_size, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij")).reshape(3, -1)
    inside = torch.cat([rows[:, spec.field(rows) <= 0.0] for rows in grid.split(1 << 16, dim=1)], dim=1).T
    if inside.shape[0] == 0:
        raise ValueError(f"object {spec.name!r} is too thin to normalise on a {grid_size}^3 grid")
    half_cell = bound / (grid_size - 1)
    lo, hi = inside.min(dim=0).values - half_cell, inside.max(dim=0).values + half_cell
    shift = ((lo + hi) / 2).numpy()
    scale = 1.0 / float((hi - lo).max())
    radius = scale * (float(torch.linalg.vector_norm(inside - inside.new_tensor(shift), dim=1).max()) + 2 * half_cell)
    scale *= min(1.0, MAX_OBJECT_RADIUS / radius)
    prims = tuple(p.transformed(scale, shift) for p in spec.primitives)
    return ObjectSpec(spec.name, spec.seed, spec.blend * scale, prims)


def random_object(seed: int, name: str | None = None, num_primitives: tuple[int, int] = (2, 6)) -> ObjectSpec:
    """A random, normalised object drawn deterministically from ``seed``.

    Parts are attached one by one near the surface of an earlier part and joined with a
    smooth union; each gets its own random rotation and texture, so views differ.
    """
    rng = np.random.default_rng(seed)
    kinds = tuple(SIZE_FIELDS)
    prims: list[Primitive] = []
    for _ in range(rng.integers(num_primitives[0], num_primitives[1] + 1)):
        kind = str(rng.choice(kinds))
        if prims:
            anchor = prims[rng.integers(len(prims))]
            offset = _unit_vectors(rng, 1)[0] * anchor.extent() * rng.uniform(0.6, 1.1)
            center = tuple(float(v) for v in np.asarray(anchor.center) + offset)
        else:
            center = (0.0, 0.0, 0.0)
        prims.append(Primitive(kind, center, _random_rotation(rng), _random_size(rng, kind), _random_texture(rng)))
    spec = ObjectSpec(name or f"object_{seed}", int(seed), float(rng.uniform(0.02, 0.1)), tuple(prims))
    with one_thread():
        return _normalised(spec)

