"""Tiny configs on 2 GPUs through ``train_ddp_spawn.py``, DDP and DeepSpeed ZeRO-2 (bf16):
the trained parameters are equal across ranks, rank 0 alone writes one checkpoint, a resume on
2 GPUs continues the global step, and the checkpoint moves between GPU counts (DDP) or is
refused with a named error and converted instead (ZeRO-2). Skipped without 2 CUDA GPUs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_training import TINY_V01, data_overrides, orbit_folder, run_script  # noqa: F401 (fixture)

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")]
ROOT = Path(__file__).resolve().parents[1]


def script_result(script: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=400)


def ranks(out: Path, tag: str) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(out.glob(f"{tag}-rank*.json"))]


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed_stage_2"])
def test_two_gpus_train_resume_and_move(orbit_folder: Path, tmp_path: Path, strategy: str):  # noqa: F811
    if strategy.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    env = {k: v for k, v in os.environ.items() if k not in ("HI3D_RUN_TIMESTAMP", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")]))
    out = tmp_path / "ranks"
    checksum = ["lightning.callbacks.checksum.target=test_training.ParameterChecksum",
                f"lightning.callbacks.checksum.params.out_dir={out}"]
    common = ["--train", "True", "--no-test", "True", "--accelerator", "gpu"]
    run_script(["--base", str(TINY_V01), *common, "--devices", "2", "--logdir", str(tmp_path / "logs"),
                "--max_steps", "3", f"lightning.trainer.strategy={strategy}", "lightning.trainer.precision=bf16-mixed",
                *data_overrides(orbit_folder), *checksum, "lightning.callbacks.checksum.params.tag=first",
                "lightning.callbacks.image_logger.params.disabled=true"], env)
    (logdir,) = (tmp_path / "logs").iterdir()
    first = ranks(out, "first")
    assert [(r["start"], r["end"], r["world_size"]) for r in first] == [(0, 3, 2)] * 2
    assert first[0]["sha256"] == first[1]["sha256"], "trained parameters differ between ranks"
    assert [p.name for p in (logdir / "checkpoints").iterdir()] == ["last.ckpt"]

    run_script(["--resume", str(logdir), *common, "--devices", "2", "--max_steps", "5",
                "lightning.callbacks.checksum.params.tag=second"], env)
    second = ranks(out, "second")
    assert [(r["start"], r["end"]) for r in second] == [(3, 5)] * 2
    assert second[0]["sha256"] == second[1]["sha256"] != first[0]["sha256"]

    checkpoint = logdir / "checkpoints" / "last.ckpt"
    if strategy == "ddp":  # a 2-GPU checkpoint resumes on 1 GPU, and that one on 2
        for tag, devices, steps in (("third", 1, 6), ("fourth", 2, 7)):
            run_script(["--resume", str(logdir), *common, "--devices", str(devices), "--max_steps", str(steps),
                        f"lightning.callbacks.checksum.params.tag={tag}"], env)
            assert [(r["start"], r["end"], r["world_size"]) for r in ranks(out, tag)] == [(steps - 1, steps, devices)] * devices
        return
    refused = script_result("train_ddp_spawn.py", ["--resume", str(logdir), *common, "--devices", "1", "--max_steps",
                                                   "6"], env)
    assert refused.returncode == 2 and "saved by 2 DeepSpeed ranks and this run has 1" in refused.stderr
    converted = tmp_path / "weights.safetensors"
    config = next((logdir / "configs").glob("*-project.yaml"))
    result = script_result("scripts/convert_checkpoint.py", ["--input", str(checkpoint), "--output", str(converted),
                                                             "--config", str(config)], env)
    assert result.returncode == 0 and "loads strictly" in result.stdout, result.stderr[-3000:]

