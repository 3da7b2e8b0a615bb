"""Render procedural objects into Hi3D's orbit training layout (CPU or CUDA, no downloads).

Each object gets ``OUT/<name>/`` with one RGBA PNG per view, named so that a plain string
sort gives ring-major, azimuth-minor order (``000.png`` .. ``095.png`` for 6 rings x 16
azimuths: ring r at sorted positions 16r .. 16r+15; rings and azimuth order of
:mod:`sgm.common.orbit`), plus ``cameras.json`` (convention of :mod:`sgm.recon.cameras`,
readable with ``OrbitCameras.from_json``) and ``object.json``
(readable with ``ObjectSpec.from_json``).

The sphere tracer runs on ``--device`` (default auto: CUDA when available). A GPU renders a
512 px or 1024 px orbit in seconds (benchmarks/bench_render.py); its images match the
CPU's within antialiasing tolerance but not bit for bit, so pass ``--device cpu`` where
byte-identical files across machines matter. Objects (object.json) are the same on any device.

Examples:
    python scripts/render_synthetic_orbits.py --out data/synthetic --num-objects 2 --resolution 64
    python scripts/render_synthetic_orbits.py --out data/synthetic512 --num-objects 100 --resolution 512 --device cuda
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from sgm.common.devices import resolve_device
from sgm.common.errors import DeviceError
from sgm.data.synthetic_orbits import ObjectSpec, RenderSettings, random_object, render_views
from sgm.common.orbit import RING_ELEVATIONS_DEG, VIEWS_PER_RING
from sgm.recon.cameras import OrbitCameras, orbit_rings

LOG = logging.getLogger("render_synthetic_orbits")
OUTPUT_FILES = ("cameras.json", "object.json")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per object)")
    parser.add_argument("--num-objects", type=int, required=True, help="how many objects to render")
    parser.add_argument("--resolution", type=int, default=512, help="image width = height in pixels")
    parser.add_argument("--seed", type=int, default=0, help="base seed; object i uses a seed derived from (seed, i)")
    parser.add_argument("--elevations", type=float, nargs="+", default=[float(e) for e in RING_ELEVATIONS_DEG],
                        help="ring elevations in degrees, written in this order")
    parser.add_argument("--azimuths", type=int, default=VIEWS_PER_RING, help="views per ring")
    parser.add_argument("--edge-samples", type=int, default=RenderSettings.edge_samples,
                        help="sub-pixel rays per axis on silhouette pixels (1 = no antialiasing)")
    parser.add_argument("--device", default="auto",
                        help="where to trace: auto (default; CUDA when available, as the other scripts of this "
                             "repository, about 80x faster on an H200), cpu, cuda or cuda:N. CUDA renders equal the "
                             "CPU's within antialiasing tolerance, not bit for bit: use cpu for byte-identical "
                             "files on every machine")
    parser.add_argument("--rays-per-chunk", type=int, default=None,
                        help="rays traced at once (default: about 1M on the CPU, 16M on a GPU, which needs about 6 "
                             "GiB of GPU memory; lower it on a small GPU)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="threads encoding the PNGs (zlib runs outside the GIL; on a GPU encoding takes longer "
                             "than rendering); the files are the same for any count (default: min(8, CPU count))")
    parser.add_argument("--overwrite", action="store_true", help="replace the renders in existing object folders")
    args = parser.parse_args(argv)
    if args.num_objects < 1:
        parser.error("--num-objects must be at least 1")
    if args.resolution < 8:
        parser.error("--resolution must be at least 8")
    if args.azimuths < 1 or args.edge_samples < 1:
        parser.error("--azimuths and --edge-samples must be at least 1")
    if args.rays_per_chunk is not None and args.rays_per_chunk < 1:
        parser.error("--rays-per-chunk must be at least 1")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if any(abs(e) >= 90 for e in args.elevations):
        parser.error("--elevations must lie strictly between -90 and 90 degrees")
    return args


def object_seed(seed: int, index: int) -> int:
    """Independent, reproducible seed of object ``index`` under base ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def frame_names(count: int) -> list[str]:
    """Zero-padded PNG names whose string order is the frame order."""
    width = max(3, len(str(count - 1)))
    return [f"{i:0{width}d}.png" for i in range(count)]


def check_folder(folder: Path, overwrite: bool) -> None:
    """Refuse a non-empty object folder unless ``overwrite``.

    Raises:
        FileExistsError: naming the folder.
    """
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} is not empty; pass --overwrite to replace its renders")
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")


def clear_previous_render(folder: Path) -> None:
    """Remove an earlier run's PNGs and JSON files so no stale frame survives; other files stay."""
    for path in [*folder.glob("*.png"), *(folder / name for name in OUTPUT_FILES)]:
        path.unlink(missing_ok=True)


def cameras_record(cameras: OrbitCameras, names: list[str], elevations: list[float], num_azimuths: int) -> dict:
    """Content of cameras.json: per-frame cameras plus the ring layout and file names."""
    return {
        **cameras.to_json(),
        "resolution": cameras.width,
        "ring_elevations_deg": list(elevations),
        "num_azimuths": num_azimuths,
        "files": names,
    }


def device_from_flag(name: str) -> torch.device:
    """The ``--device`` value as a device.

    Raises:
        DeviceError: CUDA asked for without CUDA, or a name torch does not know; the message names the flag.
    """
    try:
        return resolve_device(name)
    except RuntimeError as err:  # DeviceError, or torch.device's own error for an unknown name
        if isinstance(err, DeviceError):
            raise
        raise DeviceError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None


def save_png(rgba: torch.Tensor, path: Path) -> None:
    """Write a straight-alpha RGBA view ``(4, H, W)`` in [0, 1] as an 8-bit RGBA PNG."""
    pixels = (rgba.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    Image.fromarray(pixels, mode="RGBA").save(path)


def write_object(folder: Path, spec: ObjectSpec, cameras: OrbitCameras, settings: RenderSettings,
                 record: dict, progress: tqdm, device: torch.device = torch.device("cpu"), workers: int = 1) -> None:
    """Render every view of ``cameras`` on ``device`` into ``folder`` with the JSON side files.

    PNGs are encoded by ``workers`` threads while later views render; at most ``2 * workers``
    views wait in memory.
    """
    folder.mkdir(parents=True, exist_ok=True)
    clear_previous_render(folder)
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for name, rgba in zip(record["files"], render_views(spec, cameras, settings, device=device)):
            pending.append(pool.submit(save_png, rgba, folder / name))
            while len(pending) > 2 * workers or (pending and pending[0].done()):
                pending.popleft().result()
                progress.update(1)
        while pending:
            pending.popleft().result()
            progress.update(1)
    (folder / "cameras.json").write_text(json.dumps(record, indent=1))
    (folder / "object.json").write_text(json.dumps(spec.to_json(), indent=1))


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 done, 1 an object folder in the way, 2 a bad ``--device``)."""
    args = parse_args(argv)
    try:
        device = device_from_flag(args.device)
    except DeviceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = [f"synthetic_{args.seed}_{i:05d}" for i in range(args.num_objects)]
    try:
        for name in names:
            check_folder(args.out / name, args.overwrite)
    except FileExistsError as err:
        LOG.error("%s", err)
        return 1
    cameras = orbit_rings(args.elevations, args.azimuths, width=args.resolution, height=args.resolution)
    record = cameras_record(cameras, frame_names(len(cameras)), args.elevations, args.azimuths)
    settings = RenderSettings(edge_samples=args.edge_samples, rays_per_chunk=args.rays_per_chunk)
    start = time.perf_counter()
    with tqdm(total=len(names) * len(cameras), unit="view", desc="rendering") as progress:
        for index, name in enumerate(names):
            spec = random_object(object_seed(args.seed, index), name=name)
            write_object(args.out / name, spec, cameras, settings, record, progress, device, args.workers)
    elapsed = time.perf_counter() - start
    LOG.info("wrote %d objects x %d views at %dx%d on %s to %s in %.1f s (%.2f s per object)", len(names),
             len(cameras), args.resolution, args.resolution, device, args.out, elapsed, elapsed / len(names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
