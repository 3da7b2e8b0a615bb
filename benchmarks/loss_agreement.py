"""Does data-parallel training learn like one process with the same global batch?

Trains a tiny config twice from the same seed and data: one process with 2 clips per step, and
two processes (DDP) with 1 clip each, so both take optimizer steps over 2 clips at the same
learning rate (``devices x batch x base_learning_rate``). Per-step losses come from
``step_stats.StepStats``; a two-process step's loss is the mean of its ranks' losses. Prints the
mean loss of each window of steps for both runs with its standard error, their difference and
that difference in standard errors (|z| < 2 or so: agreement within noise).

    python benchmarks/loss_agreement.py --data data/orbits32 --steps 300 --accelerator cpu
    python benchmarks/loss_agreement.py --data data/orbits64 --steps 400 --accelerator gpu --set data.params.width=64
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(tag: str, devices: int, batch: int, args: argparse.Namespace) -> list[float]:
    """Per-step losses (mean over ranks) of one run."""
    stats = args.out / "stats"
    command = [sys.executable, str(ROOT / "train_ddp_spawn.py"), "--base", str(args.config), "--train", "True",
               "--no-test", "True", "--accelerator", args.accelerator, "--devices", str(devices),
               "--max_steps", str(args.steps), "--logdir", str(args.out / "logs"), "--name", tag,
               "--seed", str(args.seed), "lightning.trainer.strategy=ddp", "lightning.trainer.max_epochs=-1",
               f"data.params.base_folder={args.data}", f"data.params.batch_size={batch}",
               "lightning.callbacks.image_logger.params.disabled=true",
               "lightning.modelcheckpoint.params.save_last=false",
               "lightning.callbacks.step_stats.target=step_stats.StepStats",
               f"lightning.callbacks.step_stats.params.out_dir={stats}",
               f"lightning.callbacks.step_stats.params.tag={tag}", *args.set]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("HI3D_RUN_TIMESTAMP", None)
    log = args.out / f"{tag}.log"
    with log.open("w") as handle:
        code = subprocess.call(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"{tag} failed (exit {code}); see {log}")
    ranks = [json.loads((stats / f"{tag}-rank{r}.json").read_text())["losses"] for r in range(devices)]
    return [statistics.fmean(step) for step in zip(*ranks)]


def window_stats(losses: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean."""
    return statistics.fmean(losses), statistics.stdev(losses) / math.sqrt(len(losses))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny-train-v01.yaml")
    parser.add_argument("--data", type=Path, required=True, help="orbit renders (scripts/render_synthetic_orbits.py)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--windows", type=int, default=3, help="report the mean loss over this many windows")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "loss_agreement")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--set", nargs="*", default=[], help="further config overrides key=value")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    one = train("one-process-batch2", 1, 2, args)
    two = train("two-processes-batch1", 2, 1, args)
    size = len(one) // args.windows
    rows = []
    print(f"{'steps':>11} {'1 x batch 2':>17} {'2 x batch 1':>17} {'difference':>11} {'z':>6}")
    for w in range(args.windows):
        part = slice(w * size, (w + 1) * size)
        (m1, e1), (m2, e2) = window_stats(one[part]), window_stats(two[part])
        z = (m2 - m1) / math.hypot(e1, e2)
        rows.append({"first_step": w * size + 1, "last_step": (w + 1) * size, "one_process": m1, "one_se": e1,
                     "two_processes": m2, "two_se": e2, "difference": m2 - m1, "z": z})
        print(f"{w * size + 1:>5}-{(w + 1) * size:<5} {m1:9.4f} ± {e1:.4f} {m2:9.4f} ± {e2:.4f} {m2 - m1:+11.4f} {z:+6.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"windows": rows, "one_process": one, "two_processes": two}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
