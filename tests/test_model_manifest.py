"""The stage models built from our configs have exactly the official checkpoints' keys and shapes."""
from __future__ import annotations

import pytest
import torch

from conftest import ROOT
from sgm.config import build_model, load_config
from sgm.models.hi3d import Stage1VideoLDM, Stage2VideoLDM


@pytest.mark.parametrize(
    "stage, config, cls",
    [("stage1", "inference-v01.yaml", Stage1VideoLDM), ("stage2", "inference-v02.yaml", Stage2VideoLDM)],
)
def test_inference_config_matches_manifest(manifest, stage, config, cls):
    with torch.device("meta"):
        model = build_model(load_config(ROOT / "configs" / config), random_pretrained_encoders=True)
    assert isinstance(model, cls)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    expected = manifest[stage]
    missing, extra = sorted(set(expected) - set(ours)), sorted(set(ours) - set(expected))
    assert not missing and not extra, f"missing {missing[:10]} ({len(missing)}), unexpected {extra[:10]} ({len(extra)})"
    wrong = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert not wrong, f"shape mismatches: {dict(list(wrong.items())[:10])}"


def test_missing_pretrained_file_is_named_with_its_config_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ckpts/ here
    with pytest.raises(FileNotFoundError) as info, torch.device("meta"):
        build_model(load_config(ROOT / "configs" / "inference-v01.yaml"))
    message = str(info.value)
    assert "ckpts/open_clip_pytorch_model.bin" in message
    assert "version" in message and "README" in message
