"""Time one guided full-size UNet call under several execution variants, and profile one of them.

    python benchmarks/profile_unet.py --stage 1 --variants eager compile --profile compile

Only the UNet is built (random weights, fp16 on the GPU), fed 2 clips x 16 frames as in
guided sampling. Each variant's output is compared with the eager one (relative error); the
first call of each variant (compilation included) is timed too.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from sgm.config import load_config
from sgm.util import instantiate_from_config

from bench_inference import CONFIGS
from report import redraw_zero_parameters


def build_unet(stage: int) -> tuple[torch.nn.Module, dict]:
    params = load_config(CONFIGS[stage]).model.params
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = instantiate_from_config(params.network_config)
    unet = unet.half().eval()
    redraw_zero_parameters(unet)
    size = {1: 64, 2: 128}[stage]
    gen = torch.Generator("cuda").manual_seed(0)
    channels = params.network_config.params.in_channels
    # float32 inputs as the sampler passes them (autocast casts inside)
    inputs = {"x": torch.randn(32, channels, size, size, device="cuda", generator=gen) * 0.5,
              "timesteps": torch.full((32,), 0.5, device="cuda"),
              "context": torch.randn(2, 1, 1024, device="cuda", generator=gen) * 0.1,
              "y": torch.randn(2, params.network_config.params.adm_in_channels, device="cuda", generator=gen) * 0.1}
    return unet, inputs


def set_conv_memory_format(module: torch.nn.Module, memory_format: torch.memory_format) -> None:
    """Lay out the weights of every 2-D convolution in ``memory_format`` (3-D ones stay as they are)."""
    for conv in module.modules():
        if isinstance(conv, torch.nn.Conv2d):
            conv.weight.data = conv.weight.data.contiguous(memory_format=memory_format)


KERNEL_CATEGORIES = {  # first matching substring (lower case) names the category
    "attention": ("flash", "fmha", "attention", "sdpa"),
    "triton reduction": ("triton_red", "triton_per"),  # compiled norms and what they fused
    "triton pointwise": ("triton_poi",),
    "convolution": ("fprop", "dgrad", "wgrad", "conv", "implicit", "winograd"),
    "gemm": ("nvjet", "gemm", "xmma", "cutlass", "cublas"),
    "norm": ("group_norm", "groupnorm", "layer_norm", "layernorm", "welford", "moments"),
    "layout copy": ("nchwtonhwc", "nhwctonchw", "transpose", "copy"),
    "elementwise": ("elementwise", "vectorized", "unrolled", "reduce"),
}


def print_kernel_categories(prof) -> None:
    """Total CUDA kernel time per category of kernel name."""
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if event.device_time_total <= 0:
            continue
        name = event.key.lower()
        category = next((c for c, keys in KERNEL_CATEGORIES.items() if any(k in name for k in keys)), "other")
        totals[category] = totals.get(category, 0.0) + event.device_time_total / 1000
    whole = sum(totals.values())
    for category, ms in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {category:>16}: {ms:7.1f} ms ({100 * ms / whole:4.1f}%)")


def print_profile(call) -> None:
    """The top CUDA kernels of one ``call()``, their categories, and the aten ops that launch them."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=100))
    print_kernel_categories(prof)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    ops = [e for e in prof.key_averages() if e.key.startswith("aten::") and e.self_device_time_total > 0]
    print("aten ops by the time of the kernels they launch themselves:")
    for event in sorted(ops, key=lambda e: -e.self_device_time_total)[:20]:
        print(f"  {event.key:>32}: {event.self_device_time_total / 1000:7.1f} ms in {event.count} calls")


def timed(fn, repeats: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stage", type=int, choices=(1, 2), default=1)
    parser.add_argument("--variants", nargs="+", default=["eager", "compile"],
                        choices=["eager", "channels_last", "compile"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--profile", nargs="?", const="eager", choices=["eager", "channels_last", "compile"],
                        help="print the top CUDA kernels of that variant's call (default: eager)")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    unet, inputs = build_unet(args.stage)

    def run(module, x):
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.half):
            return module(x, inputs["timesteps"], context=inputs["context"], y=inputs["y"], num_video_frames=16)

    reference = None
    for variant in args.variants:
        module, x = unet, inputs["x"]
        if variant == "channels_last":
            set_conv_memory_format(unet, torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        elif variant == "compile":
            module = torch.compile(unet)
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = run(module, x)  # warm-up (and compilation)
        torch.cuda.synchronize()
        first_call = time.perf_counter() - start
        out = run(module, x)
        if variant == args.profile:
            print_profile(lambda: run(module, x))
        if reference is None:
            reference = out.float()
        error = ((out.float() - reference).norm() / reference.norm()).item()
        seconds = timed(lambda: run(module, x), args.repeats)
        print(f"stage {args.stage} {variant:>16}: {seconds * 1000:8.1f} ms per guided UNet call, rel. error {error:.1e}, "
              f"first call {first_call:.1f} s")
        if variant == "channels_last":
            set_conv_memory_format(unet, torch.contiguous_format)


if __name__ == "__main__":
    main()
