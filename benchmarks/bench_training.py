"""Time one full-size training step (forward + backward + optimizer) on a GPU, random weights.

    python benchmarks/bench_training.py --stage 1 --precision fp16
    python benchmarks/bench_training.py --stage 1 --precision bf16 --fused_adam --json out.json

Batch 1 clip of 16 frames at the stage resolution, gradient checkpointing on (as configured),
AdamW over the whole UNet (``trained_param_keys: [all]``), mixed precision through autocast
(fp16 with a gradient scaler, or bf16), master weights in float32. The step includes the VAE
encoding and the conditioning, as a Lightning training step does. Prints the median step time
and the peak GPU memory.
"""
from __future__ import annotations

import argparse
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from report import report, require_cuda
from sgm.config import build_model, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {1: ROOT / "configs" / "inference-v01.yaml", 2: ROOT / "configs" / "inference-v02.yaml"}


def make_batch(model, device: torch.device) -> dict:
    size, frames = model.resolution, model.num_samples
    generator = torch.Generator(device).manual_seed(0)
    video = torch.rand(1, 3, frames, size, size, device=device, generator=generator) * 2 - 1
    return {"video": video, "elevation": torch.tensor([10.0], device=device),
            "image_only_indicator": torch.zeros(1, frames, device=device), "num_video_frames": frames}


def measure(stage: int, precision: str, fused: bool, steps: int) -> dict:
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    config = load_config(CONFIGS[stage], ["model.params.trained_param_keys=[all]"])
    with torch.device(device):
        model = build_model(config, random_pretrained_encoders=True)
    model.train()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    optimizer = torch.optim.AdamW(model.trained_parameters(), lr=1e-5, fused=fused)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    batch = make_batch(model, device)

    def step():
        with torch.autocast("cuda", dtype=dtype):
            loss = model.shared_step(batch)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(2):  # warm-up: optimizer states, kernels, allocator
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    assert torch.isfinite(loss), "non-finite loss"
    return {"stage": stage, "precision": precision, "fused_adam": fused, "step_s": statistics.median(times),
            "step_s_min": min(times), "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "trained_params": sum(p.numel() for p in model.trained_parameters()),
            "device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": date.today().isoformat()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument("--precision", choices=("fp16", "bf16"), default="fp16")
    parser.add_argument("--fused_adam", action="store_true", help="torch's fused AdamW kernel")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    parser.add_argument("--json", type=Path, default=None, help="append the result as one JSON line")
    args = parser.parse_args()
    require_cuda()
    report(measure(args.stage, args.precision, args.fused_adam, args.steps), args.json)


if __name__ == "__main__":
    main()
