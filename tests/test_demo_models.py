"""The shipped demo models (configs/demo-v0{1,2}.yaml, weights in demo/models/, trained by
scripts/train_demo_models.py): they fit the size budget, the configs name them, and their orbits
are objects on white that follow the input image (the untrained models gave noise, the same for
every input)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image
from safetensors import safe_open

from sgm.common.images import foreground_masks
from sgm.config import load_config
from sgm.pipelines.hi3d import DEMO_CONFIGS, Hi3DPipeline
from sgm.pipelines.loading import resolve_checkpoint

MAX_TOTAL_MB = 40
STEPS = 10
INPUTS = (("object_a_elev10.png", 10.0), ("object_b_elev20.png", 20.0))


def test_weights_are_named_by_the_configs_small_and_carry_the_latent_scale():
    total = 0
    for config_path in DEMO_CONFIGS:
        config = load_config(config_path)
        weights = ROOT / config.checkpoint
        assert weights.parent == ROOT / "demo" / "models" and weights.suffix == ".safetensors"
        total += weights.stat().st_size
        with safe_open(str(weights), "pt") as stream:
            metadata = stream.metadata()
        assert int(metadata["steps"]) > 0
        assert float(metadata["scale_factor"]) == pytest.approx(float(config.model.params.scale_factor), rel=1e-3)
    assert total <= MAX_TOTAL_MB * 2**20


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.fixture(scope="module")
def orbits():
    """{input name: (stage-1 views uint8 (16, 64, 64, 3), input silhouette bool (64, 64))}, same seed."""
    pipe = Hi3DPipeline.from_configs(*DEMO_CONFIGS, device="cpu", use_rembg=False, compile="off")
    assert not pipe.is_untrained("orbit") and not pipe.is_untrained("refine")
    found = {}
    for name, elevation in INPUTS:
        image = Image.open(ROOT / "demo" / name)
        views = pipe(image, None, elevation_deg=elevation, seed=0, num_steps=STEPS, stages=("orbit",),
                     output_type="np").orbit.pixels
        size = views.shape[1]
        white = pipe.load_input(image).white.convert("RGB").resize((size, size), Image.BICUBIC)
        found[name] = (views, foreground_masks(np.asarray(white)[None])[0])
    return found


def test_two_inputs_give_different_orbits(orbits):
    (a, _), (b, _) = orbits.values()
    assert np.abs(a.astype(np.float64) - b).mean() > 10.0  # of 255, over every pixel of the 16 views


def test_every_view_is_an_object_on_white(orbits):
    for name, (views, _) in orbits.items():
        fractions = foreground_masks(views).mean(axis=(1, 2))
        assert fractions.min() > 0.03 and fractions.max() < 0.8, (name, fractions.round(3))


def test_the_first_view_has_its_own_input_silhouette(orbits):
    names = list(orbits)
    for own, other in (names, names[::-1]):
        first = foreground_masks(orbits[own][0][:1])[0]
        own_iou, other_iou = iou(first, orbits[own][1]), iou(first, orbits[other][1])
        assert own_iou > 0.5 and own_iou > other_iou + 0.1, (own, own_iou, other_iou)


def test_the_demo_weights_are_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the configs name demo/models/... relative to the checkout
    pipe = Hi3DPipeline.from_configs(*DEMO_CONFIGS, device="cpu")
    assert not pipe.is_untrained("orbit") and not pipe.is_untrained("refine")
    for stage, name in (("orbit", "stage1"), ("refine", "stage2")):
        assert resolve_checkpoint(pipe.specs[stage]) == ROOT / "demo" / "models" / f"{name}.safetensors"
    pipe.model("orbit")  # loads strictly
