"""Views -> 3D: fit 3D Gaussians to the refined orbit, render extra views, fuse a coloured mesh.

    python scripts/reconstruct_3d.py --views outputs/a/second_step_video/views --elevation 10 --output_dir outputs/a/3d
    python scripts/reconstruct_3d.py --views outputs/a/second_step_video/second.mp4 --elevation 10 \
        --output_dir outputs/a/3d

--views takes a folder of view_XX.png (masks from ../masks/mask_XX.png when present, else the
white threshold; a cameras.json beside the views overrides the orbit), a pipeline output
folder, or a video. Writes OUT/views (inputs and novel views, cameras.json), OUT/masks,
OUT/gaussians.pt and OUT/gaussians.ply (standard 3DGS layout), OUT/mesh.glb (UV-textured, at most
--faces faces), OUT/mesh.obj (the same surface, vertex colours) and OUT/report.json. On CUDA with gsplat
installed the fit uses gsplat; otherwise a plain-PyTorch rasteriser (slow: use small
--resolution and --iterations on a CPU).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from sgm.cli import run_main
from sgm.recon.fit import FitConfig
from sgm.recon.isosurface import EXTRACTORS
from sgm.recon.simplify import MIN_FACES
from sgm.recon.reconstruct import ReconstructConfig, reconstruct
from sgm.recon.rasterize import BACKENDS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", required=True, type=Path, help="folder of views, pipeline output folder, or video")
    parser.add_argument("--elevation", type=float, default=0.0, help="elevation of the orbit in degrees")
    parser.add_argument("--output_dir", required=True, type=Path, help="folder for the 3D results")
    parser.add_argument("--resolution", type=int, default=512, help="longer image side used for fitting (0 = as given)")
    parser.add_argument("--iterations", type=int, default=FitConfig.iterations, help="optimisation steps")
    parser.add_argument("--num_gaussians", type=int, default=FitConfig.num_init, help="Gaussians at initialisation")
    parser.add_argument("--max_gaussians", type=int, default=FitConfig.max_gaussians, help="cap for densification")
    parser.add_argument("--novel_views", type=int, default=ReconstructConfig.num_novel_views,
                        help="extra views rendered between and beside the input orbit")
    parser.add_argument("--mesh_resolution", type=int, default=ReconstructConfig.mesh_resolution,
                        help="voxels per axis of the fused volume")
    parser.add_argument("--faces", type=int, default=ReconstructConfig.max_faces,
                        help="face budget of the mesh (simplified to about this many; 0 = no limit)")
    parser.add_argument("--texture_size", type=int, default=ReconstructConfig.texture_size,
                        help="side of the baked texture in texels (0: vertex colours only)")
    parser.add_argument("--surface", default=ReconstructConfig.surface, choices=sorted(EXTRACTORS),
                        help="surface extraction: marching cubes (default) or marching tetrahedra")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same result on the CPU)")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="rasteriser for fitting (auto: gsplat on CUDA if installed)")
    parser.add_argument("--overwrite", action="store_true", help="replace earlier 3D results in --output_dir")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    for name in ("iterations", "num_gaussians", "max_gaussians", "mesh_resolution"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.novel_views < 0 or args.resolution < 0 or args.texture_size < 0:
        parser.error("--novel_views, --resolution and --texture_size must not be negative")
    if 0 < args.faces < MIN_FACES or args.faces < 0:
        parser.error(f"--faces must be 0 (no limit) or at least {MIN_FACES}, got {args.faces}")
    return args


def config_from_args(args: argparse.Namespace) -> ReconstructConfig:
    """The :class:`ReconstructConfig` that the flags describe."""
    fit = FitConfig(iterations=args.iterations, num_init=args.num_gaussians,
                    max_gaussians=max(args.max_gaussians, args.num_gaussians), seed=args.seed, backend=args.backend)
    return ReconstructConfig(fit=fit, resolution=args.resolution or None, num_novel_views=args.novel_views,
                             mesh_resolution=args.mesh_resolution, max_faces=args.faces or None,
                             texture_size=args.texture_size, surface=args.surface)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = reconstruct(args.views, args.elevation, args.output_dir, config_from_args(args), args.device,
                         args.overwrite, progress=not args.no_progress)
    report = result.report
    width, height = report["resolution"]
    print(f"fitted {report['gaussians']} Gaussians to {report['views']} views ({width}x{height}, "
          f"{report['backend']}) in {report['seconds']['fit']:.1f} s")
    print(f"mesh: {report['mesh_faces']} faces -> {result.mesh_glb} (texture {report['texture']}), {result.mesh_obj}")
    print(f"gaussians: {result.scene_path}, {result.scene_ply}")
    print(f"views (inputs + {report['novel_views']} novel): {result.views_dir}")


if __name__ == "__main__":
    run_main(main)
