"""DeepSpeed ZeRO-2 without a GPU: refusals before fitting, the half-precision model DeepSpeed
trains, its checkpoint folders (read without DeepSpeed, converted, resumed or refused).

The checkpoint folders are real ones: ``tests/zero_worker.py`` trains a small model with
DeepSpeed ZeRO-2 in two CPU processes (gloo) and saves them; the reference is DeepSpeed's own
float32 reconstruction and the optimizer's master partitions as they were in memory.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import render_orbits
from omegaconf import OmegaConf
from safetensors.torch import load_file

from sgm.checkpoint import read_state_dict
from sgm.common.errors import CheckpointError
from sgm.config import build_model, load_config
from sgm.models.diffusion import frozen_scalars_to_buffers
from sgm.training import TrainingConfigError, check_accelerator, check_resume, translate_trainer_options
from sgm.zero_checkpoint import ZeroCheckpointError, read_zero_checkpoint, saved_world_size

ROOT = Path(__file__).resolve().parents[1]
TINY_V01 = ROOT / "configs" / "tiny-train-v01.yaml"
TINY_V02 = ROOT / "configs" / "tiny-train-v02.yaml"
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="needs the deepspeed package (pip install -e .[deepspeed])")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_script(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def script_main(path: str):
    """The ``main`` of the script at ``path`` (from the repository root), loaded into this process."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


# ---------------------------------------------------------------------------------------
# Refused before anything is built


def test_deepspeed_strategy_without_the_package_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a))
    with pytest.raises(TrainingConfigError, match=r"strategy='deepspeed_stage_2'.*pip install -e \.\[deepspeed\]"):
        translate_trainer_options({"strategy": "deepspeed_stage_2"}, has_validation=False)


@pytest.mark.parametrize("options, cuda, message", [
    ({"accelerator": "cpu", "strategy": "deepspeed_stage_2"}, True, r"strategy='deepspeed_stage_2' runs on CUDA"),
    ({"accelerator": "auto", "strategy": "deepspeed_stage_2"}, False, r"strategy='deepspeed_stage_2' runs on CUDA"),
    ({"accelerator": "gpu", "strategy": "ddp"}, False, r"accelerator='gpu' but CUDA is not available"),
])
def test_accelerator_checks(options, cuda, message):
    with pytest.raises(TrainingConfigError, match=message):
        check_accelerator(options, cuda_available=cuda)
    check_accelerator({**options, "accelerator": "gpu"}, cuda_available=True)  # fine where CUDA is


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("args, message", [
    (["--base", "configs/train-v01.yaml"], "lightning.trainer.accelerator='gpu' but CUDA is not available"),
    (["--base", "configs/tiny-train-v01.yaml", "--accelerator", "cpu", "lightning.trainer.strategy=deepspeed_stage_2"],
     "lightning.trainer.strategy='deepspeed_stage_2' runs on CUDA GPUs only"),
], ids=["official-config", "deepspeed-on-cpu"])
def test_train_script_refuses_deepspeed_on_a_cpu_before_the_first_step(tmp_path: Path, args, message):
    result = run_script("train_ddp_spawn.py", *args, "--train", "True", "--logdir", str(tmp_path / "logs"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "logs").exists(), "nothing may be written before the refusal"


# ---------------------------------------------------------------------------------------
# The model as DeepSpeed trains it: every weight in half precision, no autocast from Lightning


@pytest.fixture(scope="module")
def orbit_folder(tmp_path_factory) -> Path:
    # the render script's main in this process (no interpreter start-up): one object, 32 px, seed 0
    return render_orbits(tmp_path_factory.mktemp("orbits"), 32, count=1)


def tiny_model_and_batch(config_path: Path, folder: Path):
    from sgm.util import instantiate_from_config

    config = load_config(config_path, [f"data.params.base_folder={folder}", "data.params.width=32",
                                       "data.params.height=32"])
    if config.model.target.endswith("Stage2VideoLDM"):
        config.model.params.conditioner_config.params.emb_models[2].params.scale_factor = 1.0
    torch.manual_seed(0)
    model = build_model(config)
    data = instantiate_from_config(config.data)
    data.setup()
    return model, next(iter(data.train_dataloader()))


@pytest.mark.slow
@pytest.mark.parametrize("config_path", [TINY_V01, TINY_V02], ids=["stage1", "stage2"])
def test_training_step_of_a_bfloat16_model_without_autocast(orbit_folder: Path, config_path: Path):
    """DeepSpeed's bf16 mode casts the module and the batch's float tensors to bfloat16."""
    model, batch = tiny_model_and_batch(config_path, orbit_folder)
    model = model.to(torch.bfloat16).train()
    batch = {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    loss = model.shared_step(batch)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.trained_parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_frozen_scalars_become_buffers_with_the_same_state_dict(orbit_folder: Path):
    model, _ = tiny_model_and_batch(TINY_V01, orbit_folder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    scalars = sorted(n for n, p in model.named_parameters() if p.dim() == 0)
    assert scalars, "the tiny model has CLIP's logit_scale: a frozen 0-dim parameter"
    assert sorted(frozen_scalars_to_buffers(model)) == scalars
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any(p.dim() == 0 for p in model.parameters())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == trained


# ---------------------------------------------------------------------------------------
# ZeRO checkpoint folders


@pytest.fixture(scope="module")
def zero_run(tmp_path_factory) -> Path:
    """A ZeRO-2 bf16 checkpoint saved by 2 CPU ranks (tests/zero_worker.py), and each rank's master partition."""
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("needs the deepspeed package (pip install -e .[deepspeed])")
    out = tmp_path_factory.mktemp("zero")
    port = str(free_port())
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "zero_worker.py"), str(out), str(rank), "2", port],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    logs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), "\n".join(log[-3000:] for log in logs)
    return out


@needs_deepspeed
def test_zero_checkpoint_weights_are_the_master_weights(zero_run: Path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ours = read_zero_checkpoint(zero_run / "ckpt")
    theirs = get_fp32_state_dict_from_zero_checkpoint(str(zero_run / "ckpt"))
    assert sorted(ours) == sorted(theirs) == ["0.bias", "0.weight", "2.bias", "2.weight", "3.bias", "3.weight", "scale"]
    for key in theirs:
        assert torch.equal(ours[key].float(), theirs[key].float()), key
    # the trained parameters, flattened in order, are the ranks' master partitions joined
    master = torch.cat([torch.load(zero_run / f"master-rank{r}.pt")[0] for r in range(2)])
    flat = torch.cat([ours[k].flatten() for k in ("2.weight", "2.bias", "3.weight", "3.bias")])
    assert ours["2.weight"].dtype == torch.float32
    assert torch.equal(master[:flat.numel()], flat) and master.numel() - flat.numel() < 4  # ZeRO-2 padding
    # frozen parameters keep the module's (bf16) values; the buffer its value
    assert ours["0.weight"].dtype == torch.bfloat16
    assert torch.equal(ours["scale"].float(), torch.tensor([0.5, 2.0]))
    assert saved_world_size(zero_run / "ckpt") == 2
    assert read_state_dict(zero_run / "ckpt").keys() == ours.keys()  # the one loader reads folders too


def test_a_folder_that_is_no_zero_checkpoint_is_a_named_error(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty is not a DeepSpeed checkpoint folder: expected "
                                              r"mp_rank_00_model_states.pt"):
        read_state_dict(tmp_path / "empty")


@needs_deepspeed
def test_zero_checkpoint_missing_a_rank_is_a_named_error(zero_run: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(zero_run / "ckpt", copy)
    next(copy.glob("checkpoint/*zero_pp_rank_1_*")).unlink()
    with pytest.raises(ZeroCheckpointError, match=r"expected optimizer files of ranks 0..1, found ranks \[0\]"):
        read_zero_checkpoint(copy)


@needs_deepspeed
def test_resume_refusals(zero_run: Path, tmp_path: Path):
    folder = zero_run / "ckpt"
    check_resume(folder, deepspeed=True, world_size=2)  # what it was saved with: fine
    with pytest.raises(TrainingConfigError, match=r"saved by 2 DeepSpeed ranks and this run has 1.*--devices 2"):
        check_resume(folder, deepspeed=True, world_size=1)
    with pytest.raises(TrainingConfigError, match=r"is a DeepSpeed checkpoint: resume it with "
                                                  r"lightning.trainer.strategy=deepspeed_stage_2"):
        check_resume(folder, deepspeed=False, world_size=2)
    file = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}}, file)
    check_resume(file, deepspeed=False, world_size=3)
    with pytest.raises(TrainingConfigError, match=r"Lightning checkpoint file, which DeepSpeed cannot resume"):
        check_resume(file, deepspeed=True, world_size=1)


@needs_deepspeed
def test_convert_script_writes_the_zero_weights(zero_run: Path, tmp_path: Path):
    out = tmp_path / "weights.safetensors"
    result = run_script("scripts/convert_checkpoint.py", "--input", str(zero_run / "ckpt"), "--output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    written = load_file(str(out))
    expected = read_zero_checkpoint(zero_run / "ckpt")
    assert written.keys() == expected.keys() and all(torch.equal(written[k], expected[k]) for k in expected)
    again = run_script("scripts/convert_checkpoint.py", "--input", str(zero_run / "ckpt"), "--output", str(out))
    assert again.returncode == 2 and f"--output {out} exists; pass --overwrite" in again.stderr


@pytest.mark.slow
def test_convert_script_checks_the_config_and_inference_loads_a_training_checkpoint(orbit_folder: Path,
                                                                                    tmp_path: Path, capsys):
    """A Lightning ``last.ckpt`` of a training config (whose ``ckpt_path`` names a file that does not
    exist here) converts with ``--config`` and loads in the stage-1 script via ``--denoise_checkpoint``."""
    model, _ = tiny_model_and_batch(TINY_V01, orbit_folder)
    with torch.no_grad():
        for param in model.model.parameters():
            param.add_(0.01)
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": model.state_dict(), "global_step": 3}, checkpoint)
    config = tmp_path / "run.yaml"
    OmegaConf.save(load_config(TINY_V01, ["model.params.ckpt_path=ckpts/not_here.safetensors"]), config)

    wrong = run_script("scripts/convert_checkpoint.py", "--input", str(checkpoint), "--output",
                       str(tmp_path / "w.safetensors"), "--config", str(TINY_V02))
    assert wrong.returncode == 2 and "does not fit Stage2VideoLDM" in wrong.stderr
    assert not (tmp_path / "w.safetensors").exists() and not list(tmp_path.glob(".w.safetensors*"))
    # the refusal above is the command line's; the two runs that succeed call the scripts' main in this process
    script_main("scripts/convert_checkpoint.py")(["--input", str(checkpoint), "--output", str(tmp_path / "w.safetensors"),
                                                  "--config", str(config)])
    assert "loads strictly" in capsys.readouterr().out

    script_main("pipeline_i2v_eval_v01.py")(["--denoise_config", str(config), "--denoise_checkpoint", str(checkpoint),
                                             "--image_path", str(ROOT / "demo" / "object_a_elev10.png"), "--output_dir",
                                             str(tmp_path / "out"), "--num_steps", "1", "--no_rembg", "--device", "cpu"])
    assert (tmp_path / "out" / "first_step" / "first.mp4").is_file()
