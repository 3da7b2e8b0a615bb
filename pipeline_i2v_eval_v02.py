"""Hi3D stage 2: refine the stage-1 orbit in --output_dir to 1024x1024.

Reads OUT/temp_image/white.png and OUT/first_step/first.mp4 written by stage 1 (checked against
OUT/first_step/run.json; --image_path, when given, must be the image stage 1 was run on).

    python pipeline_i2v_eval_v02.py --image_path demo/object_a_elev10.png --output_dir outputs/a --elevation 10
"""
from __future__ import annotations

import argparse

from sgm.cli import add_model_args, add_sampling_args, run_main, run_settings, stage_pipeline


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, 2)
    add_sampling_args(parser, image_required=False)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    result = stage_pipeline(args, 2).run_refine(args.output_dir, image=args.image_path, **run_settings(args))
    print(f"stage 2 done: {result.video} ({len(result.views)} views in {result.views[0].parent}, "
          f"masks in {result.extra['masks']})")


if __name__ == "__main__":
    run_main(main)
