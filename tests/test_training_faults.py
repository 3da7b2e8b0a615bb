"""Faults during training (issue 16): a failing rank ends every rank, and the image logger never
stops or hangs training.

The multi-process tests run ``train_ddp_spawn.py`` with 2 CPU processes (DDP over gloo) on the
tiny stage-1 config, and inject the fault with :class:`FailAtStep`, a callback named in the
config (``lightning.callbacks.fault.target=test_training_faults.FailAtStep``, importable through
``PYTHONPATH=tests``).
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
from test_training import TINY_V01, data_overrides, first_batch, orbit_folder, tiny_config  # noqa: F401 (fixture)
from torch.utils.data import DataLoader

from sgm.callbacks import ImageLogger
from sgm.config import build_model
from sgm.distributed_faults import FAILED_RANK_GRACE_ENV, FAULT_DIR_ENV, OWN_EXIT_DEADLINE_ENV, RankFailureGuard

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
# From the injected fault to the end of every rank (the bound).
END_WITHIN_S = 60.0
# The whole command: start-up of both ranks (~15 s on 2 cores) plus the bound, with margin.
COMMAND_LIMIT_S = 150.0
FAULT_STEP = 1
# The backstops' waits in the ranks (20 s and 10 s by default), shortened: a stuck rank is ended as it would be,
# sooner. Still long enough for a tiny CPU run's teardown and traceback (the reports checked below).
BACKSTOP_WAITS = {OWN_EXIT_DEADLINE_ENV: "5", FAILED_RANK_GRACE_ENV: "3"}


class FailAtStep(pl.Callback):
    """Test-only fault: rank ``rank`` fails when its global step reaches ``step``.

    ``how``: ``raise`` raises a RuntimeError and keeps the process from exiting (a non-daemon
    thread that sleeps), as a rank whose shutdown is stuck does. That is what makes the other
    ranks wait forever on GPUs: NCCL does not notice a dead peer, gloo does (its TCP connection
    closes), so on the CPU only a failed rank that stays alive reproduces the hang. ``kill``
    sends SIGKILL to its own process. Every rank writes ``pid-rank<r>`` when training starts and
    the failing one ``fault-time`` (``time.time()``) just before failing, into ``out_dir``.
    """

    def __init__(self, out_dir: str, rank: int, step: int, how: str):
        super().__init__()
        if how not in ("raise", "kill"):
            raise ValueError(f"FailAtStep: how must be 'raise' or 'kill', not {how!r}")
        self.out_dir, self.rank, self.step, self.how = Path(out_dir), rank, step, how

    def on_train_start(self, trainer, pl_module):
        (self.out_dir / f"pid-rank{trainer.global_rank}").write_text(str(os.getpid()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank != self.rank or trainer.global_step != self.step:
            return
        (self.out_dir / "fault-time").write_text(repr(time.time()))
        if self.how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Thread(target=time.sleep, args=(3600,), name="stuck-shutdown", daemon=False).start()
        raise RuntimeError(f"injected fault on rank {self.rank} at global step {self.step}")


def script_env(*paths: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HI3D_RUN_TIMESTAMP", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", FAULT_DIR_ENV)}
    env.update(PYTHONPATH=os.pathsep.join([*map(str, paths), str(ROOT / "tests"), env.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", **BACKSTOP_WAITS)
    return env


def run_two_ranks(args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float]:
    """``train_ddp_spawn.py`` with 2 CPU ranks; (result, time it ended).

    Returns once the script exited and every process holding its output (the other rank) is
    gone. On timeout the whole process group is killed and the test fails with the output.
    """
    command = [sys.executable, str(ROOT / "train_ddp_spawn.py"), "--base", str(TINY_V01), "--train", "True",
               "--no-test", "True", "--accelerator", "cpu", "--devices", "2", "lightning.trainer.strategy=ddp", *args]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=COMMAND_LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"train_ddp_spawn.py was still running after {COMMAND_LIMIT_S:.0f} s (ranks hang):\n"
                    f"{stdout[-2000:]}\n{stderr[-5000:]}")
    ended = time.time()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # nothing should be left; never leak a rank into later tests
    except ProcessLookupError:
        pass
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), ended


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended but not yet reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("rank, how, report", [
    (1, "raise", rf"error: rank 1 failed at global step {FAULT_STEP}: RuntimeError: injected fault on rank 1"),
    (0, "raise", r"RuntimeError: injected fault on rank 0"),
    (1, "kill", r"error: rank 1 \(pid \d+\) was ended by signal SIGKILL"),
], ids=["child_raises", "rank0_raises", "child_killed"])
def test_a_failing_rank_ends_every_rank_with_its_error(orbit_folder: Path, tmp_path: Path, rank: int, how: str,
                                                       report: str):
    out = tmp_path / "out"
    out.mkdir()
    fault = ["lightning.callbacks.fault.target=test_training_faults.FailAtStep",
             f"lightning.callbacks.fault.params.out_dir={out}", f"lightning.callbacks.fault.params.rank={rank}",
             f"lightning.callbacks.fault.params.step={FAULT_STEP}", f"lightning.callbacks.fault.params.how={how}"]
    result, ended = run_two_ranks(["--logdir", str(tmp_path / "logs"), "--max_steps", str(FAULT_STEP + 2),
                                   "lightning.callbacks.image_logger.params.disabled=true",
                                   *data_overrides(orbit_folder), *fault], script_env())
    output = f"{result.stdout[-2000:]}\n{result.stderr[-6000:]}"
    assert (out / "fault-time").exists(), f"the fault was not injected:\n{output}"
    took = ended - float((out / "fault-time").read_text())
    log.info("%s on rank %d: every rank ended %.1f s after the fault (exit code %d)", how, rank, took,
             result.returncode)
    assert result.returncode > 0, f"exit code {result.returncode}: expected a failure status\n{output}"
    assert took < END_WITHIN_S, f"the ranks ended {took:.0f} s after the fault\n{output}"
    assert re.search(report, result.stderr), f"no report matching {report!r}\n{output}"
    pids = [int((out / f"pid-rank{r}").read_text()) for r in range(2)]
    assert not [pid for pid in pids if process_alive(pid)], "a rank outlived the command"


def test_the_guard_travels_to_ddp_spawn_workers():
    # ddp_spawn pickles the trainer's callbacks into its worker processes.
    guard = pickle.loads(pickle.dumps(RankFailureGuard()))
    assert isinstance(guard, RankFailureGuard)
    with guard.watch(pl.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[guard])):
        pass  # one process: nothing to watch, nothing started
    assert FAULT_DIR_ENV not in os.environ


@pytest.mark.slow
def test_a_user_error_raised_on_every_rank_still_exits_2_with_one_line(orbit_folder: Path, tmp_path: Path):
    # cuda_graph_training refuses DDP when fitting starts, on both ranks (sgm.models.diffusion).
    message = "model.params.cuda_graph_training=true supports one device"
    result, _ = run_two_ranks(["--logdir", str(tmp_path / "logs"), "--max_steps", "2",
                               "model.params.cuda_graph_training=true", *data_overrides(orbit_folder)], script_env())
    # Each rank prints the message once (one line); the launching rank does not repeat its child's.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2, result.stderr[-4000:]
    assert 1 <= len(errors) <= 2 and all(message in line for line in errors), result.stderr[-4000:]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_two_ranks_train_through_a_missing_video_writer(orbit_folder: Path, tmp_path: Path):
    """The observed failure: imageio without imageio-ffmpeg, image logger on at step 0."""
    shadow = tmp_path / "shadow"
    (shadow / "imageio_ffmpeg").mkdir(parents=True)  # stands in for the uninstalled package
    (shadow / "imageio_ffmpeg" / "__init__.py").write_text("raise ImportError('No module named imageio_ffmpeg')\n")
    result, _ = run_two_ranks(["--logdir", str(tmp_path / "logs"), "--max_steps", "2",
                               *data_overrides(orbit_folder)], script_env(shadow))
    assert result.returncode == 0, result.stderr[-6000:]
    lines = result.stderr.splitlines()
    warnings = [i for i, line in enumerate(lines) if "cannot write mp4 videos" in line]
    assert len(warnings) == 1 and "imageio-ffmpeg" in lines[warnings[0]], result.stderr[-4000:]
    logged_at = [i for i, line in enumerate(lines) if "sgm.callbacks: logged" in line]
    assert logged_at and warnings[0] < logged_at[0], "the missing writer must be found before the first logging call"
    (logdir,) = (tmp_path / "logs").iterdir()
    files = sorted(p.name for p in (logdir / "image_log" / "train").iterdir())
    assert any(n.startswith("samples_video_gs-") and n.endswith(".png") for n in files), files
    assert not any(n.endswith(".mp4") for n in files), files
    assert (logdir / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize("failure", ["log_images_raises", "writing_fails"])
def test_a_logging_failure_is_reported_once_and_training_goes_on(orbit_folder: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture, failure: str):
    config = tiny_config(TINY_V01, orbit_folder)
    pl.seed_everything(0, verbose=False)
    model = build_model(config)
    model.learning_rate = 1e-4
    batch = first_batch(config)
    kwargs = {"N": 2, "sample": True, "num_steps": 1}
    if failure == "log_images_raises":
        kwargs["ucg_keys"] = ["nothing"]  # the model's log_images raises ValueError on every call
        expected = "read by no embedder"
    else:  # a file where the image folder should be: every write fails
        (tmp_path / "image_log").mkdir()
        (tmp_path / "image_log" / "train").write_text("")
        expected = "FileExistsError"
    image_logger = ImageLogger(batch_frequency=1, increase_log_steps=False, log_images_kwargs=kwargs)
    steps = 3
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[image_logger],
                         default_root_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="sgm.callbacks"):
        trainer.fit(model, train_dataloaders=DataLoader([batch] * steps, batch_size=None))
    assert trainer.global_step == steps
    reports = [r.getMessage() for r in caplog.records if r.name == "sgm.callbacks" and r.levelno == logging.WARNING]
    assert len(reports) == 1, reports
    assert "logging at global step 1 failed" in reports[0] and expected in reports[0], reports[0]



@pytest.mark.parametrize("value", ["abc", "0", "-3", "inf", "nan"])
def test_a_bad_backstop_wait_in_the_environment_is_named(monkeypatch, value):
    from sgm.common.errors import UsageError
    from sgm.distributed_faults import seconds_from_env

    monkeypatch.setenv(OWN_EXIT_DEADLINE_ENV, value)
    with pytest.raises(UsageError, match=f"{OWN_EXIT_DEADLINE_ENV}='{value}': expected a positive number of seconds"):
        seconds_from_env(OWN_EXIT_DEADLINE_ENV, 20.0)
    monkeypatch.setenv(OWN_EXIT_DEADLINE_ENV, "2.5")
    assert seconds_from_env(OWN_EXIT_DEADLINE_ENV, 20.0) == 2.5
    monkeypatch.delenv(OWN_EXIT_DEADLINE_ENV)
    assert seconds_from_env(OWN_EXIT_DEADLINE_ENV, 20.0) == 20.0
