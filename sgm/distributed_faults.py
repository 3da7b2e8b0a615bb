"""A failure on one training rank ends every rank, quickly and with the failing rank's error.

Why this is needed: with ``strategy=ddp`` or ``deepspeed_stage_2`` Lightning's launcher re-runs
the training script for ranks 1.. as child processes of rank 0. When one rank raises, the others
wait in their next collective (all-reduce of the gradients) for a partner that never comes, until
the process group's timeout (30 min). NCCL does not notice a dead peer at all, and a failed rank
whose process cannot exit (a thread or a destructor stuck at shutdown) keeps even gloo waiting.
Lightning kills the children only on Ctrl-C, and its child observer ends everything with SIGKILL
without saying why (the guard takes the children over from it).

Design (:class:`RankFailureGuard`, one per process, installed by :func:`sgm.training.build_trainer`
and armed by :func:`watch_ranks` around ``trainer.fit``):

- **Report.** A rank whose fit raises writes a report (rank, global step, error, exit code) as a
  file ``rank-<r>.json`` into a fault folder. Files, not the c10d store: they work before the
  process group exists and after its server (rank 0) died, and need no network. The launching
  process creates the folder and hands it to its children through ``$HI3D_RANK_FAULT_DIR``; so
  the reports reach the ranks of one machine (the launcher runs once per machine).
- **Supervise.** The launching process (local rank 0, the parent of the other ranks) runs a daemon
  watchdog thread that polls every 0.5 s for reports and for children that ended with a non-zero
  code (a child killed by SIGKILL leaves no report). When one appears (and stays 1.5 s, so that
  an identical error of its own, e.g. a user error raised on every rank, is printed once) it prints
  ``error: rank R failed at global step S: <error>`` to stderr, kills the healthy children,
  gives the failed one a few seconds to finish printing its traceback, and ends its own process
  with exit code 1 (2 when every failure is a user error) through ``os._exit``: its main thread may be stuck inside a collective that
  never returns, so neither an exception nor ``sys.exit`` would get through. When the launching
  process itself fails, it kills its children at once and its own exception goes on as usual (a
  traceback, or the one-line message and exit code 2 of a user error).
- **Backstops** in the watchdog of every rank: a rank whose own error is more than 20 s old ends
  itself (its exit got stuck); a child whose parent is gone (rank 0 killed by a signal) ends
  itself; a child that has seen another rank's report for 30 s without being ended ends itself.
- After a successful fit the launching process waits for its children and raises
  :class:`RankFailedError` if one of them failed, so the exit code covers every rank.

The guard is inactive for one process and for ``ddp_spawn`` (``torch.multiprocessing`` already
ends every worker when one fails and raises its error in the main process). Ranks started by
torchrun or SLURM watch their parent only; those launchers end the group on a failure themselves.
Across machines a failure reaches the other machines through the collective library only.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from subprocess import Popen, TimeoutExpired

import pytorch_lightning as pl
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher

from .common.errors import USER_ERRORS, UsageError

log = logging.getLogger(__name__)

# The fault folder of one launch, handed by the launching process to the ranks it starts.
FAULT_DIR_ENV = "HI3D_RANK_FAULT_DIR"
POLL_INTERVAL_S = 0.5
# The launching process acts on another rank's failure once it has seen it this long: when every
# rank raises the same error (a user error), its own surfaces meanwhile and is printed once.
SETTLE_S = 1.5
# The next two waits leave a real run's teardown time (a slow one on a loaded machine, destroying the process
# group, flushing the logs) before its traceback; cutting them could kill a rank that was exiting normally.
# Each is read from an environment variable when set: the fault tests shorten them, to see the backstops fire
# without waiting as long.
OWN_EXIT_DEADLINE_ENV, FAILED_RANK_GRACE_ENV = "HI3D_RANK_EXIT_DEADLINE_S", "HI3D_FAILED_RANK_GRACE_S"


def seconds_from_env(env: str, default: float) -> float:
    """``$env`` as a positive number of seconds when it is set, else ``default``; UsageError otherwise."""
    value = os.environ.get(env)
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise UsageError(f"environment variable {env}={value!r}: expected a positive number of seconds")
    return seconds


# A rank still alive this long after its own error ends itself (its exit path got stuck).
OWN_EXIT_DEADLINE_S = 20.0
# The launching process lets a failed child finish printing its error this long before killing it.
FAILED_RANK_GRACE_S = 10.0
# A child that knows of another rank's failure this long without being ended ends itself.
PEER_GRACE_S = 30.0
# After a successful fit, the launching process waits this long for each child to exit.
CHILD_EXIT_TIMEOUT_S = 60.0
KILL_SIGNAL = getattr(signal, "SIGKILL", signal.SIGTERM)
MAX_ERROR_CHARS = 2000


class RankFailedError(RuntimeError):
    """Another rank of this run failed (raised on the launching process after its own fit ended)."""


@dataclass(frozen=True)
class FailureReport:
    """What one rank's failure looks like to the others.

    Attributes:
        rank: global rank that failed.
        line: the line printed for it (after ``error: ``).
        error: ``<type>: <message>`` of its exception ("" when the process ended without one).
        exit_code: the exit code the run ends with: 2 for a user error (as :func:`sgm.cli.run_main`), else 1.
    """

    rank: int
    line: str
    error: str = ""
    exit_code: int = 1


def _exit_code_of(err: BaseException) -> int:
    return 2 if isinstance(err, USER_ERRORS) else 1


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was ended by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was ended by signal {-returncode}"
    return f"exited with code {returncode}"


def _say(message: str) -> None:
    """One line to stderr, flushed: the process may end right after it."""
    print(f"error: {message}", file=sys.stderr, flush=True)


class RankFailureGuard(pl.Callback):
    """Ends every rank of a multi-process run when one fails (see the module docstring).

    As a callback it records this rank's failure in ``on_exception``, which Lightning calls
    before its teardown (a teardown that hangs cannot delay the report); :meth:`watch` arms
    it around ``trainer.fit``.
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._trainer: pl.Trainer | None = None
        self._folder: Path | None = None
        self._owns_folder = False
        self._supervisor = False
        self._parent_pid: int | None = None
        self._rank = 0
        self._failed_at: float | None = None
        self._own_exit_code = 1
        self._peer_seen_at: float | None = None
        self._ending = False
        self._children: list[Popen] = []

    def __getstate__(self) -> dict:
        # ddp_spawn pickles the trainer's callbacks into its workers; the guard holds only
        # per-process state (a lock, a thread), and it is inactive under ddp_spawn anyway.
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    # ------------------------------------------------------------------ arming
    @staticmethod
    def applies_to(trainer: pl.Trainer) -> bool:
        """Several processes started by Lightning's script launcher (``ddp``, ``deepspeed_*``)."""
        world_size = trainer.num_devices * trainer.num_nodes
        return world_size > 1 and isinstance(trainer.strategy.launcher, _SubprocessScriptLauncher)

    @contextmanager
    def watch(self, trainer: pl.Trainer) -> Iterator[None]:
        """Watch the other ranks while the block (``trainer.fit``) runs; see the module docstring.

        Raises:
            RankFailedError: on the launching process, when its fit succeeded but a child failed.
        """
        if not self.applies_to(trainer):
            yield
            return
        self._begin(trainer)
        try:
            yield
        except BaseException as err:
            # Normally on_exception has recorded it already; this covers errors outside Lightning's handler.
            self._record_own_failure(trainer, err)
            self._remove_folder()
            raise  # the watchdog keeps running: it ends this process if its exit gets stuck
        self._stop_watchdog()
        try:
            if self._supervisor:
                self._wait_for_children()
        finally:
            self._remove_folder()

    def _begin(self, trainer: pl.Trainer) -> None:
        self._own_exit_deadline_s = seconds_from_env(OWN_EXIT_DEADLINE_ENV, OWN_EXIT_DEADLINE_S)
        self._failed_rank_grace_s = seconds_from_env(FAILED_RANK_GRACE_ENV, FAILED_RANK_GRACE_S)
        self._trainer = trainer
        self._rank = trainer.node_rank * trainer.num_devices + trainer.local_rank
        environment = trainer.strategy.cluster_environment
        # Evaluated before fit: the launcher sets LOCAL_RANK in this process when it starts the children.
        self._supervisor = trainer.local_rank == 0 and not environment.creates_processes_externally
        inherited = os.environ.get(FAULT_DIR_ENV)
        if inherited and not self._supervisor:
            self._folder = Path(inherited)
        else:  # a fresh folder per launch: reports of an earlier run must never fire
            self._folder = Path(tempfile.mkdtemp(prefix="hi3d-rank-faults-"))
            self._owns_folder = True
            if self._supervisor:
                os.environ[FAULT_DIR_ENV] = str(self._folder)  # inherited by the children Lightning starts
        if not self._supervisor:
            self._parent_pid = os.getppid()
        self._thread = threading.Thread(target=self._watchdog, name="rank-failure-watchdog", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ this rank fails
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._trainer is not None:
            self._record_own_failure(trainer, exception)

    def _record_own_failure(self, trainer: pl.Trainer, err: BaseException) -> None:
        """Write this rank's report; on the launching process also end the children."""
        with self._lock:
            if self._failed_at is not None or self._ending:
                return
            self._failed_at = time.monotonic()
        error = f"{type(err).__name__}: {err}"[:MAX_ERROR_CHARS]
        self._own_exit_code = _exit_code_of(err)
        self._write_report(FailureReport(self._rank, f"rank {self._rank} failed at global step {trainer.global_step}: "
                                         f"{error}", error, self._own_exit_code))
        if not self._supervisor:
            return
        # A child that died first (its report, or its exit) is the cause; a communication error here
        # is its consequence. Its exit shows within moments of the broken connection.
        deadline = time.monotonic() + 1.0
        causes = self._peer_failures()
        while not causes and time.monotonic() < deadline and self._running_children():
            time.sleep(0.1)
            causes = self._peer_failures()
        # The same error on several ranks (a user error raised everywhere) is printed once, by this rank.
        causes = {rank: report for rank, report in causes.items() if report.error != error}
        for report in causes.values():
            _say(report.line)
        # This rank's own error follows as usual (a traceback, or the one-line message of a user error).
        log.warning("rank %d %s (%s): ending the other ranks", self._rank,
                    "stopped after that" if causes else "failed", type(err).__name__)
        self._end_children(failed=set())

    def _write_report(self, report: FailureReport) -> None:
        if self._folder is None:
            return
        try:
            partial = self._folder / f".rank-{self._rank}.tmp"
            partial.write_text(json.dumps(asdict(report)))
            os.replace(partial, self._folder / f"rank-{self._rank}.json")
        except OSError as err:  # the folder went away: the launching process is ending the run anyway
            log.debug("could not write the failure report of rank %d: %s", self._rank, err)

    # ------------------------------------------------------------------ what the other ranks did
    def _reports(self) -> dict[int, FailureReport]:
        """Reports of the other ranks, by rank."""
        reports = {}
        try:
            paths = list(self._folder.glob("rank-*.json")) if self._folder else []
        except OSError:
            return reports
        for path in paths:
            try:
                report = FailureReport(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if report.rank != self._rank:
                reports[report.rank] = report
        return reports

    def _launched_children(self) -> dict[int, Popen]:
        """The child processes by global rank (launching process only; empty before the launch).

        Once all are launched the guard takes them over from the launcher's list. Lightning's child
        observer thread shares that list; left to it, it would kill this process with SIGKILL, without
        a word, as soon as a child ends non-zero (or is killed by this guard). The guard does its job
        and says why.
        """
        if not self._children:
            procs = getattr(self._trainer.strategy.launcher, "procs", None)
            if isinstance(procs, list) and len(procs) == self._trainer.num_devices - 1:
                self._children = list(procs)
                procs.clear()
        base = self._trainer.node_rank * self._trainer.num_devices
        return {base + index + 1: proc for index, proc in enumerate(self._children)}

    def _running_children(self) -> list[Popen]:
        return [proc for proc in self._launched_children().values() if proc.poll() is None]

    def _peer_failures(self) -> dict[int, FailureReport]:
        """Failed other ranks: their reports, and children that ended non-zero without one."""
        failures = self._reports()
        if self._supervisor:
            for rank, proc in self._launched_children().items():
                code = proc.poll()
                if code and rank not in failures:
                    failures[rank] = FailureReport(rank, f"rank {rank} (pid {proc.pid}) {_describe_exit(code)} before "
                                                         "reporting an error (see its output above)")
        return failures

    # ------------------------------------------------------------------ ending
    def _end_children(self, failed: set[int]) -> None:
        """Kill the healthy children now (SIGKILL: a process blocked in a collective ignores SIGTERM),
        the failed ones after a grace period for their own report; reap them all."""
        children = self._launched_children()
        for rank, proc in children.items():
            if rank not in failed and proc.poll() is None:
                proc.send_signal(KILL_SIGNAL)
        deadline = time.monotonic() + self._failed_rank_grace_s
        for rank, proc in children.items():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()) if rank in failed else 5.0)
            except TimeoutExpired:
                proc.send_signal(KILL_SIGNAL)
                try:
                    proc.wait(timeout=5.0)
                except TimeoutExpired:  # unkillable (uninterruptible I/O): leave it to the system
                    pass

    def _end_run(self, failures: dict[int, FailureReport]) -> None:
        """Launching process, watchdog thread: report, end the children, end this process."""
        with self._lock:
            if self._ending or self._failed_at is not None:
                return
            self._ending = True
        for report in failures.values():
            _say(report.line)
        log.warning("ending all %d ranks", self._trainer.num_devices * self._trainer.num_nodes)
        self._end_children(failed=set(failures))
        self._remove_folder()
        # exit code 2 only when every failure is a user error, as a single process would end
        self._exit_process(max(report.exit_code for report in failures.values()))

    @staticmethod
    def _exit_process(code: int = 1) -> None:
        """End this process now, whatever its main thread is blocked in."""
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    # ------------------------------------------------------------------ watchdog
    def _watchdog(self) -> None:
        while not self._stop.wait(POLL_INTERVAL_S):
            try:
                self._check()
            except Exception as err:  # never let the watchdog die silently; it is the last resort
                log.warning("rank-failure watchdog of rank %d: %s: %s", self._rank, type(err).__name__, err)

    def _check(self) -> None:
        now = time.monotonic()
        if self._failed_at is not None:
            if now - self._failed_at > self._own_exit_deadline_s:
                _say(f"rank {self._rank} is still running {self._own_exit_deadline_s:.0f} s after its error: ending it")
                self._remove_folder()
                self._exit_process(self._own_exit_code)
            return
        if self._supervisor:
            failures = self._peer_failures()
            if failures:
                self._peer_seen_at = self._peer_seen_at or now
                if now - self._peer_seen_at >= SETTLE_S:
                    self._end_run(failures)
            return
        if self._parent_pid is not None and os.getppid() != self._parent_pid:
            _say(f"rank {self._rank}: the process that launched it (pid {self._parent_pid}) is gone: ending rank "
                 f"{self._rank}")
            self._exit_process()
        reports = self._reports()
        if not reports:
            return
        if self._peer_seen_at is None:
            self._peer_seen_at = now
        elif now - self._peer_seen_at > PEER_GRACE_S:
            report = reports[min(reports)]
            _say(f"{report.line} (seen by rank {self._rank}, which nobody ended within {PEER_GRACE_S:.0f} s: ending "
                 "it)")
            self._exit_process(report.exit_code)

    def _stop_watchdog(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * POLL_INTERVAL_S)

    # ------------------------------------------------------------------ after a successful fit
    def _wait_for_children(self) -> None:
        """Wait for the children to exit; raise when one failed, kill one that does not exit."""
        children = self._launched_children()
        failed = []
        for rank, proc in children.items():
            try:
                code = proc.wait(timeout=CHILD_EXIT_TIMEOUT_S)
            except TimeoutExpired:
                log.warning("rank %d (pid %d) had not exited %.0f s after training ended: killed", rank, proc.pid,
                            CHILD_EXIT_TIMEOUT_S)
                proc.send_signal(KILL_SIGNAL)
                proc.wait()
                continue
            if code:
                failed.append(f"rank {rank} (pid {proc.pid}) {_describe_exit(code)}")
        reports = self._reports()
        if reports or failed:
            raise RankFailedError("; ".join([*(report.line for report in reports.values()), *failed]))

    def _remove_folder(self) -> None:
        if self._owns_folder and self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            if os.environ.get(FAULT_DIR_ENV) == str(self._folder):
                del os.environ[FAULT_DIR_ENV]


@contextmanager
def watch_ranks(trainer: pl.Trainer) -> Iterator[None]:
    """Arm the trainer's :class:`RankFailureGuard` around the block (``trainer.fit``).

    Raises:
        ValueError: the trainer has no RankFailureGuard callback.
    """
    guards = [callback for callback in trainer.callbacks if isinstance(callback, RankFailureGuard)]
    if not guards:
        raise ValueError("the trainer has no RankFailureGuard callback (build it with sgm.training.build_trainer)")
    with guards[0].watch(trainer):
        yield
