"""Convert a training checkpoint into one ``.safetensors`` file of weights for inference.

Reads any layout of :mod:`sgm.checkpoint`: a DeepSpeed checkpoint folder (``last.ckpt/`` of a
``deepspeed_stage_2`` run: the trained parameters in float32 from ZeRO's master partitions, the
frozen ones as trained), a Lightning ``.ckpt`` file, a DeepSpeed ``.pt`` or a plain state dict.
With ``--config`` the weights are first loaded strictly into that config's model, so a file that
would not load is never written. The output is written to a temporary file and renamed.

    python scripts/convert_checkpoint.py --input logs/<run>/checkpoints/last.ckpt --output ckpts/my_stage1.safetensors \\
        --config logs/<run>/configs/<time>-project.yaml
    python pipeline_i2v_eval_v01.py --denoise_config configs/inference-v01.yaml \\
        --denoise_checkpoint ckpts/my_stage1.safetensors --image_path demo/object_a_elev10.png --output_dir outputs/a
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sgm.checkpoint import load_into, read_state_dict  # noqa: E402
from sgm.cli import run_main  # noqa: E402
from sgm.common.errors import UsageError  # noqa: E402
from sgm.config import build_model, load_config  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True, help="checkpoint file or DeepSpeed checkpoint folder")
    parser.add_argument("--output", type=Path, required=True, help="the .safetensors file to write")
    parser.add_argument("--config", type=Path, default=None,
                        help="model config to check the weights against (e.g. the run's configs/*-project.yaml)")
    parser.add_argument("--dtype", choices=("keep", "float32", "float16", "bfloat16"), default="keep",
                        help="store floating-point weights in this dtype (default: as read)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return parser.parse_args(argv)


def check_against(config_path: Path, weights: dict[str, torch.Tensor]) -> None:
    """Load ``weights`` strictly into the model of ``config_path``, built on the CPU with random
    encoders (no pretrained file is read); raises ``CheckpointError`` naming missing, unexpected
    or mis-shaped keys."""
    config = load_config(config_path)
    model = build_model(config, random_pretrained_encoders=True, ckpt_path=None)
    load_into(model, weights, source=str(config_path))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.output.suffix != ".safetensors":
        raise UsageError(f"--output {args.output}: the file name must end in .safetensors")
    if args.output.exists() and not args.overwrite:
        raise UsageError(f"--output {args.output} exists; pass --overwrite to replace it")
    weights = read_state_dict(args.input)
    if args.dtype != "keep":
        dtype = getattr(torch, args.dtype)
        weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
    if args.config is not None:
        check_against(args.config, weights)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    partial = args.output.with_name(f".{args.output.name}.partial-{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(partial))
        os.replace(partial, args.output)
    finally:
        partial.unlink(missing_ok=True)
    count = sum(v.numel() for v in weights.values())
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in weights.values()})
    print(f"wrote {args.output}: {len(weights)} tensors, {count / 1e6:.1f}M values ({', '.join(dtypes)})"
          + (f", loads strictly into {args.config}" if args.config else ""))


if __name__ == "__main__":
    run_main(main)
