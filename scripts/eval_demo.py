"""Score the demo models on held-out procedural objects: stage-1 orbits, stage-2 refinement, 3D.

    python scripts/render_synthetic_orbits.py --out data/held_out --num-objects 32 --resolution 128 --seed 1000
    python scripts/eval_demo.py --data data/held_out --num-objects 32 --output outputs/eval_demo.json

--data holds objects rendered by scripts/render_synthetic_orbits.py with a seed disjoint from the
training objects' (the caller's duty: the script prints the folder and its object count and
records both). For each of the first --num-objects objects (name order), one ring (--ring: an
index, a list cycled over the objects, or "random": drawn per object from --seed):

* Stage 1: ground-truth frame 0 of the ring (azimuth --start) on white at the stage-1 size goes
  in with the ring's true elevation; the 16 views that come out are scored against the ring's
  ground truth (frame k = azimuth start + k) at that size: PSNR (dB), SSIM and silhouette IoU.
  Beside them: the input copied to every frame; the untrained models (--untrained; default: the
  same configs without any trained weights, a fixed random initialisation) with the same seed;
  the model told the wrong elevation (true + --elevation-offset degrees).
* Stage 2: the refined views against the ground truth at the stage-2 size, beside bicubic
  upsampling of the stage-1 views.
* 3D (first --mesh-objects objects): the 3D step fitted to the refined views and to the
  ground-truth views (stage-2 size, true cameras); Chamfer distance and volume IoU of each mesh
  against the object's true surface (from its exact SDF), both normalised (bounding box centred,
  longest side 1). Default fit: the web app's preset (100 Gaussian-fit iterations on a CPU, the
  full 3000 on a GPU), --mesh-iterations to change, at the preset's view size but never above the
  stage-2 size (the views hold no more detail; the GPU preset's 512 px made the 3D step the slowest
  part of a GPU evaluation), --mesh-resolution to change.

Frame 0 (the input view) is left out of every image mean. Silhouettes: a pixel is foreground when
some channel is at most 220 (of 255), in generated and ground-truth views alike. PSNR of identical
views is capped at 120 dB. Sizes come from the configs (``model.params.resolution``).

Prints a table (mean ± std over objects) and writes --output (JSON): settings, configs, checkpoint
files with their SHA-256, per-object scores (with per-frame values) and the means.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sgm.app.models import mesh_settings
from sgm.cli import run_main
from sgm.common.errors import OutputExistsError, UsageError
from sgm.evaluation.demo_eval import (
    METHODS,
    EvalSettings,
    Models,
    aggregate,
    evaluate_object,
    untrained_config,
)
from sgm.evaluation.held_out import scan_held_out
from sgm.evaluation.orbit_metrics import FOREGROUND_RULE, PSNR_CAP_DB, SKIPPED_FRAMES
from sgm.pipelines.checks import SEED_MAX
from sgm.pipelines.hi3d import CONFIG_DIR, Hi3DPipeline
from sgm.pipelines.loading import RANDOM_WEIGHTS_SEED, ModelSpec, resolve_checkpoint
from sgm.pipelines.records import file_sha256

LOG = logging.getLogger("eval_demo")
DEFAULT_CONFIGS = (CONFIG_DIR / "demo-v01.yaml", CONFIG_DIR / "demo-v02.yaml")
LABELS = {("stage1", "model"): "model", ("stage1", "copied_input"): "input copied to every frame",
          ("stage1", "untrained"): "untrained models",
          ("stage1", "wrong_elevation"): "model, elevation {offset:+g} deg",
          ("stage2", "model"): "model (refined)", ("stage2", "bicubic"): "bicubic upsampling of stage 1",
          ("mesh", "refined"): "from the refined views", ("mesh", "ground_truth"): "from the ground-truth views"}
COLUMNS = {"psnr": ("PSNR (dB)", 2), "ssim": ("SSIM", 4), "iou": ("silhouette IoU", 4),
           "chamfer": ("Chamfer", 4), "volume_iou": ("volume IoU", 4)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of held-out objects (render_synthetic_orbits)")
    parser.add_argument("--num-objects", type=int, default=None, help="evaluate the first N objects (default: all)")
    parser.add_argument("--configs", type=Path, nargs=2, default=list(DEFAULT_CONFIGS), metavar=("STAGE1", "STAGE2"),
                        help="configs of the models evaluated (default: configs/demo-v01.yaml configs/demo-v02.yaml)")
    parser.add_argument("--untrained", type=Path, nargs=2, default=None, metavar=("STAGE1", "STAGE2"),
                        help="configs of the untrained baseline (default: --configs without checkpoint, ckpt_path "
                             f"or pretrained encoder files: random weights drawn with seed {RANDOM_WEIGHTS_SEED})")
    parser.add_argument("--ring", nargs="+", default=["random"],
                        help="ring index per object: one index, several (cycled over the objects) or 'random' "
                             "(default: drawn per object from --seed)")
    parser.add_argument("--start", type=int, default=0, help="azimuth index of the input view (default 0)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps of both stages (default: the configs')")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (every object) and seed of the ring draw")
    parser.add_argument("--elevation-offset", type=float, default=20.0,
                        help="degrees added to the true elevation for the wrong-elevation run (0: skip it)")
    parser.add_argument("--mesh-objects", type=int, default=8,
                        help="run the 3D step on the first K objects (default 8; 0: no 3D)")
    parser.add_argument("--mesh-iterations", type=int, default=None,
                        help="Gaussian-fit iterations of the 3D step (default: 100 on a CPU, 3000 on a GPU)")
    parser.add_argument("--mesh-resolution", type=int, default=None,
                        help="view size of the Gaussian fit (default: the preset's, at most the stage-2 size)")
    parser.add_argument("--gt-mesh-resolution", type=int, default=128, help="grid of the true surface, per axis")
    parser.add_argument("--iou-resolution", type=int, default=128, help="voxels per axis of the volume IoU")
    parser.add_argument("--num-points", type=int, default=20000, help="surface samples per mesh for Chamfer")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", help="auto (float16 on cuda, float32 on cpu), float32, ...")
    parser.add_argument("--output", type=Path, required=True, help="results JSON")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse unusable options before anything is built or read.

    Raises:
        UsageError: naming the option; OutputExistsError: --output exists without --overwrite.
    """
    if args.output.exists() and not args.overwrite:
        raise OutputExistsError(f"{args.output} exists; pass --overwrite to replace it")
    if args.output.exists() and not args.output.is_file():
        raise UsageError(f"--output {args.output} is not a file")
    positive = {"--num-objects": args.num_objects, "--steps": args.steps, "--mesh-iterations": args.mesh_iterations,
                "--mesh-resolution": args.mesh_resolution,
                "--gt-mesh-resolution": args.gt_mesh_resolution, "--iou-resolution": args.iou_resolution,
                "--num-points": args.num_points}
    for flag, value in positive.items():
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if args.mesh_objects < 0 or args.start < 0:
        raise UsageError("--mesh-objects and --start must not be negative")
    if not 0 <= args.seed <= SEED_MAX:
        raise UsageError(f"--seed must be in 0..{SEED_MAX}, got {args.seed}")
    if not np.isfinite(args.elevation_offset):
        raise UsageError("--elevation-offset must be finite")
    if args.ring != ["random"]:
        try:
            args.ring = [int(ring) for ring in args.ring]
        except ValueError:
            raise UsageError(f"--ring takes ring indices or 'random', got {' '.join(args.ring)}") from None


def choose_rings(rings: list, count: int, seed: int, num_rings: list[int]) -> list[int]:
    """Ring of each object: ``rings`` cycled, or for ``["random"]`` one drawn from the RNG of ``(seed, index)``."""
    if rings == ["random"]:
        return [int(np.random.default_rng([seed, index]).integers(n)) for index, n in enumerate(num_rings)]
    return [rings[index % len(rings)] for index in range(count)]


def weights_record(config: Path) -> dict:
    """A config's path and its checkpoint file (resolved) with SHA-256 (None without a checkpoint)."""
    checkpoint = resolve_checkpoint(ModelSpec(config))
    digest = file_sha256(checkpoint) if checkpoint is not None and checkpoint.is_file() else None
    return {"config": str(config), "checkpoint": None if checkpoint is None else str(checkpoint), "sha256": digest}


def build_models(args: argparse.Namespace, folder: Path) -> tuple[Models, dict]:
    """The model and untrained pipelines, and a JSON record of their configs and weights."""
    options = {"device": args.device, "dtype": args.dtype, "use_rembg": False, "compile": "off"}
    model = Hi3DPipeline.from_configs(*args.configs, **options)
    record = {"model": {f"stage{k + 1}": weights_record(c) for k, c in enumerate(args.configs)}}
    if args.untrained is not None:
        untrained, same = list(args.untrained), False
        record["untrained"] = {f"stage{k + 1}": weights_record(c) for k, c in enumerate(untrained)}
    else:
        made = [untrained_config(config, folder) for config in args.configs]
        untrained, same = [path for path, _ in made], all(equal for _, equal in made)
        record["untrained"] = {f"stage{k + 1}": {"derived_from": str(config), "checkpoint": None,
                                                 "random_weights_seed": RANDOM_WEIGHTS_SEED}
                               for k, config in enumerate(args.configs)}
    record["untrained"]["same_as_model"] = same
    baseline = None if same else Hi3DPipeline.from_configs(*untrained, **options)
    return Models(model, baseline), record


def format_cell(entry: dict, digits: int) -> str:
    if entry["mean"] is None:
        return "-"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def format_table(means: dict, sizes: tuple[int, int], num_objects: int, elevation_offset: float) -> str:
    """The means as a text table, one block per section."""
    titles = {"stage1": f"stage 1 ({sizes[0]} px, {num_objects} objects)",
              "stage2": f"stage 2 ({sizes[1]} px, {num_objects} objects)",
              "mesh": "3D (normalised meshes)"}
    lines = []
    for section in ("stage1", "stage2", "mesh"):
        if section not in means:
            continue
        metrics = ("chamfer", "volume_iou") if section == "mesh" else ("psnr", "ssim", "iou")
        lines.append(f"{titles[section]:<40}" + "".join(f"{COLUMNS[m][0]:>20}" for m in metrics))
        for key in METHODS:
            if key[0] != section or key[1] not in means[section]:
                continue
            entry = means[section][key[1]]
            label = "  " + LABELS[key].format(offset=elevation_offset)
            row = f"{label:<40}" + "".join(f"{format_cell(entry[m], COLUMNS[m][1]):>20}" for m in metrics)
            if section == "mesh":
                failed = f", {entry['failed']} gave no mesh" if entry["failed"] else ""
                row += f"   n={entry['chamfer']['n']}{failed}"
            lines.append(row)
    return "\n".join(lines)


def write_json(path: Path, results: dict) -> None:
    """Write ``results`` to ``path`` through a temporary file, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=1))
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_args(args)
    objects, found = scan_held_out(args.data, args.num_objects)
    rings = choose_rings(args.ring, len(objects), args.seed, [obj.num_rings for obj in objects])
    for obj, ring in zip(objects, rings):
        obj.ring_elevation(ring)  # a ring the object lacks is named now, before any model is built
    print(f"held-out data: {args.data.resolve()} ({found} objects; evaluating the first {len(objects)})")
    with tempfile.TemporaryDirectory(prefix="eval_demo_") as folder:
        models, weights = build_models(args, Path(folder))
        sizes = models.sizes()
        coarse = [obj.name for obj in objects if int(obj.record.get("resolution", sizes[1])) < sizes[1]]
        if coarse:
            LOG.warning("%d objects (%s, ...) were rendered below the stage-2 size (%d px): their ground truth is "
                        "upsampled; render held-out objects at --resolution %d or more", len(coarse), coarse[0],
                        sizes[1], sizes[1])
        on_gpu = models.model.device.type == "cuda"
        preset = mesh_settings(on_gpu, args.mesh_iterations)
        resolution = args.mesh_resolution or min(preset.resolution, sizes[1])
        mesh = dataclasses.replace(preset, resolution=resolution, texture_size=0)
        settings = EvalSettings(seed=args.seed, num_steps=args.steps, start=args.start,
                                elevation_offset=args.elevation_offset, mesh=mesh,
                                gt_mesh_resolution=args.gt_mesh_resolution, iou_resolution=args.iou_resolution,
                                num_points=args.num_points)
        results = {
            "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["eval_demo.py", *argv]),
            "data": {"folder": str(args.data.resolve()), "objects_found": found, "objects_evaluated": len(objects)},
            "models": weights,
            "sizes": {"stage1": sizes[0], "stage2": sizes[1]},
            "settings": {**{k: v for k, v in dataclasses.asdict(settings).items() if k != "mesh"},
                         "rings": rings, "mesh_objects": min(args.mesh_objects, len(objects)),
                         "mesh": dataclasses.asdict(mesh), "device": str(models.model.device),
                         "dtype": str(models.model.dtype), "frames_skipped_in_means": SKIPPED_FRAMES,
                         "foreground": FOREGROUND_RULE, "psnr_cap_db": PSNR_CAP_DB},
            "objects": [], "complete": False,
        }
        started = time.perf_counter()
        for index, (obj, ring) in enumerate(tqdm(list(zip(objects, rings)), desc="objects", unit="object")):
            results["objects"].append(evaluate_object(obj, ring, models, settings, index < args.mesh_objects))
            results["means"] = aggregate(results["objects"])
            write_json(args.output, results)  # after each object: a long run interrupted keeps what it did
    elapsed = time.perf_counter() - started
    results.update(complete=True, seconds=elapsed, seconds_per_object=elapsed / len(objects))
    write_json(args.output, results)
    print(format_table(results["means"], sizes, len(objects), args.elevation_offset))
    print(f"frame 0 (the input) excluded from the means; {FOREGROUND_RULE}")
    print(f"{len(objects)} objects in {elapsed:.1f} s ({elapsed / len(objects):.1f} s per object); "
          f"written to {args.output}")
    return results


if __name__ == "__main__":
    run_main(main)
