"""Time full-size Hi3D inference on a GPU with random weights and print a table.

    python benchmarks/bench_inference.py --stage 1 --mode compile
    python benchmarks/bench_inference.py --stage 2 --mode low_memory --json out.json

Phases (seconds, after one warm-up run): conditioning, sampling (all steps), decoding;
seconds per guided UNet call (median of repeats), its FLOPs (torch's FLOP counter) and the
achieved TFLOP/s; peak GPU memory of the whole run; the first (warm-up) run's time, which
includes compilation. Modes: ``eager`` (model resident on the GPU in the chosen dtype),
``compile`` (eager + torch.compile of the UNet: the pipelines' default on CUDA; its frames are
compared with the eager path's for the same seed), ``low_memory`` (parts moved to the GPU only
for their phase, split guidance halves, one-frame decoding). Zero-initialised layers are
redrawn so that the random UNet's output is not identically 0.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from report import redraw_zero_parameters, report, require_cuda
from sgm.config import build_model, load_config
from sgm.pipelines.compilation import COMPILE_OPTIONS
from sgm.pipelines.loading import DTYPES, ExecutionPlan, autocast_for
from sgm.pipelines.replicas import resolve_devices
from sgm.pipelines.sampling import generate_orbit, refine_orbit

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {1: ROOT / "configs" / "inference-v01.yaml", 2: ROOT / "configs" / "inference-v02.yaml"}


def build(stage: int, device: torch.device, dtype: torch.dtype, low_memory: bool = False):
    """Full-size model with random weights (built on the GPU for speed), in ``dtype``; on the CPU for
    ``low_memory`` (its parts visit the GPU phase by phase)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(load_config(CONFIGS[stage]), random_pretrained_encoders=True)
    redraw_zero_parameters(model.model)
    model = model.to(dtype=dtype).eval()
    if low_memory:
        model = model.to("cpu")
        torch.cuda.empty_cache()
    return model


def synchronized(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start


def run_stage(model, stage: int, plan: ExecutionPlan, steps: int, seed: int = 0) -> tuple[dict[str, float], torch.Tensor]:
    """One full stage run with per-phase timings taken through the step callback; also returns the frames."""
    size = model.resolution
    generator = torch.Generator(plan.device).manual_seed(seed)
    marks = {}

    def on_step(i, n):
        if i == 0:
            torch.cuda.synchronize()
            marks["first_step_end"] = time.perf_counter()
        if i == n - 1:
            torch.cuda.synchronize()
            marks["sampling_end"] = time.perf_counter()

    torch.cuda.synchronize()
    start = time.perf_counter()
    if stage == 1:
        image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        frames = generate_orbit(model, image, 10.0, generator, steps, on_step, plan)
    else:
        video = torch.rand(16, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        frames = refine_orbit(model, video, 10.0, generator, steps, callback=on_step, plan=plan)
    torch.cuda.synchronize()
    end = time.perf_counter()
    assert torch.isfinite(frames).all(), "non-finite output"
    timings = {"total_s": end - start, "tail_s": end - marks["sampling_end"],
               "steps_after_first_s": marks["sampling_end"] - marks["first_step_end"]}
    return timings, frames


def phases(timings: dict[str, float], steps: int) -> dict[str, float]:
    """Conditioning, sampling and decoding seconds of one :func:`run_stage` run; sampling is steps
    2..n scaled to all n (the first step's extra cost counts as conditioning)."""
    sampling = timings["steps_after_first_s"] * steps / max(steps - 1, 1)
    return {"conditioning_s": timings["total_s"] - sampling - timings["tail_s"], "sampling_s": sampling,
            "decoding_s": timings["tail_s"]}


def unet_call(model, stage: int, plan: ExecutionPlan, dtype: torch.dtype):
    """A function doing one guided UNet call on realistic shapes (2 x 16 frames)."""
    device, size, frames = plan.device, model.resolution, model.num_samples
    latent = size // 8
    unet = model.model.diffusion_model
    channels = unet.input_blocks[0][0].in_channels - 4  # concat channels beside the 4 noisy-latent ones
    adm = unet.label_emb[0][0].in_features
    context = next(m.to_v.in_features for name, m in unet.named_modules() if name.endswith("attn2"))
    gen = torch.Generator(device).manual_seed(1)
    x = torch.randn(2 * frames, 4, latent, latent, device=device, generator=gen)
    sigma = torch.full((2 * frames,), 10.0, device=device)
    cond = {"concat": torch.randn(2 * frames, channels, latent, latent, device=device, generator=gen),
            "crossattn": torch.randn(2, 1, context, device=device, generator=gen),
            "vector": torch.randn(2, adm, device=device, generator=gen)}
    denoise = plan.denoiser(model, frames)

    def call():
        with torch.no_grad(), autocast_for(device, dtype):
            return denoise(x, sigma, cond)
    return call


def measure(stage: int, mode: str, dtype_name: str, steps: int, repeats: int, devices: int = 1) -> dict:
    device = torch.device("cuda")
    dtype = DTYPES[dtype_name]
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    build_start = time.perf_counter()
    model = build(stage, device, dtype, low_memory=mode == "low_memory")
    build_s = time.perf_counter() - build_start
    plan = ExecutionPlan(device, low_memory=mode == "low_memory", helpers=resolve_devices(device, devices)[1:])
    for network in [model.model, *plan.replicate(model.model)]:  # copies first: a copy is never compiled
        if mode == "compile":
            network.diffusion_model.compile(**COMPILE_OPTIONS)
    warm, _ = run_stage(model, stage, plan, steps=2, seed=1)  # warm-up: kernels, compilation, allocator
    torch.cuda.reset_peak_memory_stats()
    timings, frames = run_stage(model, stage, plan, steps=steps)
    peak = torch.cuda.max_memory_allocated() / 2**30
    result = {"stage": stage, "mode": mode, "devices": devices, "dtype": dtype_name, "steps": steps, "build_s": build_s,
              "warmup_total_s": warm["total_s"], "run_total_s": timings["total_s"], "peak_gib": peak}
    if mode == "compile":  # the same run on the eager path: how far the compiled frames are from it
        with torch.compiler.set_stance("force_eager"):
            _, eager_frames = run_stage(model, stage, plan, steps=steps)
        difference = (frames.float() - eager_frames.float()).abs()
        result.update({"vs_eager_max_abs": difference.max().item(), "vs_eager_mean_abs": difference.mean().item()})
    # Per UNet call, with the UNet resident on the GPU (its weights move in for this measurement).
    with plan.phase(model.model):
        call = unet_call(model, stage, plan, dtype)
        call()
        times = [synchronized(call)[1] for _ in range(repeats)]
        with FlopCounterMode(display=False) as counter:
            call()
    per_call = statistics.median(times)
    flops = counter.get_total_flops()
    result.update({"unet_call_s": per_call, "unet_call_tflop": flops / 1e12, "tflops_per_s": flops / per_call / 1e12})
    result.update(phases(timings, steps))
    result.update({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": date.today().isoformat(),
                   "python": platform.python_version()})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument("--mode", choices=("eager", "compile", "low_memory"), default="compile")
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5, help="timed UNet calls (median)")
    parser.add_argument("--devices", type=int, default=1, choices=(1, 2),
                        help="2: the conditional half of each guided call on the next GPU (Hi3DPipeline(devices=2))")
    parser.add_argument("--json", type=Path, default=None, help="append the result as one JSON line")
    args = parser.parse_args()
    require_cuda()
    report(measure(args.stage, args.mode, args.dtype, args.steps, args.repeats, args.devices), args.json)


if __name__ == "__main__":
    main()
