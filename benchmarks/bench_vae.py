"""Time the full-size VAE of a stage on a GPU (random weights) and print one line per measurement.

    python benchmarks/bench_vae.py --stage 2 --json out.jsonl

- ``encode`` / ``decode``: the 16 frames of one image at the stage's resolution, ``--chunks`` frames
  per call (the configs use 1 in stage 2): seconds (min of ``--repeats``) and the peak memory above
  the weights and inputs.
- ``group_norm``: the VAE's largest GroupNorm inputs of one frame, the native kernel against
  :func:`~sgm.modules.diffusionmodules.util.group_norm_by_reductions` (what
  :class:`~sgm.modules.diffusionmodules.util.FewRowsGroupNorm` takes for them on CUDA): seconds and the
  largest error against float64.
"""
from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_inference import CONFIGS
from report import report, require_cuda
from sgm.config import load_config, model_node
from sgm.modules.diffusionmodules.util import group_norm_by_reductions
from sgm.pipelines.loading import DTYPES
from sgm.util import instantiate_from_config

RESOLUTION = {1: 512, 2: 1024}
FRAMES = 16


def timed(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """(min seconds, peak GiB allocated above what was allocated before; 0 off CUDA) of ``fn()`` after one
    warm-up call."""
    cuda = device.type == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times), (torch.cuda.max_memory_allocated(device) - base) / 2**30 if cuda else 0.0


@torch.no_grad()
def measure(stage: int, dtype: torch.dtype, chunks: list[int], repeats: int, json_path: Path | None,
            device: torch.device = torch.device("cuda"), size: int | None = None) -> None:
    """Print (and append to ``json_path``) every measurement; ``size`` overrides the stage's resolution."""
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    with torch.device(device):
        vae = instantiate_from_config(model_node(load_config(CONFIGS[stage]))["params"]["first_stage_config"])
    vae = vae.to(dtype).eval()
    size = size or RESOLUTION[stage]
    frames = torch.rand(FRAMES, 3, size, size, device=device, dtype=dtype) * 2 - 1
    latents = torch.randn(FRAMES, vae.embed_dim, size // 8, size // 8, device=device, dtype=dtype)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    common = {"stage": stage, "size": size, "dtype": str(dtype).removeprefix("torch."), "device": name,
              "torch": torch.__version__, "date": date.today().isoformat()}
    for chunk in chunks:
        for phase, fn in (("encode", lambda: [vae.encoder(part) for part in frames.split(chunk)]),
                          ("decode", lambda: [vae.decode(part) for part in latents.split(chunk)])):
            seconds, peak = timed(fn, repeats, device)
            report({**common, "measure": phase, "frames_per_call": chunk, "seconds": seconds, "extra_peak_gib": peak},
                   json_path)
    widths = [vae.encoder.conv_in.out_channels * m for m in (1, 2, 4)]
    for level, width in enumerate(widths):
        shape = (1, width, size >> level, size >> level)
        x = torch.randn(shape, device=device, generator=torch.Generator(device).manual_seed(level)).to(dtype) * 3 + 1
        weight, bias = (torch.randn(width, device=device).to(dtype) for _ in range(2))
        exact = F.group_norm(x.double(), 32, weight.double(), bias.double(), 1e-6)
        for name, norm in (("native", F.group_norm), ("by_reductions", group_norm_by_reductions)):
            seconds, _ = timed(lambda: norm(x, 32, weight, bias, 1e-6), repeats, device)
            error = (norm(x, 32, weight, bias, 1e-6).double() - exact).abs().max().item()
            report({**common, "measure": f"group_norm {name}", "shape": list(shape), "seconds": seconds,
                    "max_abs_error_vs_float64": error}, json_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2)
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 2, 4], help="frames per VAE call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="append one JSON line per measurement")
    args = parser.parse_args()
    require_cuda()
    measure(args.stage, DTYPES[args.dtype], args.chunks, args.repeats, args.json)


if __name__ == "__main__":
    main()
