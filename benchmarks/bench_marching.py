"""Surface extraction of the 3D step: marching cubes (scikit-image) vs marching tetrahedra (numpy).

    python benchmarks/bench_marching.py                       # 128^3 and 256^3, 3 repeats
    python benchmarks/bench_marching.py --resolution 64 128 --repeats 5 --json marching.json

The field is the signed distance of a bumpy sphere (radius 0.5 with a sin-product relief of
amplitude 0.05, world units) sampled on voxel centres over [-0.75, 0.75]^3, like the fused TSDF
volumes of the 3D step. Each extractor runs once as a warm-up, then ``--repeats`` times; seconds
are the median. Printed per grid: seconds and faces of each, the speed-up, and the relative
difference of the enclosed volumes (both meshes are closed). Needs numpy and scikit-image.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sgm.recon.gaussians import grid_points
from sgm.recon.isosurface import EXTRACTORS

BOUND = 0.75


def bumpy_sphere(resolution: int) -> np.ndarray:
    """Signed distance (approximately; negative inside) of the test surface at ``resolution^3`` voxel centres."""
    p = grid_points(resolution, BOUND)
    relief = 0.05 * np.sin(9 * p[..., 0]) * np.sin(7 * p[..., 1]) * np.sin(5 * p[..., 2])
    return (np.linalg.norm(p, axis=-1) - 0.5 + relief).astype(np.float64)


def time_extractor(name: str, values: np.ndarray, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` runs after one warm-up, and the mesh."""
    spacing = 2.0 * BOUND / values.shape[0]
    origin = np.full(3, -BOUND + 0.5 * spacing)
    mesh = EXTRACTORS[name](values, origin, spacing)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        mesh = EXTRACTORS[name](values, origin, spacing)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), mesh


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, nargs="+", default=[128, 256], help="voxels per axis")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per extractor (median)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    import skimage

    print(f"# {datetime.now(timezone.utc):%Y-%m-%d}, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, numpy {np.__version__}, scikit-image {skimage.__version__}")
    print("| grid | tetrahedra s | tetrahedra faces | cubes s | cubes faces | speed-up | volume difference |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for resolution in args.resolution:
        values = bumpy_sphere(resolution)
        tet_s, tet = time_extractor("tetrahedra", values, args.repeats)
        cube_s, cube = time_extractor("cubes", values, args.repeats)
        row = {"grid": resolution, "tetrahedra_s": tet_s, "tetrahedra_faces": len(tet.faces), "cubes_s": cube_s,
               "cubes_faces": len(cube.faces), "speedup": tet_s / cube_s,
               "volume_difference": abs(cube.volume() - tet.volume()) / tet.volume()}
        rows.append(row)
        print(f"| {resolution}^3 | {tet_s:.3f} | {len(tet.faces):,} | {cube_s:.3f} | {len(cube.faces):,} | "
              f"{row['speedup']:.1f}x | {row['volume_difference']:.2e} |", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
