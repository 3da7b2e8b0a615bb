"""The README's figure of demo results: per run folder of scripts/run_hi3d.py, one row of the input
and every other stage-1 view (upscaled, nearest) and one row of the same stage-2 views.

    python scripts/run_hi3d.py --demo --image_path demo/object_a_elev10.png --output_dir outputs/fig_a --elevation 10
    python scripts/run_hi3d.py --demo --image_path demo/object_b_elev20.png --output_dir outputs/fig_b --elevation 20
    python scripts/demo_figure.py outputs/fig_a outputs/fig_b --output docs/demo_result.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from sgm.cli import run_main
from sgm.common.errors import OutputExistsError, UsageError
from sgm.pipelines.outputs import OutputLayout

GAP = 8  # white pixels between the two rows of a run and between runs


def read_views(folder: Path, tile: int, step: int) -> list[np.ndarray]:
    """Every ``step``-th view PNG of ``folder`` (name order), resized to ``tile`` px (nearest)."""
    files = sorted(folder.glob("*.png"))[::step]
    if not files:
        raise UsageError(f"{folder}: no views (run scripts/run_hi3d.py into this folder first)")
    return [np.asarray(Image.open(f).convert("RGB").resize((tile, tile), Image.NEAREST)) for f in files]


def run_rows(run: Path, tile: int, step: int) -> np.ndarray:
    """uint8 (2 tile + GAP, (1 + 16 / step) tile, 3): input + stage-1 views above, stage-2 views below."""
    layout = OutputLayout(run)
    blank = np.full((tile, tile, 3), 255, np.uint8)
    source = np.asarray(Image.open(layout.white).convert("RGB").resize((tile, tile), Image.BICUBIC))
    top = np.concatenate([source, *read_views(layout.stage1_views, tile, step)], axis=1)
    bottom = np.concatenate([blank, *read_views(layout.stage2_views, tile, step)], axis=1)
    return np.concatenate([top, np.full((GAP, top.shape[1], 3), 255, np.uint8), bottom], axis=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="output folders of scripts/run_hi3d.py")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--tile", type=int, default=96, help="pixels per view in the figure")
    parser.add_argument("--step", type=int, default=2, help="show every STEP-th view")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.overwrite:
        raise OutputExistsError(f"{args.output} exists (pass --overwrite to replace it)")
    blocks = [run_rows(run, args.tile, args.step) for run in args.runs]
    spacer = np.full((2 * GAP, blocks[0].shape[1], 3), 255, np.uint8)
    figure = np.concatenate([part for block in blocks for part in (block, spacer)][:-1], axis=0)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(figure).save(args.output, optimize=True)
    print(f"wrote {args.output} ({figure.shape[1]}x{figure.shape[0]})")


if __name__ == "__main__":
    run_main(main)
