"""Check every distinct convolution of the Hi3D models against float64 on this machine's GPU.

Lists the convolutions each config's model runs (inference at the config's resolution and frame
count, and with --training a training step on the config's batch size; see
sgm/pipelines/conv_shapes.py), runs each in the chosen precision and compares with a float64
reference (sgm/common/conv_check.py: method and thresholds). Prints one line per shape and exits 0
when every shape passes, 1 when one fails (issue 20: strict fp32 on an H200 with cuDNN 9.19),
2 on bad input.

    python scripts/check_gpu_convolutions.py --config configs/inference-v01.yaml \\
        --config configs/inference-v02.yaml --dtype fp32
    python scripts/check_gpu_convolutions.py --config configs/train-v01.yaml --training --dtype fp32 --backward

Precisions: fp32 (strict: TF32 off), fp32-tf32, fp16, bf16. Results are not cached here: every
shape is measured again.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sgm.cli import run_main  # noqa: E402
from sgm.common.conv_check import THRESHOLDS, check_shapes, format_table, versions  # noqa: E402
from sgm.common.devices import resolve_device  # noqa: E402
from sgm.common.errors import UsageError  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, action="append", required=True,
                        help="a model config (repeatable), e.g. configs/inference-v01.yaml")
    parser.add_argument("--dtype", default="fp32", help=f"one of {', '.join(THRESHOLDS)} (default fp32)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N (cpu checks PyTorch's CPU kernels)")
    parser.add_argument("--training", action="store_true",
                        help="list a training step's convolutions (data.params.batch_size clips) instead of inference")
    parser.add_argument("--backward", action="store_true", help="also compare the input and weight gradients")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.dtype not in THRESHOLDS:
        raise UsageError(f"unknown --dtype {args.dtype!r}: choose one of {', '.join(THRESHOLDS)}")
    device = resolve_device(args.device)
    for config in args.config:
        if not config.is_file():
            raise FileNotFoundError(f"config not found: {config}")
    from sgm.config import load_config
    from sgm.pipelines.conv_shapes import inference_conv_shapes, meta_model, training_conv_shapes

    shapes = []
    for path in args.config:
        config = load_config(path)
        model = meta_model(config)
        if args.training:
            clips = int(config.get("data", {}).get("params", {}).get("batch_size", 1))
            listed = training_conv_shapes(model, clips)
        else:
            listed = inference_conv_shapes(model)
        print(f"{path}: {len(listed)} distinct convolutions")
        shapes += listed
    shapes = list(dict.fromkeys(shapes))
    print(f"checking {len(shapes)} shapes in {args.dtype} on {versions(device)}", flush=True)
    results = check_shapes(shapes, device, args.dtype, backward=args.backward)
    print(format_table(results))
    failed = [r for r in results if not r.passed]
    print(f"{len(failed)} of {len(results)} shapes FAIL" if failed else f"all {len(results)} shapes pass")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    run_main(main)
