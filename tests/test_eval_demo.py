"""The held-out evaluation (scripts/eval_demo.py): metric helpers against their formulas, the copied-input
baseline against a hand computation on a rendered object, and the script end to end on two 64 px objects."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, load_script, small_demo_configs
from omegaconf import OmegaConf
from PIL import Image

from sgm.common.errors import USER_ERRORS, UsageError
from sgm.config import load_config
from sgm.evaluation.demo_eval import METHODS, untrained_config
from sgm.evaluation.held_out import HeldOutDataError, scan_held_out
from sgm.evaluation.orbit_metrics import (
    PSNR_CAP_DB,
    bicubic_upsample,
    copied_input,
    mean_std,
    orbit_summary,
    score_orbit,
    silhouette_iou,
    view_scores,
)
from sgm.pipelines.hi3d import Hi3DPipeline

SIZE = 64


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("held_out")
    assert load_script("render_synthetic_orbits").main(["--out", str(out), "--num-objects", "2", "--resolution", str(SIZE),
                                                    "--device", "cpu", "--seed", "7"]) == 0
    return out


def square(size: int, top: int, left: int, side: int, colour=(200, 40, 40)) -> np.ndarray:
    """A white uint8 image (size, size, 3) with a filled square."""
    image = np.full((size, size, 3), 255, dtype=np.uint8)
    image[top:top + side, left:left + side] = colour
    return image


def test_identical_views_score_perfectly_with_a_capped_psnr():
    views = np.stack([square(16, 2, 3, 6), square(16, 5, 5, 4, (10, 200, 90))])
    scores = view_scores(views, views.copy())
    np.testing.assert_allclose(scores["psnr"], [PSNR_CAP_DB] * 2)
    np.testing.assert_allclose(scores["ssim"], [1.0, 1.0], atol=1e-6)
    np.testing.assert_array_equal(scores["iou"], [1.0, 1.0])


def test_a_shifted_silhouette_and_psnr_match_the_hand_computation():
    pred, target = square(16, 4, 4, 4), square(16, 4, 5, 4)  # shifted one pixel right
    scores = view_scores(pred[None], target[None])
    assert scores["iou"][0] == pytest.approx(12 / 20)  # overlap 4 x 3, union 4 x 5
    # 8 pixels differ (the columns entering and leaving), each in all 3 channels by (255-200, 255-40, 255-40).
    mse = 8 * ((55 / 255) ** 2 + 2 * (215 / 255) ** 2) / (16 * 16 * 3)
    assert scores["psnr"][0] == pytest.approx(-10 * np.log10(mse))
    assert scores["ssim"][0] < 1.0


def test_empty_silhouettes_agree_and_light_pixels_are_background():
    white = np.full((2, 16, 16, 3), 255, dtype=np.uint8)
    light = white.copy()
    light[:, 2:4, 2:4] = 221  # above the white threshold on every channel: still background
    assert silhouette_iou(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4), bool))[0] == 1.0
    np.testing.assert_array_equal(view_scores(light, white)["iou"], [1.0, 1.0])
    light[0, 2, 2] = (255, 255, 220)  # one channel at the threshold: foreground
    assert view_scores(light, white)["iou"][0] == 0.0


def test_orbit_means_skip_the_input_frame_and_keep_every_frame_per_frame():
    scores = {"psnr": np.array([PSNR_CAP_DB, 10.0, 20.0]), "iou": np.array([1.0, 0.25, 0.75])}
    summary = orbit_summary(scores)
    assert summary["psnr"] == pytest.approx(15.0) and summary["iou"] == pytest.approx(0.5)
    assert summary["per_frame"]["psnr"] == [PSNR_CAP_DB, 10.0, 20.0]


def test_mean_std_and_bicubic_upsampling():
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 2}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}
    flat = np.full((3, 8, 8, 3), 77, dtype=np.uint8)
    up = bicubic_upsample(flat, 16)
    assert up.shape == (3, 16, 16, 3) and (up == 77).all()


def hand_ring(folder: Path, ring: int, start: int) -> np.ndarray:
    """The ring's views on white by hand: file 16 ring + (start + k) mod 16, c a + 255 (1 - a), truncated."""
    views = []
    for k in range(16):
        rgba = np.asarray(Image.open(folder / f"{16 * ring + (start + k) % 16:03d}.png").convert("RGBA"), np.float64)
        alpha = rgba[..., 3:] / 255
        views.append(np.floor(rgba[..., :3] * alpha + 255 * (1 - alpha) + 1e-9))
    return np.stack(views)


def test_the_copied_input_baseline_matches_a_hand_computation(held_out: Path):
    objects, found = scan_held_out(held_out)
    obj = objects[0]
    assert found == 2
    ring, start = 2, 3
    assert obj.ring_elevation(ring) == 10.0
    views = obj.views(ring, start, SIZE)
    hand = hand_ring(obj.folder, ring, start)
    assert np.abs(views.astype(np.float64) - hand).max() <= 1  # float32 vs float64 rounding at most
    result = score_orbit(copied_input(views[0], 16), views)
    copied = np.repeat(hand[:1], 16, axis=0)
    mse = ((copied - hand) ** 2).reshape(16, -1).mean(axis=1) / 255 ** 2
    masks = (hand <= 220).any(axis=-1)
    iou = [(masks[0] & m).sum() / (masks[0] | m).sum() for m in masks]
    assert result["psnr"] == pytest.approx(np.mean(-10 * np.log10(mse[1:])), abs=0.05)
    assert result["iou"] == pytest.approx(np.mean(iou[1:]), abs=0.01)
    assert result["per_frame"]["psnr"][0] == PSNR_CAP_DB and result["per_frame"]["ssim"][0] == pytest.approx(1.0)
    assert 0.0 < result["iou"] < 1.0 and result["psnr"] < 40


def test_held_out_folder_errors_name_the_problem(held_out: Path, tmp_path: Path):
    with pytest.raises(HeldOutDataError, match="not found"):
        scan_held_out(tmp_path / "missing")
    with pytest.raises(HeldOutDataError, match="holds only 2"):
        scan_held_out(held_out, 3)
    with pytest.raises(HeldOutDataError, match="not ring 6"):
        scan_held_out(held_out, 1)[0][0].views(6, 0, SIZE)


def test_the_untrained_baseline_drops_every_trained_weight(tmp_path: Path):
    path, same = untrained_config(ROOT / "configs" / "demo-v01.yaml", tmp_path / "a")
    assert not same and "checkpoint: null" in path.read_text()  # the demo config names its trained weights
    untrained = tmp_path / "untrained.yaml"
    OmegaConf.save(load_config(ROOT / "configs" / "demo-v01.yaml", ["checkpoint=null"]), untrained)
    path, same = untrained_config(untrained, tmp_path / "b")
    assert same  # a config without weights is its own untrained baseline


@pytest.mark.slow
def test_the_script_scores_two_objects_end_to_end(held_out: Path, tmp_path: Path, capsys):
    config1, config2 = small_demo_configs(tmp_path, 64, 96)  # the demo networks at 64 / 96 px: sizes from the configs
    output = tmp_path / "eval.json"
    results = load_script("eval_demo").main([
        "--data", str(held_out), "--configs", str(config1), str(config2), "--steps", "2", "--device", "cpu",
        "--mesh-objects", "1", "--mesh-iterations", "20", "--gt-mesh-resolution", "48", "--iou-resolution", "32",
        "--num-points", "2000", "--output", str(output)])
    assert json.loads(output.read_text()) == json.loads(json.dumps(results))
    printed = capsys.readouterr().out
    assert str(held_out.resolve()) in printed and "2 objects" in printed
    assert "input copied to every frame" in printed and "bicubic upsampling" in printed and "±" in printed
    assert results["complete"] and results["sizes"] == {"stage1": 64, "stage2": 96}
    assert results["settings"]["mesh"]["resolution"] == 64  # the CPU preset's view size, under the stage-2 size
    assert results["data"] == {"folder": str(held_out.resolve()), "objects_found": 2, "objects_evaluated": 2}
    # The demo configs name their trained weights: the untrained baseline is built beside them.
    assert results["models"]["untrained"]["same_as_model"] is False
    weights = ROOT / "demo" / "models" / "stage1.safetensors"
    assert results["models"]["model"]["stage1"] == {"config": str(config1), "checkpoint": "demo/models/stage1.safetensors",
                                                    "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    for section, method in METHODS:
        assert method in results["means"][section], (section, method)
    first, second = results["objects"]
    assert first["ring"] in range(6) and first["input_file"] == f"{16 * first['ring']:03d}.png"
    frames = first["stage1"]["model"]["per_frame"]
    assert len(frames["psnr"]) == 16 and first["stage1"]["model"]["psnr"] == pytest.approx(np.mean(frames["psnr"][1:]))
    assert first["stage1"]["wrong_elevation"]["elevation_deg"] == first["elevation_deg"] + 20
    assert first["stage1"]["copied_input"]["per_frame"]["psnr"][0] == PSNR_CAP_DB
    assert "mesh" in first and "mesh" not in second
    truth = first["mesh"]["ground_truth"]
    assert "error" not in truth and truth["chamfer"] < 0.2 and truth["volume_iou"] > 0.2
    assert results["means"]["stage1"]["copied_input"]["psnr"]["n"] == 2
    assert results["means"]["mesh"]["ground_truth"]["chamfer"]["n"] == 1


def test_the_untrained_baseline_is_the_same_random_model_on_every_build(tmp_path: Path):
    trained = tmp_path / "trained.yaml"
    OmegaConf.save(load_config(ROOT / "configs" / "demo-v01.yaml", ["checkpoint=ckpts/demo/stage1.safetensors"]),
                   trained)
    path, _ = untrained_config(trained, tmp_path)
    first, second = (Hi3DPipeline.from_configs(path, device="cpu").model("orbit").state_dict() for _ in range(2))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_bad_options_exit_with_code_2_and_no_traceback(held_out: Path, tmp_path: Path):
    output = tmp_path / "exists.json"
    output.write_text("{}")
    argv = [sys.executable, str(ROOT / "scripts" / "eval_demo.py"), "--data", str(held_out), "--output", str(output)]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT)},
                          timeout=300)
    assert done.returncode == 2, done.stderr
    assert "exists; pass --overwrite" in done.stderr and "Traceback" not in done.stderr
    assert output.read_text() == "{}"


@pytest.mark.parametrize("extra, error, message", [
    (["--ring", "9"], HeldOutDataError, "not ring 9"),
    (["--ring", "top"], UsageError, "--ring takes ring indices"),
    (["--num-objects", "5"], HeldOutDataError, "holds only 2"),
    (["--steps", "0"], UsageError, "--steps must be at least 1"),
])
def test_bad_options_are_named_before_any_model_is_built(held_out: Path, tmp_path: Path, extra, error, message):
    output = tmp_path / "x.json"
    with pytest.raises(error, match=message):
        load_script("eval_demo").main(["--data", str(held_out), "--output", str(output), *extra])
    assert not output.exists()
    assert issubclass(error, USER_ERRORS)
