"""run_hi3d.py on a folder or a glob: one output folder per image, one model load, a bad image reported
while the others still run (tiny demo configs, CPU)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, small_demo_configs

from sgm.common.errors import UsageError
from sgm.evaluation.demo_eval import untrained_config
from sgm.pipelines.batch import batch_inputs, output_folders


def test_folders_and_globs_name_their_images_in_order(tmp_path):
    for name in ("b.png", "a.jpg", "a.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert batch_inputs(tmp_path) == [tmp_path / "a.jpg", tmp_path / "a.png", tmp_path / "b.png"]
    assert batch_inputs(str(tmp_path / "a.*")) == [tmp_path / "a.jpg", tmp_path / "a.png"]
    assert batch_inputs(tmp_path / "b.png") is None  # one file: the single-image run
    assert output_folders(batch_inputs(tmp_path), Path("out")) == [Path("out/a_jpg"), Path("out/a_png"), Path("out/b")]
    with pytest.raises(UsageError, match="no image files"):
        batch_inputs(str(tmp_path / "*.gif"))
    with pytest.raises(UsageError, match="no image files"):
        batch_inputs(tmp_path / "sub")


def test_a_batch_runs_every_image_once_loading_the_models_once_and_reports_the_bad_one(tmp_path):
    # without weights: each build logs one UNTRAINED warning
    configs = [untrained_config(trained, tmp_path)[0] for trained in small_demo_configs(tmp_path)]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(ROOT / "demo" / "object_a_elev10.png", inputs / "a.png")
    shutil.copy(ROOT / "demo" / "object_c_elev0.png", inputs / "c.png")
    (inputs / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    command = [sys.executable, "scripts/run_hi3d.py", "--stage1_config", str(configs[0]), "--stage2_config",
               str(configs[1]), "--image_path", str(inputs), "--output_dir", str(out), "--num_steps", "1",
               "--device", "cpu"]
    done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, PYTHONWARNINGS="ignore"), capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"error: {inputs / 'broken.png'}:" in done.stderr and "1 of 3 images failed (broken.png)" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a", "c"]  # nothing for the bad image
    for name in ("a", "c"):
        assert (out / name / "second_step_video" / "second.mp4").is_file()
    assert done.stderr.count("UNTRAINED random weights") == 2  # one model per stage, built once for the batch


@pytest.mark.parametrize("script", ["scripts/run_hi3d.py", "pipeline_i2v_eval_v01.py", "pipeline_i2v_eval_v02.py",
                                    "scripts/reconstruct_3d.py", "app.py"])
def test_help_examples_name_demo_files_that_exist(script):
    import glob
    import re

    text = (ROOT / script).read_text()
    named = re.findall(r"demo/[\w.*?-]+", text)
    for name in named:
        assert glob.glob(str(ROOT / name)), f"{script} names {name}, which does not exist"


def test_two_devices_spread_a_batch_over_two_processes_with_the_images_of_one(tmp_path):
    """--devices 2 on a folder: one process per device (here two CPU processes), every image once, in
    its own folder, with the pixels a one-process run gives; a bad image fails its shard only."""
    configs = [untrained_config(trained, tmp_path)[0] for trained in small_demo_configs(tmp_path)]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(ROOT / "demo" / "object_a_elev10.png", inputs / "a.png")
    (inputs / "b.png").write_text("not an image")
    shutil.copy(ROOT / "demo" / "object_c_elev0.png", inputs / "c.png")
    runs = {}
    for devices in ("1", "2"):
        out = tmp_path / f"out{devices}"
        command = [sys.executable, "scripts/run_hi3d.py", "--stage1_config", str(configs[0]), "--stage2_config",
                   str(configs[1]), "--image_path", str(inputs), "--output_dir", str(out), "--num_steps", "1",
                   "--device", "cpu", "--devices", devices]
        runs[devices] = subprocess.run(command, cwd=ROOT, env=dict(os.environ, PYTHONWARNINGS="ignore"),
                                       capture_output=True, text=True, timeout=900)
    spread = runs["2"]
    assert spread.returncode == 2 and "Traceback" not in spread.stderr, spread.stderr
    # a and c went to shard 0 (images 0 and 2), the bad b to shard 1, which alone failed
    assert "1 of 2 images failed (a.png" not in spread.stderr and "1 of 1 images failed (b.png)" in spread.stderr
    assert "shards 1/2 on cpu (exit code 2)" in spread.stderr
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["a", "c"]
    for name in ("a", "c"):
        views = sorted((tmp_path / "out1" / name / "second_step_video" / "views").iterdir())
        assert views and all(view.read_bytes() == (tmp_path / "out2" / view.relative_to(tmp_path / "out1")).read_bytes()
                             for view in views)
