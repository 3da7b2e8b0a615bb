"""Fused GPU kernels (Triton) for the sphere tracer: one launch marches every ray of a chunk.

The torch tracer of :mod:`.render` spends, on a GPU, most of its time launching ~150 small
kernels per march step (one per tensor op of :meth:`ObjectSpec.field`), for up to
``max_steps`` steps per chunk. Here each Triton program marches ``BLOCK`` rays through all
their steps with the distance field evaluated in registers, so a chunk costs one launch.

The arithmetic is that of :mod:`.spec` and :func:`.render._sphere_trace`, op for op in
float32 (sqrt and division correctly rounded); the compiler may fuse a multiply and an add,
so distances can differ from the torch ops in the last bit, and a ray that grazes the hit
threshold can then end differently: renders agree within antialiasing tolerance (see
tests/test_synthetic_orbits.py). Needs ``triton`` (shipped with torch's CUDA wheels);
:func:`available` says whether it imports. Kernels also run under ``TRITON_INTERPRET=1`` on
CPU tensors (how the CPU-only test suite checks them).
"""
from __future__ import annotations

import functools

import torch

from sgm.data.synthetic_orbits.spec import SIZE_FIELDS, ObjectSpec

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch ops serve instead (render.py checks available())
    triton = None

KIND_CODES = {kind: code for code, kind in enumerate(SIZE_FIELDS)}  # sphere 0, box 1, round_box 2, torus 3, ...
PARAM_STRIDE = 20  # floats per primitive: kind, world-to-local (3x3, row-major), offset (3), sizes (4), padding
BLOCK = 128  # rays per Triton program


def available() -> bool:
    """Whether the Triton kernels can be used (``triton`` imports)."""
    return triton is not None


def pack_primitives(spec: ObjectSpec, device: torch.device) -> torch.Tensor:
    """float32 ``(P, PARAM_STRIDE)`` table of ``spec``'s primitives on ``device``.

    Row: kind code, world-to-local matrix (= rotation^T) row-major, offset ``-(R^T c)``, sizes
    (boxes: half sizes minus the rounding, then the rounding, as :meth:`Primitive.sdf` uses them).
    """
    rows = []
    for prim in spec.primitives:
        to_local = [[prim.rotation[j][i] for j in range(3)] for i in range(3)]
        offset = [-sum(to_local[i][j] * prim.center[j] for j in range(3)) for i in range(3)]
        size = list(prim.size)
        if prim.kind in ("box", "round_box"):
            rounding = size[3] if prim.kind == "round_box" else 0.0
            size = [h - rounding for h in size[:3]] + [rounding]
        row = [float(KIND_CODES[prim.kind]), *(v for r in to_local for v in r), *offset, *size]
        rows.append(row + [0.0] * (PARAM_STRIDE - len(row)))
    return torch.tensor(rows, dtype=torch.float32, device=device)


if triton is not None:

    @triton.jit
    def _hypot(a, b):
        return tl.sqrt_rn(a * a + b * b)

    @triton.jit
    def _primitive_sdf(px, py, pz, base):
        """Signed distance ``(BLOCK,)`` of the primitive whose parameter row starts at ``base``."""
        kind = tl.load(base).to(tl.int32)
        x = tl.load(base + 1) * px + tl.load(base + 2) * py + tl.load(base + 3) * pz + tl.load(base + 10)
        y = tl.load(base + 4) * px + tl.load(base + 5) * py + tl.load(base + 6) * pz + tl.load(base + 11)
        z = tl.load(base + 7) * px + tl.load(base + 8) * py + tl.load(base + 9) * pz + tl.load(base + 12)
        s0 = tl.load(base + 13)
        s1 = tl.load(base + 14)
        s2 = tl.load(base + 15)
        s3 = tl.load(base + 16)
        radial = tl.sqrt_rn(x * x + y * y)
        if kind == 0:  # sphere (radius)
            d = tl.sqrt_rn(x * x + y * y + z * z) - s0
        elif (kind == 1) | (kind == 2):  # box, round box (half sizes - rounding, rounding)
            qx = tl.abs(x) - s0
            qy = tl.abs(y) - s1
            qz = tl.abs(z) - s2
            mx = tl.maximum(qx, 0.0)
            my = tl.maximum(qy, 0.0)
            mz = tl.maximum(qz, 0.0)
            outside = tl.sqrt_rn(mx * mx + my * my + mz * mz)
            d = outside + tl.minimum(tl.maximum(qx, tl.maximum(qy, qz)), 0.0) - s3
        elif kind == 3:  # torus (major, minor)
            d = _hypot(radial - s0, z) - s1
        elif kind == 4:  # capsule (half length, radius)
            d = _hypot(radial, z - tl.minimum(tl.maximum(z, -s0), s0)) - s1
        else:  # cylinder (half height, radius)
            qr = radial - s1
            qz = tl.abs(z) - s0
            d = tl.minimum(tl.maximum(qr, qz), 0.0) + _hypot(tl.maximum(qr, 0.0), tl.maximum(qz, 0.0))
        return d

    @triton.jit
    def _smooth_union(a, b, blend, SMOOTH: tl.constexpr):
        if SMOOTH:
            h = tl.minimum(tl.maximum(0.5 + tl.div_rn(0.5 * (b - a), blend), 0.0), 1.0)
            mixed = tl.where(h < 0.5, b + h * (a - b), a - (a - b) * (1.0 - h))  # torch.lerp(b, a, h)
            out = mixed - blend * h * (1.0 - h)
        else:
            out = tl.minimum(a, b)
        return out

    @triton.jit
    def _field(px, py, pz, table, n_prims, blend, SMOOTH: tl.constexpr):
        """:meth:`ObjectSpec.field` at points ``(BLOCK,)`` x 3: smooth union in list order."""
        dist = _primitive_sdf(px, py, pz, table)
        for p in range(1, n_prims):  # 20 = PARAM_STRIDE
            dist = _smooth_union(dist, _primitive_sdf(px, py, pz, table + p * 20), blend, SMOOTH)
        return dist

    @triton.jit
    def _field_kernel(points, out, n, table, n_prims, blend, SMOOTH: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offs < n
        px = tl.load(points + offs, mask=mask, other=0.0)
        py = tl.load(points + n + offs, mask=mask, other=0.0)
        pz = tl.load(points + 2 * n + offs, mask=mask, other=0.0)
        tl.store(out + offs, _field(px, py, pz, table, n_prims, blend, SMOOTH), mask=mask)

    @triton.jit
    def _march_kernel(origins, dirs, t_ptr, t_far_ptr, hit_ptr, n, table, n_prims, blend, hit_scale, relax,
                      max_steps, SMOOTH: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offs < n
        ox = tl.load(origins + offs, mask=mask, other=0.0)
        oy = tl.load(origins + n + offs, mask=mask, other=0.0)
        oz = tl.load(origins + 2 * n + offs, mask=mask, other=0.0)
        dx = tl.load(dirs + offs, mask=mask, other=0.0)
        dy = tl.load(dirs + n + offs, mask=mask, other=0.0)
        dz = tl.load(dirs + 2 * n + offs, mask=mask, other=0.0)
        t = tl.load(t_ptr + offs, mask=mask, other=0.0)
        t_far = tl.load(t_far_ptr + offs, mask=mask, other=0.0)
        active = mask & (t < t_far)
        hit = offs < 0  # all false
        for _ in range(max_steps):
            if tl.max(active.to(tl.int32), axis=0) > 0:  # this block still has rays marching
                ts = tl.where(active, t, 0.0)  # finished or missing rays (t may be inf) idle at their origin
                dist = _field(ox + ts * dx, oy + ts * dy, oz + ts * dz, table, n_prims, blend, SMOOTH)
                done = active & (dist < hit_scale * t)
                hit = hit | done
                t = tl.where(active & ~done, t + relax * dist, t)
                active = active & ~done & (t < t_far)
        tl.store(t_ptr + offs, t, mask=mask)
        tl.store(hit_ptr + offs, hit.to(tl.int8), mask=mask)


def _grid(n: int) -> tuple[int]:
    return (max(1, (n + BLOCK - 1) // BLOCK),)


@functools.lru_cache(maxsize=256)
def _packed(spec: ObjectSpec, device: torch.device) -> torch.Tensor:
    return pack_primitives(spec, device)


def _params(spec: ObjectSpec, device: torch.device) -> torch.Tensor:
    try:
        return _packed(spec, device)
    except TypeError:  # an ObjectSpec holding lists is unhashable
        return pack_primitives(spec, device)


def field(spec: ObjectSpec, rows: torch.Tensor) -> torch.Tensor:
    """:meth:`ObjectSpec.field` of float32 points stored as rows ``(3, N)`` -> ``(N,)``, one kernel launch."""
    rows = rows.contiguous()
    n = rows.shape[1]
    out = torch.empty(n, dtype=torch.float32, device=rows.device)
    if n:
        _field_kernel[_grid(n)](rows, out, n, _params(spec, rows.device), len(spec.primitives), float(spec.blend),
                                SMOOTH=spec.blend > 0.0, BLOCK_SIZE=BLOCK)
    return out


def march(spec: ObjectSpec, origins: torch.Tensor, dirs: torch.Tensor, t_near: torch.Tensor, t_far: torch.Tensor,
          hit_scale: float, relax: float, max_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sphere-trace float32 rays (origins, unit dirs as rows ``(3, N)``) from ``t_near`` ``(N,)`` up to ``t_far``.

    A ray hits when the field falls below ``hit_scale * t`` (world units); otherwise it steps
    ``relax * field`` and stops when past ``t_far`` or after ``max_steps`` steps (a miss).
    Returns the hit mask ``(N,)`` and the distances ``(N,)`` (where each ray stopped).
    """
    n = origins.shape[1]
    t = t_near.contiguous().clone()
    hit = torch.zeros(n, dtype=torch.int8, device=origins.device)
    if n:
        _march_kernel[_grid(n)](origins.contiguous(), dirs.contiguous(), t, t_far.contiguous(), hit, n,
                                _params(spec, origins.device), len(spec.primitives), float(spec.blend),
                                float(hit_scale), float(relax), int(max_steps), SMOOTH=spec.blend > 0.0,
                                BLOCK_SIZE=BLOCK)
    return hit.bool(), t
