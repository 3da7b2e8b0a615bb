"""What bounds the demo models' scores: their autoencoder, and stage 2 given perfect stage-1 views.

    python benchmarks/demo_ceilings.py --data /tmp/ho32 --num-objects 8
    python benchmarks/demo_ceilings.py --data /tmp/ho32 --num-objects 8 --ring 2 --json ceilings.json

For each held-out object (rendered by scripts/render_synthetic_orbits.py, as for
scripts/eval_demo.py), one ring's ground-truth views at the stage-1 size (S1) and the stage-2 size
(S2) give, each scored like eval_demo.py (PSNR in dB over frames 1..T-1, on white):

* ``autoencoder S``: the views encoded (posterior mode) and decoded by the stage's own VAE, the
  best any sampled latent can decode to;
* ``mp4 round trip``: the S1 views after the mp4 encoding that stage 2 reads them through;
* ``bicubic``: the S1 views upsampled to S2 (the baseline of eval_demo.py's stage 2);
* ``stage 2 on ground truth``: stage 2 refining the S1 ground-truth views (mp4 round trip, frame
  0 the input view) instead of stage-1 views: the refiner's own quality as a super-resolver;
* ``stage 2 denoiser, sigma s`` (one row per ``--probe-sigmas`` value): one call of the stage-2
  denoiser on the S2 ground-truth latents plus noise of level s, conditioned as in sampling on the
  same views (bilinear to S2), decoded: how well the refiner has learnt to pass its conditioning
  frames through, without sampling. A trained refiner scores near ``autoencoder S2`` at small s.

Printed as a table of means over the objects; ``--json`` also keeps the per-object values.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sgm.common.images import pixels_to_tensor, resize_bilinear, tensor_to_pixels
from sgm.common.video_io import mp4_round_trip
from sgm.evaluation.held_out import scan_held_out
from sgm.evaluation.orbit_metrics import bicubic_upsample, score_orbit
from sgm.pipelines.checks import check_settings
from sgm.pipelines.hi3d import DEMO_CONFIGS, Hi3DPipeline, model_resolution
from sgm.pipelines.loading import autocast_for, model_device_dtype
from sgm.pipelines.sampling import stage2_input_frames

ROWS = ("autoencoder S1", "autoencoder S2", "mp4 round trip", "bicubic", "stage 2 on ground truth")


def probe_row(sigma: float) -> str:
    return f"stage 2 denoiser, sigma {sigma:g}"


@torch.no_grad()
def autoencoded(model, views: np.ndarray) -> np.ndarray:
    """uint8 views ``(T, S, S, 3)`` through ``model.first_stage_model`` (posterior mode), uint8 again."""
    autoencoder = model.first_stage_model
    parameter = next(autoencoder.parameters())
    frames = pixels_to_tensor(views).to(parameter.device, parameter.dtype)
    latents = autoencoder.encode(frames, return_dist=True).mode()
    return tensor_to_pixels(autoencoder.decode(latents).float())


def stage2_on(pipe: Hi3DPipeline, views: np.ndarray, elevation_deg: float, seed: int,
              num_steps: int | None) -> np.ndarray:
    """Stage 2 of ``pipe`` refining uint8 views ``(T, s, s, 3)`` read back from their mp4, frame 0
    as the input view, as the pipeline runs it; uint8 ``(T, S2, S2, 3)``."""
    generator = torch.Generator(pipe.device).manual_seed(seed)
    return pipe.refine_video(mp4_round_trip(views), views[0], check_settings(elevation_deg, seed, num_steps),
                             generator)


@torch.no_grad()
def denoiser_probe(pipe: Hi3DPipeline, views: np.ndarray, truth: np.ndarray, elevation_deg: float,
                   sigmas: list[float], seed: int) -> dict[float, np.ndarray]:
    """The stage-2 denoiser's one-call predictions of ``truth`` (uint8 ``(T, S2, S2, 3)``) from its
    latents plus noise of each level in ``sigmas``, conditioned on uint8 ``views`` ``(T, s, s, 3)``
    read back from their mp4 with frame 0 the input view (as :meth:`Hi3DPipeline.refine_video`
    conditions); decoded, uint8 ``(T, S2, S2, 3)`` per sigma, in the pipeline's dtype (autocast)."""
    model = pipe.model("refine")
    device, dtype = model_device_dtype(model)
    size, frames = model_resolution(model), model.num_samples
    generator = torch.Generator(device).manual_seed(seed)
    inputs = stage2_input_frames(mp4_round_trip(views), views[0], frames)
    condition = pixels_to_tensor(resize_bilinear(inputs, size, size)).to(device)
    latents = model.encode_first_stage(pixels_to_tensor(truth).to(device), generator=generator).float()
    batch = model.add_custom_cond({"video": condition.permute(1, 0, 2, 3)[None],
                                   "elevation": torch.tensor([elevation_deg], device=device)},
                                  infer=True, generator=generator)
    denoise = model.denoiser_fn(frames)
    predictions = {}
    with autocast_for(device, dtype):
        cond, _ = model.conditioner.get_unconditional_conditioning(batch, model.unconditional_keys)
        for sigma in sigmas:
            noise = torch.randn(latents.shape, generator=generator, device=device)
            levels = torch.full((frames,), float(sigma), device=device)
            denoised = denoise(latents + sigma * noise, levels, cond)
            predictions[sigma] = tensor_to_pixels(model.decode_first_stage(denoised).float())
    return predictions


def object_scores(pipe: Hi3DPipeline, obj, ring: int, seed: int, num_steps: int | None,
                  probe_sigmas: list[float]) -> dict[str, float]:
    """PSNR (dB) of every row of :data:`ROWS` and of the denoiser probe for one object."""
    orbit, refine = pipe.model("orbit"), pipe.model("refine")
    size1, size2 = model_resolution(orbit), model_resolution(refine)
    truth1, truth2 = obj.views(ring, 0, size1), obj.views(ring, 0, size2)
    outputs = {"autoencoder S1": (autoencoded(orbit, truth1), truth1),
               "autoencoder S2": (autoencoded(refine, truth2), truth2),
               "mp4 round trip": (mp4_round_trip(truth1), truth1),
               "bicubic": (bicubic_upsample(truth1, size2), truth2),
               "stage 2 on ground truth": (stage2_on(pipe, truth1, obj.ring_elevation(ring), seed, num_steps),
                                           truth2)}
    probes = denoiser_probe(pipe, truth1, truth2, obj.ring_elevation(ring), probe_sigmas, seed)
    outputs.update({probe_row(sigma): (pred, truth2) for sigma, pred in probes.items()})
    return {row: score_orbit(pred, target)["psnr"] for row, (pred, target) in outputs.items()}


def held_out_parser(doc: str, num_objects: int) -> argparse.ArgumentParser:
    """The options the demo benchmarks share: held-out objects, ring, the two configs, seed, device, JSON."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="held-out objects (render_synthetic_orbits.py)")
    parser.add_argument("--num-objects", type=int, default=num_objects)
    parser.add_argument("--ring", type=int, default=2, help="ring index of every object")
    parser.add_argument("--configs", nargs=2, default=list(DEMO_CONFIGS), metavar=("STAGE1", "STAGE2"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    return parser


def pipeline_and_objects(args: argparse.Namespace) -> tuple[Hi3DPipeline, list, int]:
    """The demo pipeline of ``args.configs`` (eager, no background removal) and the first
    ``args.num_objects`` objects of ``args.data`` with the number found there."""
    pipe = Hi3DPipeline.from_configs(*args.configs, device=args.device, use_rembg=False, compile="off")
    return (pipe, *scan_held_out(args.data, args.num_objects))


def main() -> None:
    parser = held_out_parser(__doc__, num_objects=8)
    parser.add_argument("--steps", type=int, default=None, help="stage-2 sampling steps (default: the config's)")
    parser.add_argument("--probe-sigmas", type=float, nargs="*", default=[0.5, 2.0, 10.0],
                        help="noise levels of the denoiser probe (none: no probe)")
    args = parser.parse_args()

    pipe, objects, found = pipeline_and_objects(args)
    started = time.perf_counter()
    per_object = {}
    for obj in objects:
        per_object[obj.name] = object_scores(pipe, obj, args.ring, args.seed, args.steps, args.probe_sigmas)
        print(obj.name, {row: round(value, 2) for row, value in per_object[obj.name].items()}, flush=True)
    rows = [*ROWS, *map(probe_row, args.probe_sigmas)]
    means = {row: float(np.mean([scores[row] for scores in per_object.values()])) for row in rows}
    print(f"\n{len(objects)} of {found} objects in {args.data}, ring {args.ring}, "
          f"{time.perf_counter() - started:.0f} s; PSNR (dB), frames 1..T-1")
    for row in rows:
        print(f"  {row:<28} {means[row]:6.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"configs": [str(c) for c in args.configs], "ring": args.ring, "means": means,
                                         "objects": per_object}, indent=1))


if __name__ == "__main__":
    main()
