"""Hi3D stage 1: one image -> a 16-view orbit video at 512x512.

    python pipeline_i2v_eval_v01.py --image_path demo/object_a_elev10.png --output_dir outputs/a --elevation 10
"""
from __future__ import annotations

import argparse

from sgm.cli import add_model_args, add_sampling_args, run_main, run_settings, stage_pipeline


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, 1)
    add_sampling_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    result = stage_pipeline(args, 1).run_orbit(args.image_path, args.output_dir, **run_settings(args))
    print(f"stage 1 done: {result.video} ({len(result.views)} views in {result.views[0].parent}, "
          f"contact sheet {result.extra['contact_sheet']})")


if __name__ == "__main__":
    run_main(main)
