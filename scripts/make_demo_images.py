"""Render the demo input images in demo/ (procedural objects, RGBA, transparent background).

    python scripts/make_demo_images.py [--out demo] [--resolution 256] [--overwrite]

Each image is view 0 of a synthetic object at the elevation in its name, e.g.
``demo/object_a_elev10.png`` is seen from 10 degrees above the equator; pass that number as
``--elevation`` to the inference scripts.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from sgm.data.synthetic_orbits import random_object, render_views
from sgm.recon.cameras import orbit_cameras

# (file stem, renderer seed, elevation in degrees)
DEMO_OBJECTS = (("object_a_elev10", 7, 10.0), ("object_b_elev20", 8, 20.0), ("object_c_elev0", 9, 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo", help="output folder")
    parser.add_argument("--resolution", type=int, default=256, help="image size in pixels")
    parser.add_argument("--overwrite", action="store_true", help="replace existing demo images")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stem, seed, elevation in DEMO_OBJECTS:
        path = out / f"{stem}.png"
        if path.exists() and not args.overwrite:
            raise SystemExit(f"error: {path} exists (pass --overwrite to replace it)")
        cameras = orbit_cameras(elevation, n=1, width=args.resolution, height=args.resolution)
        rgba = next(render_views(random_object(seed), cameras))
        pixels = (rgba.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
        Image.fromarray(np.ascontiguousarray(pixels), "RGBA").save(path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
