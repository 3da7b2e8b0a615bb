"""Train a Hi3D stage from YAML configs (official script name; Lightning 2 underneath).

Examples:
    python train_ddp_spawn.py --base configs/train-v01.yaml --train True
    python train_ddp_spawn.py --base configs/tiny-train-v01.yaml --train True --accelerator cpu --devices 2 \\
        lightning.trainer.strategy=ddp data.params.base_folder=data/synthetic lightning.trainer.max_steps=5
    python train_ddp_spawn.py --resume logs/2024-01-01T00-00-00_tiny-train-v01 --train True --max_steps 10

Trailing ``key=value`` arguments override config entries (OmegaConf dot-list). See
:mod:`sgm.training` for the config sections, the translated official keys and the run folder.

Exit codes: 0 done; 2 a user error (a config key or value, a missing file: one line on stderr);
128 + N stopped by signal N (SIGTERM 143, SIGINT 130) after saving ``last.ckpt``; 1 anything else.
"""
from __future__ import annotations

import argparse
import sys

from sgm.cli import run_main
from sgm.training import TrainOptions, exit_code_after_fit, run


def str2bool(value: str | bool) -> bool:
    """Official-style booleans: ``True/False``, ``yes/no``, ``1/0`` (any case)."""
    if isinstance(value, bool):
        return value
    text = value.strip().lower()
    if text in ("true", "yes", "y", "t", "1"):
        return True
    if text in ("false", "no", "n", "f", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {value!r}")


def parse_args(argv: list[str] | None = None) -> TrainOptions:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-b", "--base", nargs="*", default=[], metavar="CONFIG.yaml",
                        help="config files, merged left to right")
    parser.add_argument("-t", "--train", type=str2bool, nargs="?", const=True, default=False,
                        help="train (default False: only build model, data and trainer)")
    parser.add_argument("--no-test", type=str2bool, nargs="?", const=True, default=False,
                        help="skip the test phase (the Hi3D engines have no test step either way)")
    parser.add_argument("-l", "--logdir", default="logs", help="parent folder of the run folders")
    parser.add_argument("-n", "--name", default="", help="run name (default: the first config's file name)")
    parser.add_argument("-s", "--seed", type=int, default=23, help="seed (per-rank seed = 100 x seed + rank)")
    parser.add_argument("--scale_lr", type=str2bool, nargs="?", const=True, default=True,
                        help="learning rate = devices x accumulation x batch x base_learning_rate (default True)")
    parser.add_argument("-r", "--resume", default="", help="run folder or checkpoint file to continue from")
    parser.add_argument("--devices", default=None, help="device count or ids, e.g. 2 or 0,1 (overrides the config)")
    parser.add_argument("--accelerator", default=None, help="cpu, gpu, cuda, auto (overrides the config)")
    parser.add_argument("--max_steps", type=int, default=None, help="stop after this many optimizer steps")
    args, unknown = parser.parse_known_args(argv)
    flags = [arg for arg in unknown if arg.startswith("-")]
    if flags:
        parser.error(f"unknown flags {flags}; config overrides are written key=value")
    if args.seed < 0:
        parser.error("--seed must be non-negative")
    # ``--base a.yaml key=value`` puts the override into --base's list: move it back.
    base = [item for item in args.base if "=" not in item]
    overrides = [item for item in args.base if "=" in item] + unknown
    return TrainOptions(base=base, overrides=overrides, train=args.train, no_test=args.no_test,
                        logdir=args.logdir, name=args.name, seed=args.seed, scale_lr=args.scale_lr,
                        resume=args.resume, devices=args.devices, accelerator=args.accelerator,
                        max_steps=args.max_steps)


def main() -> None:
    """Train; a run stopped by SIGTERM / SIGINT (after saving last.ckpt) exits with 128 + the signal number."""
    code = exit_code_after_fit(run(parse_args()))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    run_main(main)
