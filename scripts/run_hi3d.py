"""Hi3D on one image, or a batch, in one process: orbit (stage 1), refinement (stage 2), optionally a
mesh (--mesh).

    python scripts/run_hi3d.py --image_path demo/object_a_elev10.png --output_dir outputs/a --elevation 10
    python scripts/run_hi3d.py --demo --image_path demo/object_a_elev10.png --output_dir outputs/demo   # the demo models
    python scripts/run_hi3d.py --demo --image_path demo --output_dir outputs/batch   # every image of a folder
    python scripts/run_hi3d.py --demo --image_path "demo/object_*.png" --output_dir outputs/batch   # a glob (quoted)

A folder or a glob runs every image it names with one model load, each into OUT/<file name without
suffix>/ (the same --elevation for all). An image that fails (unreadable, an existing result
without --overwrite, ...) is reported and the others still run; the command then exits with code 2.

With --devices 2, one image runs the two halves of every guided UNet call on two GPUs at once; a
folder or glob is spread over the GPUs instead: one process per GPU, each running every second image
(--shard K/N, set by the command itself, runs only images K, K+N, ...).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from sgm.cli import DEMO_NOTICE, UNTRAINED_NOTICE, add_sampling_args, pipeline_options, run_main
from sgm.common.devices import resolve_device
from sgm.common.errors import USER_ERRORS, UsageError
from sgm.pipelines.batch import batch_inputs, output_folders
from sgm.pipelines.hi3d import DEMO_CONFIGS, PRETRAINED, Hi3DPipeline
from sgm.pipelines.replicas import resolve_devices
from sgm.recon.fit import FitConfig
from sgm.recon.reconstruct import ReconstructConfig
from sgm.recon.simplify import MIN_FACES


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="store_true", help="use the small demo models trained on procedural objects (demo/models/; no download)")
    parser.add_argument("--ckpt_dir", default="ckpts",
                        help="folder of the released first_stage.pt / second_stage.pt, or a hub repository hf://OWNER/NAME "
                             "(used without --demo or configs; --stage1_checkpoint / --stage2_checkpoint replace a file)")
    parser.add_argument("--stage1_config", default=None, help="stage-1 config (default: inference-v01.yaml, or demo-v01.yaml with --demo)")
    parser.add_argument("--stage2_config", default=None, help="stage-2 config (default: inference-v02.yaml, or demo-v02.yaml with --demo)")
    parser.add_argument("--stage1_checkpoint", default=None, help="stage-1 weights, a path or hf://OWNER/NAME/FILE (default: first_stage.pt of --ckpt_dir, "
                             "or the config's 'checkpoint')")
    parser.add_argument("--stage2_checkpoint", default=None, help="stage-2 weights, a path or hf://OWNER/NAME/FILE (default: second_stage.pt of --ckpt_dir, "
                             "or the config's 'checkpoint')")
    parser.add_argument("--mesh", action="store_true", help="end with 3D reconstruction: OUT/3d/mesh.glb and mesh.obj")
    parser.add_argument("--mesh_resolution", type=int, default=512, help="view size used for the Gaussian fit")
    parser.add_argument("--mesh_iterations", type=int, default=3000, help="Gaussian-fit steps (use a few hundred on a CPU)")
    parser.add_argument("--faces", type=int, default=ReconstructConfig.max_faces,
                        help="face budget of the textured mesh (simplified to about this many; 0 = no limit)")
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="run only images K, K+N, K+2N, ... of a folder or glob (0 <= K < N); --devices 2 with a "
                             "folder starts one process per GPU with it")
    add_sampling_args(parser, image_help="input image (RGBA, or RGB: background removed with rembg if installed), "
                                         "or a folder or quoted glob pattern of images (one output folder each)")
    args = parser.parse_args(argv)
    if args.faces < 0 or 0 < args.faces < MIN_FACES:
        parser.error(f"--faces must be 0 (no limit) or at least {MIN_FACES}, got {args.faces}")
    if args.shard is not None:
        index, _, count = args.shard.partition("/")
        if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
            parser.error(f"--shard must be K/N with 0 <= K < N, got {args.shard!r}")
        args.shard = (int(index), int(count))
    return args


def build_pipeline(args: argparse.Namespace, single_run: bool) -> Hi3DPipeline:
    """The released models from --ckpt_dir, unless --demo or explicit configs / checkpoints are given;
    ``single_run``: one image (no background compilation by default)."""
    options = pipeline_options(args, single_run)
    if not args.demo and args.stage1_config is None and args.stage2_config is None:
        return Hi3DPipeline.from_pretrained(args.ckpt_dir, args.stage1_checkpoint, args.stage2_checkpoint,
                                            **options)
    default1, default2 = DEMO_CONFIGS if args.demo else (PRETRAINED["orbit"][1], PRETRAINED["refine"][1])
    return Hi3DPipeline.from_configs(args.stage1_config or default1, args.stage2_config or default2,
                                     args.stage1_checkpoint, args.stage2_checkpoint, **options)


def report(result) -> None:
    print(f"stage 1: {result.orbit.video}  ({result.orbit.extra['contact_sheet']})")
    print(f"stage 2: {result.refined.video}  ({result.refined.extra['contact_sheet']})")
    if result.mesh is not None:
        print(f"3D: {result.mesh.mesh_glb}  ({result.mesh.scene_ply}, {result.mesh.mesh_obj})")


def run_batch(run, images: list[Path], folders: list[Path], root: Path, label: str = "") -> None:
    """``run(image, folder)`` for every image and its folder; a user error stops only its own image.
    ``label`` starts each progress line (a shard's device).

    Raises:
        UsageError: naming the images that failed, once all have been tried.
    """
    failed = []
    for index, (image, folder) in enumerate(zip(images, folders), 1):
        print(f"{label}[{index}/{len(images)}] {image} -> {folder}", flush=True)
        try:
            report(run(image, folder))
        except USER_ERRORS as err:
            print(f"error: {image}: {err}", file=sys.stderr, flush=True)
            failed.append(image.name)
    if failed:
        raise UsageError(f"{len(failed)} of {len(images)} images failed ({', '.join(failed)}); the results of the "
                         f"others are in {root.resolve()}")


def spread_over_devices(argv: list[str], args: argparse.Namespace) -> None:
    """Run this command once per device of ``--devices``, each on its own shard of the batch, at the same time.

    Raises:
        UsageError: naming the shards (devices) whose process failed, once all have ended.
    """
    devices = resolve_devices(resolve_device(args.device), args.devices)
    print(f"spreading the images over {', '.join(map(str, devices))}: one process each", flush=True)
    workers = [subprocess.Popen([sys.executable, __file__, *argv, "--device", str(device), "--devices", "1",
                                 "--shard", f"{index}/{len(devices)}"]) for index, device in enumerate(devices)]
    failed = [f"{index}/{len(devices)} on {devices[index]} (exit code {code})"
              for index, code in enumerate(worker.wait() for worker in workers) if code != 0]
    if failed:
        raise UsageError(f"the processes of shards {', '.join(failed)} failed; their messages are above")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    images = batch_inputs(args.image_path)  # checked before any model is built
    if images is not None and args.devices > 1:
        spread_over_devices(argv, args)
        print(f"all outputs are in {Path(args.output_dir).resolve()}")
        return
    folders = None if images is None else output_folders(images, Path(args.output_dir))
    if args.shard is not None:
        if images is None:
            raise UsageError("--shard needs a folder or glob of images as --image_path")
        index, count = args.shard
        images, folders = images[index::count], folders[index::count]
        if not images:
            return
    pipe = build_pipeline(args, single_run=images is None or len(images) == 1)
    if pipe.is_untrained("orbit") or pipe.is_untrained("refine"):
        print(UNTRAINED_NOTICE)
    elif args.demo:
        print(DEMO_NOTICE)
    stages = ("orbit", "refine", "mesh") if args.mesh else ("orbit", "refine")
    config = ReconstructConfig(fit=FitConfig(iterations=args.mesh_iterations), resolution=args.mesh_resolution,
                               max_faces=args.faces or None)

    def run(image, folder):
        return pipe(image, folder, elevation_deg=args.elevation, seed=args.seed, num_steps=args.num_steps,
                    min_cfg=args.min_cfg, max_cfg=args.max_cfg, stages=stages, overwrite=args.overwrite,
                    mesh_config=config)

    if images is None:
        report(run(args.image_path, args.output_dir))
    elif args.shard is not None:  # one of several processes: the one that started them prints the end
        run_batch(run, images, folders, Path(args.output_dir), label=f"[{args.device} {args.shard[0]}/{args.shard[1]}] ")
        return
    else:
        run_batch(run, images, folders, Path(args.output_dir))
    print(f"all outputs are in {Path(args.output_dir).resolve()}")


if __name__ == "__main__":
    run_main(main)
