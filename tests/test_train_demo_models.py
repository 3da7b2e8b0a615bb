"""scripts/train_demo_models.py: the phases end to end on tiny settings, continuing a finished or
carried-over run, and the packing that carries a run from one device call to the next."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_script
from safetensors import safe_open
from safetensors.torch import load_file

from sgm.checkpoint import read_state_dict
from sgm.common.errors import UsageError
from sgm.config import build_model, load_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_demo_models.py"
TINY = ["--train-objects", "2", "--heldout-objects", "1", "--resolution", "32", "--autoencoder-steps", "1",
        "--stage1-steps", "1", "--stage2-steps", "1", "--stage2-finetune-steps", "1", "--render-device", "cpu",
        "--accelerator", "cpu"]
SMALL_DATA = {"autoencoder": ["data.params.batch_size=2", "data.params.width=32", "data.params.height=32"],
              "stage1": ["data.params.batch_size=1", "data.params.width=32", "data.params.height=32"],
              "stage2": ["data.params.batch_size=1", "data.params.width=64", "data.params.height=64"],
              "stage2-finetune": ["data.params.batch_size=1", "data.params.width=64", "data.params.height=64"]}


def tiny_overrides() -> list[str]:
    items = []
    for phase, overrides in SMALL_DATA.items():
        for override in [*overrides, "data.params.num_workers=0", "lightning.trainer.log_every_n_steps=1"]:
            items += ["--set", f"{phase}:{override}"]
    return items


@pytest.fixture(scope="module")
def script():
    return load_script("train_demo_models")


def test_phase_overrides_are_grouped_and_a_bad_item_is_named(script):
    assert script.phase_overrides(["stage1:a=1", "autoencoder:b=2", "stage1:c=3"]) == \
        {"stage1": ["a=1", "c=3"], "autoencoder": ["b=2"]}
    with pytest.raises(UsageError, match=r"--set 'render:a=1': expected PHASE:KEY=VALUE"):
        script.phase_overrides(["render:a=1"])
    with pytest.raises(UsageError, match="--set 'stage1:a'"):
        script.phase_overrides(["stage1:a"])


def test_pack_keeps_what_a_later_call_needs_and_unpack_restores_it(script, tmp_path, monkeypatch):
    monkeypatch.setattr(script, "PART_BYTES", 4000)
    work = tmp_path / "work"
    kept = {"autoencoder.safetensors": bytes(range(256)) * 9, "autoencoder.done.json": b"{}",
            "runs/stage1/r/checkpoints/last.ckpt": b"x" * 2500, "runs/stage1/r/configs/p.yaml": b"a: 1\n",
            "log.jsonl": b"{}\n"}
    dropped = {"runs/autoencoder/r/checkpoints/last.ckpt": b"finished: its weights are kept instead",
               "train/o/000.png": b"data are rendered again", "stage1-init.safetensors": b"made again"}
    for name, data in {**kept, **dropped}.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    script.pack(work, tmp_path / "packed")
    parts = sorted(p.name for p in (tmp_path / "packed").glob("*.part"))
    assert len(parts) > 1 and max((tmp_path / "packed" / p).stat().st_size for p in parts) <= 4000
    script.unpack(tmp_path / "packed", tmp_path / "again")
    restored = {str(p.relative_to(tmp_path / "again")): p.read_bytes()
                for p in (tmp_path / "again").rglob("*") if p.is_file()}
    assert restored == kept

    (tmp_path / "packed" / parts[1]).write_bytes(b"changed")
    with pytest.raises(UsageError, match="do not match the manifest's sha256"):
        script.unpack(tmp_path / "packed", tmp_path / "third")
    (tmp_path / "packed" / parts[1]).unlink()
    with pytest.raises(UsageError, match=r"parts \['001.part'\] are missing"):
        script.unpack(tmp_path / "packed", tmp_path / "third")


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=1500)


def log_entries(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_the_phases_run_end_to_end_and_a_carried_run_continues(script, tmp_path):
    # The script's main in this process (its phases still run their own child processes: the renderer
    # and train_ddp_spawn.py); the command line's exit codes are the other tests' part.
    work, export = tmp_path / "work", tmp_path / "export"
    assert script.main(["--work", str(work), "--export", str(export), "--pack", str(tmp_path / "packed"),
                        *TINY, *tiny_overrides()]) == 0
    entries = log_entries(work)
    phases = ("autoencoder", "stage1", "stage2", "stage2-finetune")
    trained = {e["phase"]: e for e in entries if e["phase"] in phases}
    assert sorted(trained) == sorted(phases)
    assert all(e["steps_to"] == 1 and isinstance(e["last_loss"], float) for e in trained.values()), trained
    assert sorted(p.name for p in work.glob("*.done.json")) == sorted(f"{phase}.done.json" for phase in phases)
    assert sorted(p.name for p in (work / "train").iterdir()) == ["synthetic_0_00000", "synthetic_0_00001"]
    assert sorted(p.name for p in (work / "heldout").iterdir()) == ["synthetic_1_00000"]  # seed 1: disjoint
    (scale,) = [e["scale_factor"] for e in entries if e["phase"] == "autoencoder done"]

    for stage, config in (("stage1", "demo-v01.yaml"), ("stage2", "demo-v02.yaml")):
        path = export / f"{stage}.safetensors"
        with safe_open(str(path), "pt") as handle:
            assert handle.metadata() == {"steps": "1", "scale_factor": str(scale)}
        weights = load_file(path)
        assert all(w.dtype == torch.float16 for w in weights.values() if w.is_floating_point())
        model = build_model(load_config(ROOT / "configs" / config), random_pretrained_encoders=True)
        model.load_state_dict(weights, strict=True)  # every key and shape of the demo config
        vae = {k.removeprefix("first_stage_model."): v for k, v in weights.items() if k.startswith("first_stage_model.")}
        trained_vae = load_file(work / "autoencoder.safetensors")
        assert all(torch.equal(vae[k], trained_vae[k].half()) for k in trained_vae), "the trained VAE is kept frozen"

    # Stage 2's exported weights are the fine-tune's: it started from the stage-2 phase's weights
    # (as exported then, float16) and its step changed the UNet.
    start, final = load_file(work / "stage2-finetune-init.safetensors"), load_file(export / "stage2.safetensors")
    assert start.keys() == final.keys()
    assert all(w.dtype == torch.float16 for w in start.values() if w.is_floating_point())
    unet = [k for k in start if k.startswith("model.diffusion_model.")]
    assert unet and any(not torch.equal(start[k], final[k]) for k in unet)
    stage2_run = Path(json.loads((work / "stage2.done.json").read_text())["run"])
    stage2_weights = read_state_dict(stage2_run / "checkpoints" / "last.ckpt")
    assert all(torch.equal(start[k], stage2_weights[k].half()) for k in unet)

    # A new work folder from the packed state: every phase is finished, nothing is trained again.
    again = tmp_path / "again"
    assert script.main(["--work", str(again), "--export", str(tmp_path / "export2"), "--unpack",
                        str(tmp_path / "packed"), *TINY, *tiny_overrides()]) == 0
    new_entries = log_entries(again)[len(entries):]
    assert not [e for e in new_entries if e["phase"] in phases], new_entries
    assert not (tmp_path / "export2").exists(), "finished stages are not exported again"


def test_a_device_count_below_one_is_refused_before_any_work(tmp_path):
    work = tmp_path / "work"
    result = run_script("--work", str(work), "--devices", "0", *TINY)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: --devices must be at least 1, got 0" in result.stderr
    assert not work.exists()


def test_a_data_folder_with_too_few_objects_is_refused_and_kept(tmp_path):
    work = tmp_path / "work"
    (work / "train" / "mine").mkdir(parents=True)
    (work / "train" / "mine" / "object.json").write_text("{}")
    result = run_script("--work", str(work), "--train-objects", "2", "--render-device", "cpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: {work / 'train'} holds 1 rendered objects, 2 are asked for" in result.stderr
    assert (work / "train" / "mine" / "object.json").read_text() == "{}"


def test_phases_run_alone_or_say_which_phase_must_come_first(tmp_path):
    work = tmp_path / "work"
    result = run_script("--work", str(work), "--only", "data", *TINY)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert len(list((work / "train").iterdir())) == 2 and not (work / "runs").exists()

    result = run_script("--work", str(work), "--only", "stage1", *TINY)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--only stage1 needs the autoencoder phase finished" in result.stderr and not (work / "runs").exists()

    (work / "autoencoder.done.json").write_text(json.dumps({"phase": "autoencoder", "scale_factor": 0.3591}))
    result = run_script("--work", str(work), "--only", "stage2-finetune", *TINY)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--only stage2-finetune fine-tunes the stage2 phase's model, which is not finished" in result.stderr
    assert not (work / "runs").exists()
