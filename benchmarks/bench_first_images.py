"""Per-image times of a fresh process running one full-size stage on image after image: what the
compile modes cost the first images and when the compiled UNet takes over.

    python benchmarks/bench_first_images.py --stage 1 --mode background --seconds 300 --json out.jsonl

Each image is one whole stage run (conditioning, 25 steps, decoding) on the same random input and
seed, so every image's frames are compared with the first image's. ``--mode`` is a pipeline compile
mode (:mod:`sgm.pipelines.compilation`): ``background`` (the default on CUDA), ``on`` or ``off``.
Run it with an empty ``TORCHINDUCTOR_CACHE_DIR`` / ``TRITON_CACHE_DIR`` to see a machine that has never
run the project. One JSON line per image (after one with the model's build time) goes to ``--json``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench_inference import CONFIGS, build, phases, run_stage
from report import report, require_cuda
from sgm.config import load_config, model_node
from sgm.pipelines.compilation import compile_unet
from sgm.pipelines.loading import ExecutionPlan


def measure(stage: int, mode: str, seconds: float, compiled_images: int, json_path: Path | None) -> None:
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    start = time.perf_counter()
    model = build(stage, device, torch.float16)
    network_config = model_node(load_config(CONFIGS[stage]))["params"]["network_config"]
    compiling = compile_unet(model.model.diffusion_model, mode, f"stage {stage}", network_config)
    report({"stage": stage, "mode": mode, "build_s": time.perf_counter() - start}, json_path)
    plan, first, compiled_at = ExecutionPlan(device), None, None
    start = time.perf_counter()
    for image in range(10_000):
        compiled = mode == "on" or (compiling is not None and compiling.adopt())
        if compiled and compiled_at is None:
            compiled_at = image
        timings, frames = run_stage(model, stage, plan, steps=25, seed=0)
        first = frames if first is None else first
        difference = (frames - first).abs()
        report({"stage": stage, "mode": mode, "image": image, "compiled": compiled, "total_s": timings["total_s"],
                **phases(timings, 25),
                "vs_first_max_abs": difference.max().item(), "vs_first_mean_abs": difference.mean().item(),
                "child_done": compiling is not None and compiling.done,
                "elapsed_s": time.perf_counter() - start}, json_path)
        if compiled_at is not None and image - compiled_at + 1 >= compiled_images:
            break
        if time.perf_counter() - start > seconds:
            break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument("--mode", choices=("background", "on", "off"), default="background")
    parser.add_argument("--seconds", type=float, default=300.0, help="stop starting images after this long")
    parser.add_argument("--compiled-images", type=int, default=3, help="stop after this many compiled images")
    parser.add_argument("--json", type=Path, default=None, help="append one JSON line per image")
    args = parser.parse_args()
    require_cuda()
    measure(args.stage, args.mode, args.seconds, args.compiled_images, args.json)


if __name__ == "__main__":
    main()
