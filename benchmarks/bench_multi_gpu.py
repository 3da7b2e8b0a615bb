"""Multi-GPU training throughput: 1 GPU against 2 GPUs with DDP and with DeepSpeed ZeRO-2.

Runs ``train_ddp_spawn.py`` on ``configs/train-v0{1,2}.yaml`` (random weights: no starting
checkpoint, random encoders; batch 1 clip of 16 frames per GPU; image logging and checkpoints
off) once per (stage, precision, strategy, GPU count), each in its own process tree, and prints
one table: step time (median after the warm-up; the mean beside it, which includes the slow first
step of each epoch), clips per second, scaling efficiency (2-GPU
throughput over twice the 1-GPU throughput of the same strategy) and peak GPU memory per GPU
(the largest over the ranks, after the warm-up).

    python benchmarks/bench_multi_gpu.py --stage 1 --data 1=data/orbits512 --out outputs/bench_multi_gpu
    python benchmarks/bench_multi_gpu.py --stage 1 2 --precision bf16-mixed 16-mixed \\
        --data 1=data/orbits512 2=data/orbits1024 --steps 12 --warmup 4 --json outputs/multi_gpu.json

One-GPU runs of two configurations go side by side on GPUs 0 and 1 (``CUDA_VISIBLE_DEVICES``),
which leaves their step times unaffected (each has its own GPU) but shares the CPU cores.
A run that fails prints the end of its log and the table marks it ``failed``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {1: ROOT / "configs" / "train-v01.yaml", 2: ROOT / "configs" / "train-v02.yaml"}
STRATEGIES = ("ddp", "deepspeed_stage_2")


@dataclass(frozen=True)
class Run:
    stage: int
    precision: str
    strategy: str
    devices: int

    @property
    def tag(self) -> str:
        return f"s{self.stage}-{self.precision}-{self.strategy}-{self.devices}gpu"


def command(run: Run, data: Path, out: Path, steps: int, warmup: int, extra: list[str]) -> list[str]:
    return [sys.executable, str(ROOT / "train_ddp_spawn.py"), "--base", str(CONFIGS[run.stage]),
            "--train", "True", "--no-test", "True", "--accelerator", "gpu", "--devices", str(run.devices),
            "--max_steps", str(warmup + steps), "--logdir", str(out / "logs"), "--name", run.tag,
            f"lightning.trainer.strategy={run.strategy}", f"lightning.trainer.precision={run.precision}",
            "lightning.trainer.max_epochs=-1",
            f"data.params.base_folder={data}", "data.params.batch_size=1",
            "model.params.ckpt_path=null", "model.random_pretrained_encoders=true",
            "lightning.callbacks.image_logger.params.disabled=true",
            "lightning.modelcheckpoint.params.save_last=false",
            "lightning.callbacks.step_stats.target=step_stats.StepStats",
            f"lightning.callbacks.step_stats.params.out_dir={out / 'stats'}",
            f"lightning.callbacks.step_stats.params.tag={run.tag}",
            f"lightning.callbacks.step_stats.params.warmup_steps={warmup}", *extra]


def start(run: Run, data: Path, out: Path, steps: int, warmup: int, extra: list[str],
          gpus: str | None) -> tuple[subprocess.Popen, Path]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]))
    env.pop("HI3D_RUN_TIMESTAMP", None)
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    log = out / f"{run.tag}.log"
    handle = log.open("w")
    proc = subprocess.Popen(command(run, data, out, steps, warmup, extra), cwd=ROOT, env=env,
                            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def wait(procs: list[tuple[Run, subprocess.Popen, Path]], timeout: float) -> dict[Run, float]:
    """Wait for the processes; kill the whole group of one that outlives ``timeout``. Returns wall times."""
    began, walls = time.perf_counter(), {}
    for run, proc, log in procs:
        try:
            proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - began)))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            print(f"{run.tag}: killed after {timeout:.0f} s", flush=True)
        walls[run] = time.perf_counter() - began
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:]
            print(f"--- {run.tag} failed (exit {proc.returncode}); end of {log}:\n{tail}\n---", flush=True)
    return walls


def summarise(run: Run, out: Path, warmup: int, wall: float) -> dict:
    files = sorted((out / "stats").glob(f"{run.tag}-rank*.json"))
    row = {"stage": run.stage, "precision": run.precision, "strategy": run.strategy, "gpus": run.devices,
           "wall_s": round(wall, 1)}
    if len(files) != run.devices:
        return {**row, "status": "failed"}
    ranks = [json.loads(f.read_text()) for f in files]
    # a step ends on every rank together (gradients are averaged): take the slowest rank's step times
    steps = [max(times) for times in zip(*(r["step_seconds"][warmup:] for r in ranks))]
    step = statistics.median(steps)
    clips = sum(r["clips_per_step"] for r in ranks)
    return {**row, "status": "ok", "steps_timed": len(steps), "step_s": step, "step_min_s": min(steps),
            "step_mean_s": statistics.fmean(steps), "step_max_s": max(steps),
            "clips_per_s": clips / step,
            "peak_allocated_gib": max(r["peak_allocated_gib"] for r in ranks),
            "peak_reserved_gib": max(r["peak_reserved_gib"] for r in ranks),
            "device": ranks[0]["device"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, nargs="+", default=[1], choices=[1, 2])
    parser.add_argument("--precision", nargs="+", default=["bf16-mixed", "16-mixed"])
    parser.add_argument("--strategy", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2], choices=[1, 2], help="GPU counts to run")
    parser.add_argument("--data", nargs="+", required=True, metavar="STAGE=FOLDER",
                        help="orbit-render folder per stage (scripts/render_synthetic_orbits.py)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per group of runs")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_multi_gpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--set", nargs="*", default=[], help="further config overrides key=value")
    args = parser.parse_args(argv)
    data = {int(k): Path(v) for k, v in (item.split("=", 1) for item in args.data)}
    missing = [s for s in args.stage if s not in data]
    if missing:
        parser.error(f"--data has no folder for stage(s) {missing}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for stage in args.stage:
        for precision in args.precision:
            singles = [Run(stage, precision, s, 1) for s in args.strategy] if 1 in args.gpus else []
            groups = [singles[i:i + 2] for i in range(0, len(singles), 2)]  # two 1-GPU runs side by side
            groups += [[Run(stage, precision, s, 2)] for s in args.strategy] if 2 in args.gpus else []
            for group in groups:
                print(f"running {', '.join(r.tag for r in group)} ...", flush=True)
                procs = []
                for index, run in enumerate(group):
                    gpus = str(index) if run.devices == 1 else None
                    procs.append((run, *start(run, data[stage], args.out, args.steps, args.warmup, args.set, gpus)))
                walls = wait(procs, args.timeout)
                for run in group:
                    rows.append(summarise(run, args.out, args.warmup, walls[run]))
                    print(json.dumps(rows[-1]), flush=True)
    single = {(r["stage"], r["precision"], r["strategy"]): r for r in rows if r["gpus"] == 1 and r["status"] == "ok"}
    for row in rows:
        base = single.get((row["stage"], row["precision"], row["strategy"]))
        if row["gpus"] == 2 and row["status"] == "ok" and base is not None:
            row["scaling_efficiency"] = row["clips_per_s"] / (2 * base["clips_per_s"])
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"\n{'stage':>5} {'precision':>10} {'strategy':>18} {'gpus':>4} {'step s':>7} {'clips/s':>8} "
          f"{'scaling':>8} {'mean s':>7} {'peak alloc GiB':>14} {'peak resv GiB':>13} {'wall s':>7}")
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['stage']:>5} {r['precision']:>10} {r['strategy']:>18} {r['gpus']:>4}   failed")
            continue
        eff = f"{100 * r['scaling_efficiency']:.1f}%" if "scaling_efficiency" in r else "-"
        print(f"{r['stage']:>5} {r['precision']:>10} {r['strategy']:>18} {r['gpus']:>4} {r['step_s']:7.3f} "
              f"{r['clips_per_s']:8.3f} {eff:>8} {r['step_mean_s']:7.3f} {r['peak_allocated_gib']:14.2f} {r['peak_reserved_gib']:13.2f} "
              f"{r['wall_s']:7.1f}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
