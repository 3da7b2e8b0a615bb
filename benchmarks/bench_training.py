"""Time one training step (forward + backward + optimizer) on a GPU, random weights (full-size models by default).

    python benchmarks/bench_training.py --stage 1 --precision fp16
    python benchmarks/bench_training.py --stage 1 --precision bf16 --fused_adam --compile --cuda_graph --json out.json
    python benchmarks/bench_training.py --stage 1 --precision bf16 --fused_adam --profile
    python benchmarks/bench_training.py --stage 2 --config configs/demo-train-v02.yaml --batch 8 --precision bf16

The model of ``configs/train-v0{1,2}.yaml`` or of ``--config`` (without its starting checkpoint):
``--batch`` clips (default 1) of 16 frames at the stage resolution, gradient checkpointing as the config
says (on in the full-size ones), AdamW over the trained parameters, mixed
precision through autocast (fp16 with a gradient scaler, or bf16), master weights in float32,
frozen modules cast as when Lightning starts fitting (``half_precision_frozen_modules``).
``--set`` applies further config overrides (e.g. ``model.params.half_precision_frozen_modules=false``).
The step includes the VAE encoding and the conditioning, as a Lightning training step does.
Prints the median step time, the time and peak GPU memory of each phase of one step, and the
memory held between steps (weights, optimizer states). ``--compile`` compiles the UNet's blocks and
the VAE encoder (``compile_unet``, ``compile_first_stage_encoder``), ``--cuda_graph`` replays the
loss's forward and backward from CUDA graphs (``cuda_graph_training``); with either, the loss and
gradients of one step are compared with the plain eager path's at the same weights and seed.
Peak memory is given as allocated and as reserved by the caching allocator: memory inside CUDA
graphs counts as reserved only, so compare reserved figures across modes. ``--profile`` also
prints when the Python thread returns from a step against when the GPU finishes it, and the CPU
and kernel time of each part of the step under ``torch.profiler``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from report import redraw_zero_parameters, report, require_cuda
from sgm.config import build_model, load_config
from sgm.data.degradations import DegradationConfig, sample_clip_kernels
from sgm.models.diffusion import SHARED_STEP_PHASES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {1: ROOT / "configs" / "train-v01.yaml", 2: ROOT / "configs" / "train-v02.yaml"}


def make_batch(model, stage: int, device: torch.device, clips: int = 1) -> dict:
    """``clips`` random clips with the keys the stage's training data gives (stage 2: masks and blur
    kernels drawn with the model's degradation settings)."""
    size, frames = model.resolution, model.num_samples
    generator = torch.Generator(device).manual_seed(0)
    video = torch.rand(clips, 3, frames, size, size, device=device, generator=generator) * 2 - 1
    batch = {"video": video, "elevation": torch.full((clips,), 10.0, device=device),
             "image_only_indicator": torch.zeros(clips, frames, device=device), "num_video_frames": frames}
    if stage == 2:
        settings = model.degradation.pipeline.config if model.degradation is not None else DegradationConfig()
        kernels = [sample_clip_kernels(frames, settings, torch.Generator().manual_seed(i)) for i in range(clips)]
        batch.update({"masks": torch.ones(clips, frames, size, size, device=device),
                      "kernel1s": torch.stack([k.kernel1 for k in kernels]).to(device),
                      "kernel2s": torch.stack([k.kernel2 for k in kernels]).to(device),
                      "sinc_kernels": torch.stack([k.sinc for k in kernels]).to(device)})
    return batch


def weight_memory(model) -> dict[str, float]:
    """GiB of parameters and buffers of the UNet, the autoencoder and the conditioner."""
    def gib(module):
        tensors = [*module.parameters(), *module.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors) / 2**30
    return {"unet_weights_gib": gib(model.model), "vae_weights_gib": gib(model.first_stage_model),
            "conditioner_weights_gib": gib(model.conditioner)}


def compare_with_eager(model, forward, eager_forward, optimizer) -> dict:
    """Loss and gradients of one step of ``forward`` (compiled and/or graphed) against the plain
    eager path's, same weights and seed. The first call of ``forward`` compiles and captures (it
    draws random numbers of its own, so it is not the compared one); its time is ``compile_s``."""
    def loss_and_grads(fn, seed: int) -> tuple[float, torch.Tensor]:
        torch.manual_seed(seed)
        loss = fn()
        loss.backward()
        grads = torch.cat([p.grad.flatten().float() for p in model.trained_parameters()])
        optimizer.zero_grad(set_to_none=True)
        return loss.item(), grads

    with torch.compiler.set_stance("force_eager"):
        eager_loss, eager_grads = loss_and_grads(eager_forward, 0)
    torch.cuda.empty_cache()  # as a training run, which captures before any other step
    print("compiling / capturing (minutes with --compile) ...", flush=True)
    torch.cuda.synchronize()
    start = time.perf_counter()
    loss_and_grads(forward, 1)
    seconds = time.perf_counter() - start
    fast_loss, fast_grads = loss_and_grads(forward, 0)
    error = (fast_grads - eager_grads).norm() / eager_grads.norm()
    return {"compile_s": seconds, "loss_eager": eager_loss, "loss_fast": fast_loss,
            "grad_rel_err_vs_eager": error.item()}


def profile_step(forward, backward, update) -> None:
    """Print whether a step is bound by the CPU (the Python thread) or by the GPU, and where."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    backward(forward())
    update()
    returned = time.perf_counter() - start
    torch.cuda.synchronize()
    print(f"step without the profiler: the CPU returns after {returned:.3f} s, the GPU is done after "
          f"{time.perf_counter() - start:.3f} s")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("forward"):
            loss = forward()
        with record_function("backward"):
            backward(loss)
        with record_function("update"):
            update()
        torch.cuda.synchronize()
    labels = ("forward", *SHARED_STEP_PHASES, "backward", "update")
    print("under the profiler (CPU times inflated); kernels launched by the autograd thread count for no part:")
    for event in prof.key_averages():
        if event.key in labels and event.cpu_time_total > 0:
            print(f"  {event.key:>20}: CPU {event.cpu_time_total / 1e3:7.1f} ms, "
                  f"kernels launched {event.device_time_total / 1e3:7.1f} ms")


def measure(stage: int, precision: str, fused: bool, compile: bool, cuda_graph: bool, overrides: list[str],
            steps: int, profile_one_step: bool = False, config_path: Path | None = None, clips: int = 1) -> dict:
    config_path = config_path or CONFIGS[stage]
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    flag = {True: "true", False: "false"}
    fixed = ["model.params.ckpt_path=null", f"model.params.compile_unet={flag[compile]}",
             f"model.params.compile_first_stage_encoder={flag[compile]}",
             f"model.params.cuda_graph_training={flag[cuda_graph]}"]
    config = load_config(config_path, fixed + overrides)
    with torch.device(device):
        model = build_model(config, random_pretrained_encoders=True)
    model.train()
    redraw_zero_parameters(model.model)  # else only the output layer gets gradients
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    model.apply_training_precision(dtype)
    optimizer = torch.optim.AdamW(model.trained_parameters(), lr=1e-5, fused=fused)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    batch = make_batch(model, stage, device, clips)

    def forward():
        with torch.autocast("cuda", dtype=dtype):
            return model.training_loss(batch)

    def eager_forward():
        with torch.autocast("cuda", dtype=dtype):
            return model.shared_step(batch)

    def backward(loss):
        scaler.scale(loss).backward()

    def update():
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def step():
        loss = forward()
        backward(loss)
        update()
        return loss

    checks = compare_with_eager(model, forward, eager_forward, optimizer) if compile or cuda_graph else {}
    torch.cuda.empty_cache()  # the comparison's gradient copies are gone: optimizer states take fresh memory
    torch.cuda.synchronize()
    start = time.perf_counter()
    step()  # warm-up: optimizer states, kernels, compilation (done above with --compile), allocator
    torch.cuda.synchronize()
    first_step = checks.pop("compile_s", 0.0) + time.perf_counter() - start
    step()

    phases = {}  # one more step, phase by phase: time and peak memory of each phase

    def record(phase: str, began: float) -> float:
        torch.cuda.synchronize()
        now = time.perf_counter()
        phases[f"{phase}_s"] = now - began
        phases[f"peak_{phase}_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        return now

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    loss = forward()
    began = record("forward", began)
    backward(loss)
    began = record("backward", began)
    update()
    record("update", began)
    held = torch.cuda.memory_allocated() / 2**30

    torch.cuda.empty_cache()  # reserved memory from here on is what the timed steps need
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    assert torch.isfinite(loss), "non-finite loss"
    if profile_one_step:
        profile_step(forward, backward, update)
    return {"stage": stage, "config": str(config_path), "clips": clips, "precision": precision,
            "fused_adam": fused, "compile": compile, "cuda_graph": cuda_graph,
            "overrides": " ".join(overrides) or "-",
            "step_s": statistics.median(times), "step_s_min": min(times), "first_step_s": first_step,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30, "held_between_steps_gib": held, **phases, **checks,
            **weight_memory(model), "trained_params": sum(p.numel() for p in model.trained_parameters()),
            "device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": date.today().isoformat()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument("--config", type=Path, default=None,
                        help="training config of that stage (default: configs/train-v0N.yaml), e.g. a demo one")
    parser.add_argument("--batch", type=int, default=1, help="clips per step")
    parser.add_argument("--precision", choices=("fp16", "bf16"), default="fp16")
    parser.add_argument("--fused_adam", action="store_true", help="torch's fused AdamW kernel")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet blocks and the VAE encoder (compile_unet, compile_first_stage_encoder)")
    parser.add_argument("--cuda_graph", action="store_true",
                        help="replay the loss's forward and backward from CUDA graphs (cuda_graph_training)")
    parser.add_argument("--profile", action="store_true", help="profile one more step (CPU vs GPU time per part)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    parser.add_argument("--json", type=Path, default=None, help="append the result as one JSON line")
    args = parser.parse_args()
    require_cuda()
    report(measure(args.stage, args.precision, args.fused_adam, args.compile, args.cuda_graph, args.set, args.steps,
                   args.profile, args.config, args.batch), args.json)


if __name__ == "__main__":
    main()
