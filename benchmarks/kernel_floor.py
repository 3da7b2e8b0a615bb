"""How fast could one guided UNet call be? Each of its matrix-like operations timed alone.

    python benchmarks/kernel_floor.py --stage 1 2 --json floor.jsonl

One guided full-size call (2 clips x 16 frames, random weights, fp16 autocast, as
``profile_unet.py`` builds it) is run once with hooks that list every distinct convolution,
linear layer and ``scaled_dot_product_attention`` call. Each is then timed on its own, on fresh
fp16 tensors of the same shapes (CUDA events, mean of ``--repeats`` after 3 warm-ups):

- convolutions in the (N, C, ...) layout the eager model uses and channels-last (what cuDNN's
  Hopper kernels work in; for NCHW inputs cuDNN converts input, weight and output around them);
- linear layers through cuBLAS;
- attention through SDPA's cuDNN, flash and memory-efficient backends, in the model's layout.

Per class it prints the total FLOP, each variant's summed time and TFLOP/s, and the best
variant's sum: the sum of those minima is what the call's matrix work costs with these libraries'
kernels. Everything else (norms, activations, adds, copies) comes on top of it.
"""
from __future__ import annotations

import argparse
import collections
import json
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from profile_unet import build_unet
from report import require_cuda

ATTENTION_BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                      "efficient": SDPBackend.EFFICIENT_ATTENTION}


def mean_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Mean seconds of ``fn`` over ``repeats`` back-to-back calls between two CUDA events. Unlike
    ``profile_unet.timed`` (median of calls timed one by one), no call waits for its launch on an idle
    GPU: many of these kernels take tens of microseconds."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / repeats


def list_operations(stage: int) -> collections.Counter:
    """Distinct (kind, shapes...) of one guided call, with how often each runs."""
    unet, inputs = build_unet(stage)
    seen: collections.Counter = collections.Counter()

    def on_conv(module, args):
        seen[("conv", tuple(args[0].shape), tuple(module.weight.shape), module.stride, module.padding)] += 1

    def on_linear(module, args):
        rows = args[0].numel() // args[0].shape[-1]
        seen[("linear", (rows, args[0].shape[-1]), tuple(module.weight.shape), module.bias is not None)] += 1

    hooks = [m.register_forward_pre_hook(on_conv) for m in unet.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    hooks += [m.register_forward_pre_hook(on_linear) for m in unet.modules() if isinstance(m, nn.Linear)]
    sdpa = F.scaled_dot_product_attention

    def on_attention(q, k, v, *args, **kwargs):
        seen[("attention", tuple(q.shape), tuple(k.shape))] += 1
        return sdpa(q, k, v, *args, **kwargs)

    F.scaled_dot_product_attention = on_attention
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.half):
            unet(inputs["x"], inputs["timesteps"], context=inputs["context"], y=inputs["y"], num_video_frames=16)
    finally:
        F.scaled_dot_product_attention = sdpa
        for hook in hooks:
            hook.remove()
    return seen


def half(*shape: int) -> torch.Tensor:
    return torch.randn(shape, device="cuda", dtype=torch.half)


def time_convolution(x_shape, w_shape, stride, padding, repeats) -> tuple[str, float, dict[str, float]]:
    x, w, b = half(*x_shape), half(*w_shape) * 0.02, half(w_shape[0])
    conv = F.conv2d if len(x_shape) == 4 else F.conv3d
    out_positions = conv(x, w, b, stride, padding)[:, 0].numel()
    flop = 2.0 * w.numel() * out_positions
    layout = torch.channels_last if len(x_shape) == 4 else torch.channels_last_3d
    xl, wl = x.contiguous(memory_format=layout), w.contiguous(memory_format=layout)
    times = {"plain": mean_seconds(lambda: conv(x, w, b, stride, padding), repeats),
             "channels_last": mean_seconds(lambda: conv(xl, wl, b, stride, padding), repeats)}
    kind = "conv3d" if len(x_shape) == 5 else "conv1x1" if w_shape[2:] == (1, 1) else "conv2d"
    return kind, flop, times


def time_linear(rows_in, w_shape, bias, repeats) -> tuple[str, float, dict[str, float]]:
    a, w = half(*rows_in), half(*w_shape)
    b = half(w_shape[0]) if bias else None
    return "linear", 2.0 * rows_in[0] * rows_in[1] * w_shape[0], {"cublas": mean_seconds(lambda: F.linear(a, w, b), repeats)}


def time_attention(q_shape, k_shape, repeats) -> tuple[str, float, dict[str, float]]:
    """q: (N, heads, Lq, D) as the model passes it (a transposed (N, Lq, heads, D) tensor)."""
    n, heads, lq, d = q_shape
    q = half(n, lq, heads, d).transpose(1, 2)
    k = half(n, k_shape[2], heads, d).transpose(1, 2)
    times = {}
    for name, backend in ATTENTION_BACKENDS.items():
        with sdpa_kernel([backend]):
            try:
                times[name] = mean_seconds(lambda: F.scaled_dot_product_attention(q, k, k), repeats)
            except RuntimeError:  # the backend does not take this shape
                times[name] = float("nan")
    return "attention", 4.0 * n * heads * lq * k_shape[2] * d, times


def floor(stage: int, repeats: int) -> list[dict]:
    rows = []
    for key, count in list_operations(stage).items():
        if key[0] == "conv":
            kind, flop, times = time_convolution(*key[1:], repeats)
        elif key[0] == "linear":
            kind, flop, times = time_linear(*key[1:], repeats)
        else:
            kind, flop, times = time_attention(*key[1:], repeats)
        rows.append({"stage": stage, "kind": kind, "operation": str(key[1:]), "count": count, "gflop": flop / 1e9,
                     "ms": {name: round(t * 1e3, 4) for name, t in times.items()}})
    return rows


def summarise(rows: list[dict]) -> float:
    """Print per-class sums; return the summed best variant (ms per guided call)."""
    classes: dict[str, dict] = {}
    for row in rows:
        entry = classes.setdefault(row["kind"], {"tflop": 0.0, "ms": collections.Counter(), "best": 0.0})
        entry["tflop"] += row["gflop"] * row["count"] / 1e3
        valid = {name: ms for name, ms in row["ms"].items() if ms == ms}
        for name, ms in valid.items():
            entry["ms"][name] += ms * row["count"]
        entry["best"] += min(valid.values()) * row["count"]
    for kind, entry in classes.items():
        variants = "  ".join(f"{name} {ms:7.1f} ms ({entry['tflop'] / ms * 1e3:3.0f} TFLOP/s)"
                             for name, ms in entry["ms"].items())
        print(f"  {kind:>9}: {entry['tflop']:6.2f} TFLOP  {variants}  best {entry['best']:.1f} ms")
    total = sum(entry["best"] for entry in classes.values())
    print(f"  matrix work at the best variants: {total:.1f} ms per guided call "
          f"({sum(e['tflop'] for e in classes.values()):.1f} TFLOP)")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, nargs="+", choices=(1, 2), default=[1])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", help="append one JSON line per distinct operation to this file")
    args = parser.parse_args()
    require_cuda()
    torch.backends.cudnn.benchmark = True
    square = half(8192, 8192)
    seconds = mean_seconds(lambda: square @ square, 10)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}: "
          f"8192^3 fp16 matrix product {2 * 8192 ** 3 / seconds / 1e12:.0f} TFLOP/s")
    for stage in args.stage:
        rows = floor(stage, args.repeats)
        print(f"stage {stage}, one guided call:")
        summarise(rows)
        if args.json:
            with open(args.json, "a") as out:
                out.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
