"""Hi3D stage 1: one image -> a 16-view orbit video at 512x512.

    python pipeline_i2v_eval_v01.py --image_path demo/object_a_elev10.png --output_dir outputs/a --elevation 10
"""
from __future__ import annotations

import argparse

from sgm.cli import DEMO_NOTICE, add_sampling_args, pipeline_options, run_main
from sgm.pipelines.hi3d import Hi3DPipeline


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--denoise_config", default="configs/inference-v01.yaml", help="stage-1 model config")
    parser.add_argument("--denoise_checkpoint", default=None,
                        help="stage-1 weights: a released .pt, a .safetensors, a hub file (hf://OWNER/NAME/FILE, "
                             "downloaded into the hub cache; HF_HUB_OFFLINE=1: the cache only), or a training run's "
                             "checkpoints/last.ckpt (a file, or a DeepSpeed folder) (default: the config's 'checkpoint', "
                             "ckpts/first_stage.pt)")
    add_sampling_args(parser)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    pipe = Hi3DPipeline.from_configs(args.denoise_config, None, stage1_checkpoint=args.denoise_checkpoint,
                                     **pipeline_options(args))
    if pipe.is_untrained("orbit"):
        print(DEMO_NOTICE)
    result = pipe.run_orbit(args.image_path, args.output_dir, elevation_deg=args.elevation, seed=args.seed,
                            num_steps=args.num_steps, min_cfg=args.min_cfg, max_cfg=args.max_cfg,
                            overwrite=args.overwrite)
    print(f"stage 1 done: {result.video} ({len(result.views)} views in {result.views[0].parent}, "
          f"contact sheet {result.extra['contact_sheet']})")


if __name__ == "__main__":
    run_main(main)
