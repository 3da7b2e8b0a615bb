"""Checkpoints by hub reference (``hf://OWNER/NAME/FILE``), read from a fake hub cache built here in
the layout ``huggingface_hub`` writes (no network: ``HF_HUB_OFFLINE=1`` throughout)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from safetensors.torch import save_file

from sgm.checkpoint import read_state_dict
from sgm.common.errors import MissingCheckpointError
from sgm.config import build_model, load_config
from sgm.hub import HubFileError, HubReference, download
from sgm.pipelines.hi3d import Hi3DPipeline

COMMIT = "4c1b9f0e2d3a5b6c7d8e9f0a1b2c3d4e5f6a7b8c"
REPO = "hi3d-test/tiny-models"
MARKER = 0.123  # one weight of the stored checkpoint is set to this: random initialisation never gives it


def fake_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """Write ``files`` into ``cache`` as huggingface_hub stores a downloaded repository: content-addressed
    blobs, a snapshot folder of links for one commit, and ``refs/main`` naming that commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / COMMIT / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return cache


@pytest.fixture(scope="module")
def stage1_weights(configs, tmp_path_factory) -> tuple[bytes, str]:
    """A stage-1 demo checkpoint as .safetensors bytes, one tensor set to MARKER; and that tensor's key."""
    model = build_model(load_config(configs[0]))
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 4)
    state[key].fill_(MARKER)
    path = tmp_path_factory.mktemp("weights") / "orbit.safetensors"
    save_file(state, str(path))
    return path.read_bytes(), key


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, stage1_weights) -> Path:
    """HF_HUB_OFFLINE=1 and the hub cache at a fresh folder holding REPO/orbit.safetensors."""
    import huggingface_hub.constants as constants

    cache = fake_hub_cache(tmp_path / "hub", REPO, {"orbit.safetensors": stage1_weights[0]})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_references_parse_with_revision_and_nested_path():
    ref = HubReference.parse("hf://hbyang/Hi3D@v1/sub/second_stage.pt")
    assert (ref.repo_id, ref.filename, ref.revision) == ("hbyang/Hi3D", "sub/second_stage.pt", "v1")
    assert str(ref) == "hf://hbyang/Hi3D@v1/sub/second_stage.pt"
    assert HubReference.parse("hf://hbyang/Hi3D", "second_stage.pt").filename == "second_stage.pt"
    with pytest.raises(ValueError, match="names no file"):
        HubReference.parse("hf://hbyang/Hi3D")


def test_a_stage_model_loads_by_repo_id_from_the_offline_cache(configs, hub_cache, stage1_weights):
    reference = f"hf://{REPO}/orbit.safetensors"
    pipe = Hi3DPipeline.from_configs(configs[0], None, stage1_checkpoint=reference, device="cpu")
    assert not pipe.is_untrained("orbit")
    model = pipe.model("orbit")
    key = stage1_weights[1]
    assert torch.all(model.state_dict()[key] == MARKER)
    assert pipe._weights["orbit"]["checkpoint"] == reference  # run.json names the file by its reference
    assert download(reference) == hub_cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT / "orbit.safetensors"


def test_a_training_config_ckpt_path_takes_a_hub_reference(configs, hub_cache, stage1_weights):
    model = build_model(load_config(configs[0]), ckpt_path=f"hf://{REPO}@main/orbit.safetensors")
    assert torch.all(model.state_dict()[stage1_weights[1]] == MARKER)
    assert set(read_state_dict(f"hf://{REPO}/orbit.safetensors")) == set(model.state_dict())


def test_from_pretrained_on_the_hub_names_the_stage1_file_that_is_not_there(hub_cache, tmp_path):
    fake_hub_cache(hub_cache, "hbyang/Hi3D", {"second_stage.pt": b"weights"})
    with pytest.raises(MissingCheckpointError) as info:
        Hi3DPipeline.from_pretrained("hf://hbyang/Hi3D", device="cpu")
    message = str(info.value)
    assert "hf://hbyang/Hi3D/first_stage.pt" in message and "second_stage.pt" not in message
    assert "drive.google.com/file/d/1z506Fdst31rCOSq5c3COydN-j4KxRdif" in message  # where to get it
    assert "ckpts/first_stage.pt" in message and "HF_HUB_OFFLINE" in message  # where to put it, and why not fetched
    local = tmp_path / "first_stage.pt"
    local.write_bytes(b"")
    pipe = Hi3DPipeline.from_pretrained("hf://hbyang/Hi3D", stage1_checkpoint=local, device="cpu")
    assert pipe.specs["orbit"].checkpoint == local
    refine = Path(pipe.specs["refine"].checkpoint)
    assert refine.name == "second_stage.pt" and COMMIT in refine.parts and refine.read_bytes() == b"weights"


def test_a_file_missing_from_the_cache_offline_is_a_named_error(hub_cache):
    with pytest.raises(HubFileError) as info:
        download(f"hf://{REPO}/second_stage.pt")
    assert "HF_HUB_OFFLINE=1" in str(info.value) and "hf://hbyang/Hi3D/second_stage.pt" in str(info.value)


def test_cli_with_a_hub_file_it_cannot_get_exits_2_naming_where_to_get_it(configs, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-cache"), PYTHONWARNINGS="ignore")
    command = [sys.executable, "pipeline_i2v_eval_v01.py", "--denoise_config", str(configs[0]), "--denoise_checkpoint",
               "hf://hbyang/Hi3D/first_stage.pt", "--image_path", "demo/object_a_elev10.png", "--output_dir",
               str(tmp_path / "out"), "--device", "cpu"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "ckpts/first_stage.pt" in done.stderr
    assert "drive.google.com" in done.stderr
    assert not (tmp_path / "out").exists()


def test_ckpts_readme_lists_every_known_file_with_its_source():
    from sgm.hub import KNOWN_FILES

    text = (ROOT / "ckpts" / "README.md").read_text()
    for name, known in KNOWN_FILES.items():
        assert name in text
        assert (known.hub or known.link) in text, name


def test_the_web_app_serves_the_released_models_of_a_hub_repository(hub_cache):
    from sgm.app.models import choose_models

    fake_hub_cache(hub_cache, "hbyang/Hi3D", {"second_stage.pt": b"weights"})
    choice = choose_models("hf://hbyang/Hi3D", ckpt_dir_given=True, device="cpu")
    assert choice.mode == "pretrained" and "hf://hbyang/Hi3D" in choice.notice
    with pytest.raises(MissingCheckpointError, match="first_stage.pt"):  # reported to the first job, in the page
        choice.factory()
