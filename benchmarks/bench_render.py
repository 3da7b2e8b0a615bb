"""Time the synthetic orbit renderer (sgm.data.synthetic_orbits) per device and resolution.

    python benchmarks/bench_render.py                                   # cpu (+ cuda when present), 512 and 1024 px
    python benchmarks/bench_render.py --device cpu cuda --resolution 512 1024 --views 16 --json render.json
    python benchmarks/bench_render.py --device cpu --resolution 64 --views 2   # quick check without a GPU

One random object (``--seed``) is rendered from ``--views`` cameras spread over the training
orbit (6 rings x 16 azimuths, ring-major). Each (device, resolution) is rendered once as a
warm-up, then ``--repeats`` times; seconds are the median of the repeats, with CUDA
synchronised before and after each. The CPU renders only the first ``--cpu-views`` of those
views (default 2: a CPU needs seconds per 1024 px view); per-view figures make the rows
comparable, and the speed-up of a device is CPU seconds per view / its seconds per view at
the same resolution. ``max_abs`` / ``mean_abs`` compare a device's straight-alpha RGBA
(values in [0, 1]) with the CPU's on the views both rendered; ``iou`` is the silhouette IoU
(alpha > 0.5) over those views. ``peak_gib`` is the peak GPU memory allocated by the render.
``kernels``: how a GPU marches the rays, ``fused`` (the Triton kernels, the default) or
``torch`` (plain torch ops, RenderSettings(fused_kernels=False)); ``--gpu-kernels`` picks.
The table is printed, and written as JSON to ``--json`` when given. A device that fails (out
of memory, say) gets a row with its error and the others still run. Needs torch, numpy only.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from sgm.common.devices import resolve_device
from sgm.common.errors import DeviceError
from sgm.data.synthetic_orbits import RenderSettings, random_object, render_views
from sgm.recon.cameras import orbit_rings

COLUMNS = ("device", "kernels", "resolution", "views", "seconds", "s_per_view", "speedup", "max_abs", "mean_abs", "iou",
           "peak_gib")


def view_indices(total: int, count: int) -> list[int]:
    """``count`` distinct camera indices spread evenly over ``0 .. total - 1`` (in increasing order)."""
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, min(count, total))})


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_render(spec, cameras, indices: list[int], settings: RenderSettings, device: torch.device,
                 repeats: int, warmup: int) -> tuple[list[float], torch.Tensor, float | None]:
    """Seconds of each timed repeat, the views ``(V, 4, H, W)`` (CPU float32) and peak GPU GiB (None on CPU)."""
    views = None
    for _ in range(warmup):
        views = torch.stack(list(render_views(spec, cameras, settings, indices=indices, device=device)))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        views = torch.stack(list(render_views(spec, cameras, settings, indices=indices, device=device)))
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, views, peak


def compare(views: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Max / mean absolute RGBA difference and the silhouette IoU (alpha > 0.5) of matching views ``(V, 4, H, W)``."""
    diff = (views - reference).abs()
    mask, ref_mask = views[:, 3] > 0.5, reference[:, 3] > 0.5
    union = int((mask | ref_mask).sum())
    iou = int((mask & ref_mask).sum()) / union if union else 1.0
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "iou": iou}


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def print_table(rows: list[dict]) -> None:
    cells = [[fmt(row.get(c)) for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths)))
    for row, line in zip(rows, cells):
        print("  ".join(v.rjust(w) for v, w in zip(line, widths)) + (f"  {row['note']}" if row.get("note") else ""))


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, " \
           f"tracing single-threaded)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", nargs="+", default=None,
                        help="devices to time, e.g. cpu cuda cuda:1 (default: cpu, plus cuda when available)")
    parser.add_argument("--resolution", type=int, nargs="+", default=[512, 1024], help="image sides in pixels")
    parser.add_argument("--views", type=int, default=16, help="views rendered per run on a GPU (default 16)")
    parser.add_argument("--cpu-views", type=int, default=2, help="views rendered per run on the CPU (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up; the median is shown")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random object (default 0)")
    parser.add_argument("--edge-samples", type=int, default=RenderSettings.edge_samples,
                        help="sub-pixel rays per axis on silhouettes (renderer default)")
    parser.add_argument("--rays-per-chunk", type=int, default=None, help="override RenderSettings.rays_per_chunk")
    parser.add_argument("--gpu-kernels", nargs="+", choices=("fused", "torch"), default=["fused"],
                        help="GPU tracing variants to time (default fused; torch: RenderSettings(fused_kernels=False))")
    parser.add_argument("--json", type=Path, default=None, help="write the table (and the set-up) to this JSON file")
    args = parser.parse_args(argv)
    if args.views < 1 or args.cpu_views < 1 or args.repeats < 1 or args.warmup < 0 or min(args.resolution) < 8:
        parser.error("--views, --cpu-views, --repeats must be >= 1, --warmup >= 0 and --resolution >= 8")
    names = args.device or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    devices = []
    for name in names:
        try:
            devices.append(resolve_device(name))
        except DeviceError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except RuntimeError:
            print(f"error: --device {name!r} is not a device: use auto, cpu, cuda or cuda:N", file=sys.stderr)
            return 2
    devices = sorted(set(devices), key=lambda d: (d.type != "cpu", str(d)))  # the CPU first: it is the reference

    spec = random_object(args.seed)
    settings = RenderSettings(edge_samples=args.edge_samples, rays_per_chunk=args.rays_per_chunk)
    variants = [(device, kernels) for device in devices
                for kernels in (["torch"] if device.type == "cpu" else dict.fromkeys(args.gpu_kernels))]
    print(f"object: random_object({args.seed}) with {len(spec.primitives)} parts; "
          f"edge_samples={settings.edge_samples}; "
          f"median of {args.repeats} run(s) after {args.warmup} warm-up(s); torch {torch.__version__}")
    for device in devices:
        print(f"  {device_label(device)}")
    rows: list[dict] = []
    for resolution in args.resolution:
        cameras = orbit_rings(width=resolution, height=resolution)
        reference: dict[int, torch.Tensor] = {}
        cpu_per_view = None
        for device, kernels in variants:
            count = args.cpu_views if device.type == "cpu" else args.views
            indices = view_indices(len(cameras), args.views)[:count]
            row = {"device": str(device), "kernels": kernels, "resolution": resolution, "views": len(indices)}
            variant = RenderSettings(**{**settings.__dict__, "fused_kernels": kernels == "fused"})
            if device.type == "cpu" and len(indices) < args.views:
                row["note"] = f"cpu: {len(indices)} of {args.views} views; per-view figures scale"
            try:
                seconds, views, peak = timed_render(spec, cameras, indices, variant, device, args.repeats,
                                                    args.warmup)
            except RuntimeError as err:  # out of memory, say: keep the other rows
                if "out of memory" not in str(err):
                    traceback.print_exc()
                row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                row["note"] = row["error"]
                rows.append(row)
                print(f"{device} ({kernels}) at {resolution} px failed: {row['error']}", file=sys.stderr)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            median = statistics.median(seconds)
            row.update(seconds=median, s_per_view=median / len(indices), runs=seconds, peak_gib=peak)
            if device.type == "cpu":
                reference = dict(zip(indices, views))
                cpu_per_view = row["s_per_view"]
            if cpu_per_view is not None:
                row["speedup"] = cpu_per_view / row["s_per_view"]
            common = [k for k, index in enumerate(indices) if index in reference]
            if common and device.type != "cpu":
                row.update(compare(views[common], torch.stack([reference[indices[k]] for k in common])))
                row["compared_views"] = len(common)
            rows.append(row)
            print(f"  done: {device} ({kernels}) {resolution} px, {median:.3f} s for {len(indices)} views", flush=True)
    print()
    print_table(rows)
    if args.json is not None:
        record = {
            "benchmark": "bench_render",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "devices": {str(d): device_label(d) for d in devices},
            "seed": args.seed,
            "parts": len(spec.primitives),
            "settings": {"edge_samples": settings.edge_samples, "rays_per_chunk": settings.rays_per_chunk,
                         "gpu_kernels": args.gpu_kernels},
            "views": args.views, "cpu_views": args.cpu_views, "repeats": args.repeats, "warmup": args.warmup,
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1))
        print(f"wrote {args.json}")
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
