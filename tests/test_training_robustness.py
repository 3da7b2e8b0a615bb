"""Training runs that are killed, stopped, resumed or misconfigured (issue 17, training part).

- ``last.ckpt`` is saved at every epoch end, every ``every_minutes`` of wall time (10 in every
  shipped config) and on SIGTERM / SIGINT, and replaced atomically: a run killed at any moment
  resumes from it.
- ``--resume`` keeps the run's metrics history; two runs started in the same second get two folders.
- Wrong values and typo'd keys are named errors (exit code 2, one line, no traceback) before the
  model is built; so is a dataset whose every object folder is unusable.

Data: two procedural objects at 32x32 (the ``orbit_folder`` fixture of ``test_training``): an
epoch is 2 steps of one process. Most runs are in-process (``train_ddp_spawn.main``, through
:func:`sgm.cli.run_main` as the script runs it); a SIGKILL, a signal from another process to a DDP
rank, and one exit code are checked on the real script in a subprocess.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

import train_ddp_spawn
from conftest import require
from sgm.cli import run_main
from sgm.config import load_config
from sgm.training import TrainOptions, last_checkpoint_callback, plan_run, run
from sgm.util import instantiate_from_config
from test_training import TINY_V01, TINY_V02, data_overrides, orbit_folder  # noqa: F401 (fixture)
from test_training_faults import process_alive, script_env

ROOT = Path(__file__).resolve().parents[1]
TRAIN_V01 = ROOT / "configs" / "train-v01.yaml"
TRAIN_V02 = ROOT / "configs" / "train-v02.yaml"
# A whole subprocess run: start-up (~15 s for 2 ranks on 2 cores) plus some steps, with margin
# for a loaded machine.
COMMAND_LIMIT_S = 240.0
# Wall-time interval of the periodic-save test: 0.12 s, less than a step of the tiny model (so
# every step is saved, odd ones by the clock alone, and a kill likely comes during a save).
SHORT_INTERVAL_MIN = 0.002
QUIET = ["lightning.callbacks.image_logger.params.disabled=true"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The in-process runs on one thread: on 2 shared cores, two threads that wait for each other make a
    tiny step several times slower (the subprocess runs get OMP_NUM_THREADS=1 from script_env)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class StepProbe(pl.Callback):
    """Test-only: each rank writes its pid (``pid-rank<r>``) when training starts and its global step
    (``step-rank<r>``) after every batch, into ``out_dir``."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir = Path(out_dir)

    def on_train_start(self, trainer, pl_module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"pid-rank{trainer.global_rank}").write_text(str(os.getpid()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        partial = self.out_dir / f".step-rank{trainer.global_rank}"
        partial.write_text(str(trainer.global_step))
        os.replace(partial, self.out_dir / f"step-rank{trainer.global_rank}")


class EpochStartProbe(pl.Callback):
    """Test-only: at the start of every epoch after the first, record the global step and the step
    held by ``checkpoints/last.ckpt`` (None when there is none) into ``out_dir/epochs.json``."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.out_dir, self.records = Path(out_dir), []

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            return
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        saved = saved_step(last) if last.is_file() else None
        self.records.append({"epoch": trainer.current_epoch, "step": trainer.global_step, "saved": saved})
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "epochs.json").write_text(json.dumps(self.records))


class SignalAtStep(pl.Callback):
    """Test-only: once global step ``step`` is done, send signal ``signum`` to the DataLoader workers
    and then to this process, as a terminal's Ctrl-C or a scheduler signals every process of a run."""

    def __init__(self, signum: int, step: int):
        super().__init__()
        self.signum, self.step = signum, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            for worker in multiprocessing.active_children():
                os.kill(worker.pid, self.signum)
            os.kill(os.getpid(), self.signum)


def callback(name: str, target: str, **params) -> list[str]:
    """Overrides adding the test callback ``target`` (a class of this module) as ``name``."""
    return [f"lightning.callbacks.{name}.target=test_training_robustness.{target}",
            *(f"lightning.callbacks.{name}.params.{key}={value}" for key, value in params.items())]


def saved_step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]


def options(orbit_folder: Path, logdir: Path, *overrides: str, **kwargs) -> TrainOptions:
    """An in-process run of the tiny stage-1 config (one CPU process)."""
    return TrainOptions(base=[str(TINY_V01)], logdir=str(logdir), train=True, no_test=True,
                        overrides=[*data_overrides(orbit_folder), *QUIET, *overrides], **kwargs)


def script_args(orbit_folder: Path, logdir: Path, *extra: str) -> list[str]:
    """Command line of ``train_ddp_spawn.py`` for the tiny stage-1 config."""
    return ["--base", str(TINY_V01), "--train", "True", "--no-test", "True", "--logdir", str(logdir),
            *data_overrides(orbit_folder), *QUIET, *extra]


@pytest.fixture()
def script_main(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """``script_main(argv)``: run ``train_ddp_spawn.py`` with ``argv`` in this process as the script
    runs (its main through :func:`sgm.cli.run_main`); returns (exit code, stderr)."""
    def script_main(argv: list[str]) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["train_ddp_spawn.py", *argv])
        capsys.readouterr()
        try:
            run_main(train_ddp_spawn.main)
            code = 0
        except SystemExit as exited:
            code = exited.code
        return code, capsys.readouterr().err

    return script_main


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


# Starts a command with SIGINT handled as usual, also where pytest runs as a background job (which
# ignores SIGINT, and its children would inherit that).
WITH_CTRL_C = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
               "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


def start_script(args: list[str], env: dict) -> subprocess.Popen:
    """``train_ddp_spawn.py`` in its own session (so a hanging run can be killed as a whole)."""
    return subprocess.Popen([sys.executable, "-c", WITH_CTRL_C, str(ROOT / "train_ddp_spawn.py"), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, limit_s: float = COMMAND_LIMIT_S) -> tuple[str, str]:
    """Wait for the script; on timeout kill its whole session and fail with its output."""
    try:
        stdout, stderr = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"train_ddp_spawn.py still ran after {limit_s:.0f} s:\n{stdout[-2000:]}\n{stderr[-5000:]}")
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # never leak a rank into later tests
    except ProcessLookupError:
        pass
    return stdout, stderr


def wait_until(condition, proc: subprocess.Popen, what: str, limit_s: float = COMMAND_LIMIT_S):
    """Poll ``condition()`` until it returns a true value; fail (killing the script) on timeout or exit."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            stdout, stderr = proc.communicate()
            pytest.fail(f"the script ended (code {proc.returncode}) before {what}:\n{stderr[-5000:]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    stdout, stderr = proc.communicate()
    pytest.fail(f"no {what} within {limit_s:.0f} s:\n{stderr[-5000:]}")


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def only_run_folder(logs: Path) -> Path:
    (logdir,) = logs.iterdir()
    return logdir


# ---------------------------------------------------------------------------------------
# last.ckpt: when it is saved


@pytest.mark.parametrize("config_path", [TRAIN_V01, TRAIN_V02, TINY_V01, TINY_V02], ids=lambda p: p.stem)
def test_every_shipped_training_config_saves_last_checkpoint_every_ten_minutes(config_path: Path, tmp_path: Path):
    lightning = load_config(config_path).lightning
    callback = last_checkpoint_callback(tmp_path, lightning.modelcheckpoint.params)
    assert callback.every_minutes == 10.0 and callback.path == tmp_path / "last.ckpt"
    assert last_checkpoint_callback(tmp_path, None).every_minutes == 10.0  # the default, too


def test_last_checkpoint_is_saved_at_every_epoch_end(orbit_folder: Path, tmp_path: Path):
    # 3 steps end epoch 0 (2 steps) and stop in epoch 1
    out = tmp_path / "out"
    run(options(orbit_folder, tmp_path / "logs", *callback("probe", "EpochStartProbe", out_dir=out), max_steps=3))
    assert json.loads((out / "epochs.json").read_text()) == [{"epoch": 1, "step": 2, "saved": 2}]
    logdir = only_run_folder(tmp_path / "logs")
    assert saved_step(logdir / "checkpoints" / "last.ckpt") == 3  # and when training ends
    assert sorted(p.name for p in (logdir / "checkpoints").iterdir()) == ["last.ckpt"]  # no temporary left


def test_save_last_false_writes_no_last_checkpoint(orbit_folder: Path, tmp_path: Path):
    """What the benchmarks ask for (``lightning.modelcheckpoint.params.save_last=false``): no checkpoint I/O."""
    run(options(orbit_folder, tmp_path / "logs", "lightning.modelcheckpoint.params.save_last=false", max_steps=2))
    assert not list((only_run_folder(tmp_path / "logs") / "checkpoints").iterdir())


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_from_its_periodic_checkpoint(orbit_folder: Path, tmp_path: Path):
    logs, out = tmp_path / "logs", tmp_path / "out"
    proc = start_script(script_args(orbit_folder, logs, "--max_steps", "1000",
                                    f"lightning.modelcheckpoint.params.every_minutes={SHORT_INTERVAL_MIN}"),
                        script_env())

    def periodic_save() -> int | None:
        # epoch ends come at even steps: an odd step was saved by the clock
        checkpoints = list(logs.glob("*/checkpoints/last.ckpt"))
        step = saved_step(checkpoints[0]) if checkpoints else None
        return step if step is not None and step % 2 == 1 else None

    killed_at = wait_until(periodic_save, proc, "a periodic save of last.ckpt at an odd step")
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    assert proc.returncode == -signal.SIGKILL
    logdir = only_run_folder(logs)
    saved = saved_step(logdir / "checkpoints" / "last.ckpt")  # complete, whatever the kill interrupted
    assert saved >= killed_at

    run(TrainOptions(resume=str(logdir), train=True, no_test=True, max_steps=saved + 2,
                     overrides=["lightning.callbacks.checksum.target=test_training.ParameterChecksum",
                                f"lightning.callbacks.checksum.params.out_dir={out}",
                                "lightning.callbacks.checksum.params.tag=resumed"]))
    record = json.loads((out / "resumed-rank0.json").read_text())
    assert (record["start"], record["end"]) == (saved, saved + 2)
    assert saved_step(logdir / "checkpoints" / "last.ckpt") == saved + 2
    assert sorted(p.name for p in (logdir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert list(logs.iterdir()) == [logdir]


# ---------------------------------------------------------------------------------------
# SIGTERM and SIGINT


@pytest.fixture()
def ctrl_c_enabled():
    """Python's own SIGINT handler, also when pytest runs as a background job (which ignores SIGINT)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_saves_last_checkpoint_and_exits_128_plus_its_number(
        orbit_folder: Path, tmp_path: Path, script_main, ctrl_c_enabled, signum: int):
    """The signal reaches the process and its DataLoader worker at step 3, in the middle of epoch 1."""
    logs = tmp_path / "logs"
    handlers = [signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)]
    code, stderr = script_main(script_args(orbit_folder, logs, "--max_steps", "1000", "data.params.num_workers=1",
                                           *callback("signal", "SignalAtStep", signum=int(signum), step=3)))
    logdir = only_run_folder(logs)
    assert code == 128 + signum, stderr[-5000:]
    assert (f"training stopped by {signum.name} at global step 3; {logdir / 'checkpoints' / 'last.ckpt'} holds that "
            f"step: continue with python train_ddp_spawn.py --resume {logdir} --train True") in stderr
    assert "Traceback" not in stderr
    assert saved_step(logdir / "checkpoints" / "last.ckpt") == 3
    assert sorted(p.name for p in (logdir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert [signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)] == handlers, \
        "the handlers of before training must be back"


@pytest.mark.slow
@pytest.mark.parametrize("signum, to", [(signal.SIGTERM, "rank 1"), (signal.SIGINT, "every process")],
                         ids=["SIGTERM_to_the_child_rank", "SIGINT_to_every_process"])
def test_a_stop_signal_to_a_ddp_run_saves_and_stops_every_rank(orbit_folder: Path, tmp_path: Path, signum: int,
                                                               to: str):
    """``kill <pid>`` of the child rank: only that rank gets the signal; Ctrl-C in a terminal: every
    process of the run (both ranks, their DataLoader workers). The ranks agree at the next step, save
    together and stop; the command exits 128 + the signal number and no rank is left."""
    logs, out = tmp_path / "logs", tmp_path / "out"
    proc = start_script(script_args(orbit_folder, logs, "--accelerator", "cpu", "--devices", "2",
                                    "lightning.trainer.strategy=ddp", "--max_steps", "1000", "data.params.num_workers=1",
                                    *callback("probe", "StepProbe", out_dir=out)), script_env())
    wait_until(lambda: (read_int(out / "step-rank1") or 0) >= 1, proc, "a training step of rank 1")
    pids = [read_int(out / f"pid-rank{rank}") for rank in range(2)]
    if to == "rank 1":
        os.kill(pids[1], signum)
    else:
        os.killpg(proc.pid, signum)
    stdout, stderr = finish(proc, limit_s=120.0)
    assert proc.returncode == 128 + signum, stderr[-5000:]
    match = re.search(rf"training stopped by {signum.name} at global step (\d+)", stderr)
    assert match and "Traceback" not in stderr, stderr[-5000:]
    stopped_at = int(match.group(1))
    assert [read_int(out / f"step-rank{rank}") for rank in range(2)] == [stopped_at, stopped_at]
    assert saved_step(only_run_folder(logs) / "checkpoints" / "last.ckpt") == stopped_at
    assert not [pid for pid in pids if process_alive(pid)], "a rank outlived the command"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_dataloader_workers_outlive_a_stop_signal(orbit_folder: Path, signum: int):
    """A terminal's Ctrl-C or a scheduler's SIGTERM reaches the workers too; the training process
    must still get its next batches while it finishes the step and saves."""
    data = instantiate_from_config({"target": "sgm.data.video_dataset.VideoDataset", "params": {
        "base_folder": str(orbit_folder), "width": 32, "height": 32, "batch_size": 1, "num_workers": 1}})
    batches = iter(data.train_dataloader())
    next(batches)
    (worker,) = multiprocessing.active_children()
    os.kill(worker.pid, signum)
    time.sleep(0.5)
    assert next(batches)["video"].shape == (1, 3, 16, 32, 32)


# ---------------------------------------------------------------------------------------
# last.ckpt: how it is replaced


def test_a_kill_during_a_save_keeps_the_previous_last_checkpoint(tmp_path: Path):
    from sgm import atomic_checkpoint

    target = tmp_path / "last.ckpt"
    torch.save({"global_step": 3}, target)
    # killed while writing the next version: a truncated temporary file
    atomic_checkpoint.prepare(target).write_bytes(b"PK\x03\x04 truncated")
    atomic_checkpoint.recover(target)  # what --resume does first
    assert saved_step(target) == 3 and list(tmp_path.iterdir()) == [target]
    torch.save({"global_step": 4}, atomic_checkpoint.prepare(target))
    atomic_checkpoint.commit(target)
    assert saved_step(target) == 4 and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("killed", ["while_writing", "between_renames", "before_deleting_the_old"])
def test_a_kill_during_a_deepspeed_folder_save_keeps_a_complete_last_checkpoint(tmp_path: Path, killed: str):
    """``last.ckpt`` as a folder (DeepSpeed): never deleted before its successor is complete and in place."""
    from sgm import atomic_checkpoint

    target = tmp_path / "last.ckpt"

    def write(folder: Path, step: int, complete: bool = True) -> None:
        (folder / "checkpoint").mkdir(parents=True)
        (folder / "checkpoint" / "mp_rank_00_model_states.pt").write_text(str(step))
        if complete:
            (folder / "latest").write_text("checkpoint")

    def step_of(folder: Path) -> int | None:
        complete = (folder / "latest").is_file()
        return int((folder / "checkpoint" / "mp_rank_00_model_states.pt").read_text()) if complete else None

    write(target, 3)
    partial = atomic_checkpoint.prepare(target)
    write(partial, 4, complete=killed != "while_writing")
    if killed != "while_writing":  # replay commit() up to the kill
        os.replace(target, atomic_checkpoint.previous_path(target))
        if killed == "before_deleting_the_old":
            os.replace(partial, target)
    atomic_checkpoint.recover(target)
    assert step_of(target) == (3 if killed == "while_writing" else 4)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    partial = atomic_checkpoint.prepare(target)  # and the next save goes through
    write(partial, 5)
    atomic_checkpoint.commit(target)
    assert step_of(target) == 5 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# ---------------------------------------------------------------------------------------
# Resume and run folders


def resume(logdir: Path, max_steps: int) -> None:
    run(TrainOptions(resume=str(logdir), train=True, no_test=True, overrides=QUIET, max_steps=max_steps))


def test_resume_keeps_the_csv_history(orbit_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if importlib.util.find_spec("tensorboard") is not None:  # runs log to CSV only where tensorboard is missing
        monkeypatch.setattr("sgm.metrics_logs.tensorboard_installed", lambda: False)
    run(options(orbit_folder, tmp_path / "logs", max_steps=2))
    logdir = only_run_folder(tmp_path / "logs")
    metrics = logdir / "csv" / "metrics.csv"
    first = list(csv.DictReader(metrics.open()))
    resume(logdir, max_steps=4)
    rows = list(csv.DictReader(metrics.open()))
    assert rows[:len(first)] == first, "the rows logged before the resume must stay as they were"
    losses = [(int(row["step"]), row["epoch"]) for row in rows if row.get("loss")]
    assert losses == [(0, "0"), (1, "0"), (2, "1"), (3, "1")]


def test_resume_continues_the_tensorboard_log(orbit_folder: Path, tmp_path: Path):
    require(importlib.util.find_spec("tensorboard") is not None, "tensorboard (pip install -e .[tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(options(orbit_folder, tmp_path / "logs", max_steps=2))
    logdir = only_run_folder(tmp_path / "logs")
    resume(logdir, max_steps=4)
    events = EventAccumulator(str(logdir / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("loss")] == [0, 1, 2, 3]


def test_two_runs_started_in_the_same_second_get_separate_folders(orbit_folder: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    from sgm import run_folder

    monkeypatch.setattr(run_folder, "new_timestamp", lambda: "2030-01-01T00-00-00")
    for _ in range(2):
        run(options(orbit_folder, tmp_path / "logs", max_steps=1, name="same"))
    folders = sorted((tmp_path / "logs").iterdir())
    assert [f.name for f in folders] == ["2030-01-01T00-00-00.2_same", "2030-01-01T00-00-00_same"]
    for folder in folders:
        assert len(list((folder / "configs").glob("*-project.yaml"))) == 1
        assert saved_step(folder / "checkpoints" / "last.ckpt") == 1


def test_a_ddp_child_takes_its_launchers_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from sgm import run_folder
    from sgm.training import claim_run_folder

    opts = TrainOptions(base=[str(TINY_V01)], logdir=str(tmp_path), name="ddp")
    monkeypatch.setattr(run_folder, "new_timestamp", lambda: "2030-01-01T00-00-00")
    claim_run_folder(plan_run(opts)[0])  # an earlier run of the same second
    launcher = claim_run_folder(plan_run(opts)[0])
    assert launcher.logdir.name == "2030-01-01T00-00-00.2_ddp"
    # the launcher's child: it inherits the stamp, with the launcher as the owner and its parent
    monkeypatch.setenv(run_folder.RUN_TIMESTAMP_ENV, launcher.now)
    monkeypatch.setenv(run_folder.RUN_TIMESTAMP_OWNER_ENV, str(os.getppid()))
    child = claim_run_folder(plan_run(opts)[0])
    assert child.logdir == launcher.logdir and not child.claimed
    # a stale stamp (another owner: this process, never its own parent; not "1", which is the parent
    # of a process started under init, e.g. with nohup) is ignored: a new folder
    monkeypatch.setenv(run_folder.RUN_TIMESTAMP_OWNER_ENV, str(os.getpid()))
    assert claim_run_folder(plan_run(opts)[0]).logdir.name == "2030-01-01T00-00-00.3_ddp"


# ---------------------------------------------------------------------------------------
# Named errors before anything is built


@pytest.fixture()
def no_model_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """The errors must come before the (slow) model build."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the config error was found")

    monkeypatch.setattr("sgm.training.build_model", refuse)


@pytest.mark.parametrize("override, message", [
    ("lightning.trainer.max_steps=abc",
     "lightning.trainer.max_steps='abc' is a string; pytorch_lightning.trainer.trainer.Trainer expects an int"),
    ("data.params.batch_size=two",
     "data.params.batch_size='two' is a string; sgm.data.video_dataset.VideoDataset expects an int"),
    ("model.base_learning_rate=fast", "model.base_learning_rate='fast' is a string; training (the learning rate per "
                                      "sample) expects a number"),
    ("lightning.modelcheckpoint.params.every_minutes=soon",
     "lightning.modelcheckpoint.params.every_minutes='soon' is a string; sgm.callbacks.LastCheckpoint expects a number "
     "or null"),
    ("lightning.modelcheckpoint.params.every_minutes=0",
     "lightning.modelcheckpoint.params.every_minutes=0: expected a positive number of minutes"),
    ("lightning.trainer=[1]", "bad override 'lightning.trainer=[1]': expected key=value with a value that fits the "
                              "config there"),
    ("data.params.batch_sise=2", "data.params.batch_sise is not a parameter of sgm.data.video_dataset.VideoDataset; "
                                 "did you mean data.params.batch_size?"),
    ("model.params.network_config.params.model_channel=8",
     "model.params.network_config.params.model_channel is not a parameter of "
     "sgm.modules.diffusionmodules.video_model.VideoUNet; did you mean "
     "model.params.network_config.params.model_channels?"),
    ("model.base_learing_rate=1e-4", "model.base_learing_rate is not a key of the model node; did you mean "
                                     "model.base_learning_rate?"),
    ("lightning.trainer.max_step=3", "lightning.trainer.max_step is not a parameter of "
                                     "pytorch_lightning.trainer.trainer.Trainer; did you mean lightning.trainer.max_steps?"),
    ("lightning.callbacks.image_logger.params.batch_frequncy=3",
     "lightning.callbacks.image_logger.params.batch_frequncy is not a parameter of sgm.callbacks.ImageLogger; did you "
     "mean lightning.callbacks.image_logger.params.batch_frequency?"),
    ("lightning.modelcheckpoint.params.every_minute=5",
     "lightning.modelcheckpoint.params.every_minute is not a parameter of sgm.callbacks.LastCheckpoint; did you mean "
     "lightning.modelcheckpoint.params.every_minutes?"),
    ("lightnig.trainer.max_steps=3", "lightnig is not a section of a training config; did you mean lightning?"),
], ids=["max_steps=abc", "batch_size=two", "base_learning_rate=fast", "every_minutes=soon", "every_minutes=0",
        "trainer=list", "typo_data_key", "typo_nested_model_key", "typo_model_node_key", "typo_trainer_key", "typo_callback_key",
        "typo_modelcheckpoint_key", "typo_section"])
def test_a_config_mistake_is_one_named_error_line_with_exit_code_2(
        orbit_folder: Path, tmp_path: Path, script_main, no_model_build, override: str, message: str):
    code, stderr = script_main(script_args(orbit_folder, tmp_path / "logs", override))
    assert code == 2, stderr[-3000:]
    (line,) = error_lines(stderr)
    assert line.startswith(f"error: {message}"), line
    assert "Traceback" not in stderr
    assert not (tmp_path / "logs").exists(), "nothing may be written before the refusal"


@pytest.mark.slow
def test_train_script_exits_2_with_one_line_for_a_wrong_value(tmp_path: Path):
    result = subprocess.run([sys.executable, str(ROOT / "train_ddp_spawn.py"), "--base", str(TINY_V01), "--train",
                             "True", "--logdir", str(tmp_path / "logs"), "data.params.batch_size=two"], cwd=ROOT,
                            env=script_env(), capture_output=True, text=True, timeout=COMMAND_LIMIT_S)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert error_lines(result.stderr) == ["error: data.params.batch_size='two' is a string; "
                                          "sgm.data.video_dataset.VideoDataset expects an int"]


@pytest.mark.parametrize("config_path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_passes_the_key_and_type_checks(config_path: Path):
    """No false alarm: the checks accept every config the project ships (training and inference)."""
    from omegaconf import OmegaConf

    from sgm.config_check import check_node
    from sgm.training import translate_trainer_options
    from sgm.training_config import check_training_config

    config = load_config(config_path)
    if "lightning" in config:
        check_training_config(config)
        trainer = OmegaConf.to_container(config.lightning.trainer)
        trainer["strategy"] = "ddp"  # deepspeed_stage_2 needs the optional package; checked elsewhere
        translate_trainer_options(trainer, has_validation=False)
    else:
        model = OmegaConf.to_container(config.model, resolve=True)
        check_node({"target": model["target"], "params": model["params"]}, "model")


def test_instantiate_from_config_names_an_unknown_key():
    from sgm.util import ConfigError

    node = {"target": "sgm.callbacks.ImageLogger", "params": {"batch_frequency": 2, "max_image": 4}}
    with pytest.raises(ConfigError, match=r"params\.max_image is not a parameter of sgm\.callbacks\.ImageLogger; "
                                          r"did you mean params\.max_images\?"):
        instantiate_from_config(node)


def test_a_dataset_whose_every_object_is_bad_is_a_named_error(orbit_folder: Path, tmp_path: Path, script_main,
                                                              no_model_build):
    bad = tmp_path / "bad"
    good = next(orbit_folder.iterdir())
    for name, count in (("few_a", 3), ("few_b", 10)):  # wrong number of views
        (bad / name).mkdir(parents=True)
        for view in sorted(good.iterdir())[:count]:
            shutil.copy(view, bad / name / view.name)
    shutil.copytree(good, bad / "corrupt")  # 96 views, one unreadable
    sorted((bad / "corrupt").iterdir())[5].write_bytes(b"not a png")
    code, stderr = script_main(script_args(orbit_folder, tmp_path / "logs", f"data.params.base_folder={bad}"))
    assert code == 2, stderr[-3000:]
    (line,) = error_lines(stderr)
    assert line.startswith(f"error: no usable object folder in {bad} (3 object folders, none usable: 1 with an "
                           "unreadable PNG file, 2 with the wrong number of PNG files (corrupt: cannot open"), line
    assert "few_a: has 3 PNG files, expected 96; few_b: has 10 PNG files, expected 96)" in line
    assert "Traceback" not in stderr
    assert not (tmp_path / "logs").exists(), "nothing may be written before the refusal"


def test_a_training_config_takes_no_inference_checkpoint():
    """A training overlay merged onto an inference config must null its ``checkpoint``."""
    from sgm.training_config import check_training_config
    from sgm.util import ConfigError

    check_training_config(load_config(TINY_V01, ["checkpoint=null"]))
    with pytest.raises(ConfigError, match=r"checkpoint is 'ckpts/first_stage.pt': a training config takes no "):
        check_training_config(load_config(TINY_V01, ["checkpoint=ckpts/first_stage.pt"]))
