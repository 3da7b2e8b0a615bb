"""Does a sharper stage-2 view score a higher PSNR? Only when the view it sharpens is right.

    python benchmarks/demo_sharpening.py --data /tmp/ho32 --num-objects 16
    python benchmarks/demo_sharpening.py --data /tmp/ho32 --num-objects 16 --json sharpening.json

Issue 19 asks the demo's stage 2 to beat bicubic upsampling of the stage-1 views in PSNR. A refiner's
job is to make the views sharper; this measures, with no network in the way, whether sharpness pays
in PSNR at all for the views stage 2 is given. For each held-out object (rendered by
scripts/render_synthetic_orbits.py, as for scripts/eval_demo.py) and one ring, each source of 64 px
views is upsampled to 128 px with bicubic (eval_demo.py's baseline), then sharpened with an unsharp
mask (``v + amount * (v - blur_r(v))``) or blurred (Gaussian, radius r px at 128 px), and scored
against the 128 px ground truth like eval_demo.py (PSNR over frames 1..T-1, on white). Sources:

* ``ground truth``: the ring's own 64 px renders, the views a perfect stage 1 would make;
* ``moved 1 px`` / ``moved 2 px``: the same moved right by 1 or 2 px at 64 px (white comes in), a
  stage 1 whose views are right but misplaced by a pixel or two;
* ``next azimuth``: frame k replaced by frame k-1, i.e. every view 22.5 degrees off;
* ``stage 1``: the demo's stage-1 orbit of the ring's frame 0 (the pipeline, the config's sampler,
  ``--seed``), what stage 2 refines in eval_demo.py.

Printed: per source, bicubic's PSNR and each filter's change to it (dB), with the number of objects
where the filter scores higher. ``--json`` also keeps the per-object values.
"""
from __future__ import annotations

import json
import time

import numpy as np
from demo_ceilings import held_out_parser, pipeline_and_objects
from PIL import Image, ImageFilter

from sgm.evaluation.orbit_metrics import bicubic_upsample, score_orbit
from sgm.pipelines.hi3d import Hi3DPipeline, model_resolution

SOURCES = ("ground truth", "moved 1 px", "moved 2 px", "next azimuth", "stage 1")
FILTERS = {"unsharp r1 x0.5": ("unsharp", 1.0, 0.5), "unsharp r1 x1": ("unsharp", 1.0, 1.0),
           "unsharp r2 x1": ("unsharp", 2.0, 1.0), "blur r1": ("blur", 1.0, 0.0), "blur r2": ("blur", 2.0, 0.0)}


def gaussian_blur(views: np.ndarray, radius: float) -> np.ndarray:
    """uint8 views ``(T, S, S, 3)`` blurred with PIL's Gaussian of ``radius`` px, as float64."""
    return np.stack([np.asarray(Image.fromarray(v).filter(ImageFilter.GaussianBlur(radius)), np.float64)
                     for v in views])


def filtered(views: np.ndarray, kind: str, radius: float, amount: float) -> np.ndarray:
    """uint8 views ``(T, S, S, 3)`` through an unsharp mask ``v + amount (v - blur(v))`` or a blur, uint8."""
    blurred = gaussian_blur(views, radius)
    out = views + amount * (views - blurred) if kind == "unsharp" else blurred
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def moved(views: np.ndarray, pixels: int) -> np.ndarray:
    """uint8 views ``(T, s, s, 3)`` moved right by ``pixels``, white coming in from the left."""
    out = np.full_like(views, 255)
    out[:, :, pixels:] = views[:, :, :views.shape[2] - pixels]
    return out


def sources(pipe: Hi3DPipeline, obj, ring: int, size: int, seed: int) -> dict[str, np.ndarray]:
    """Every source of :data:`SOURCES` for ``obj``'s ``ring``: uint8 views ``(T, size, size, 3)``."""
    truth = obj.views(ring, 0, size)
    orbit = pipe(Image.fromarray(truth[0]), None, elevation_deg=obj.ring_elevation(ring), seed=seed,
                 stages=("orbit",), output_type="np").orbit.pixels
    return {"ground truth": truth, "moved 1 px": moved(truth, 1), "moved 2 px": moved(truth, 2),
            "next azimuth": np.roll(truth, 1, axis=0), "stage 1": orbit}


def object_scores(pipe: Hi3DPipeline, obj, ring: int, seed: int) -> dict[str, dict[str, float]]:
    """{source: {"bicubic": PSNR, filter: PSNR change}} for one object."""
    size1, size2 = model_resolution(pipe.model("orbit")), model_resolution(pipe.model("refine"))
    truth = obj.views(ring, 0, size2)
    scores = {}
    for name, views in sources(pipe, obj, ring, size1, seed).items():
        upsampled = bicubic_upsample(views, size2)
        base = score_orbit(upsampled, truth)["psnr"]
        scores[name] = {"bicubic": base, **{label: score_orbit(filtered(upsampled, *spec), truth)["psnr"] - base
                                            for label, spec in FILTERS.items()}}
    return scores


def main() -> None:
    args = held_out_parser(__doc__, num_objects=16).parse_args()  # stage 2's config only gives the output size
    pipe, objects, found = pipeline_and_objects(args)
    started = time.perf_counter()
    per_object = {obj.name: object_scores(pipe, obj, args.ring, args.seed) for obj in objects}
    print(f"{len(objects)} of {found} objects in {args.data}, ring {args.ring}, {time.perf_counter() - started:.0f} s; "
          "bicubic PSNR (dB) and each filter's change to it (objects higher)")
    print(f"  {'source':<14} {'bicubic':>8}" + "".join(f" {label:>18}" for label in FILTERS))
    means = {}
    for name in SOURCES:
        rows = [scores[name] for scores in per_object.values()]
        means[name] = {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
        cells = "".join(f" {means[name][label]:+8.2f} ({sum(row[label] > 0 for row in rows):>2} of {len(rows):>2})"
                        for label in FILTERS)
        print(f"  {name:<14} {means[name]['bicubic']:8.2f}{cells}")
    if args.json is not None:
        args.json.write_text(json.dumps({"configs": [str(c) for c in args.configs], "ring": args.ring,
                                         "seed": args.seed, "means": means, "objects": per_object}, indent=1))


if __name__ == "__main__":
    main()
