"""SIGTERM and SIGINT as a request to stop training at the next step, after saving.

By default SIGTERM ends a process at once and SIGINT (Ctrl-C) raises ``KeyboardInterrupt``
wherever the main thread happens to be, possibly halfway through an optimizer step. Lightning's
own SIGTERM handler runs a collective (a broadcast) inside the signal handler, which can meet
another collective of the interrupted code on another rank and hang, and it ends the run
without a checkpoint.

While a :class:`StopRequest` is installed, the first SIGTERM or SIGINT only records the signal;
the training loop reads it at its next step boundary (see :class:`sgm.callbacks.LastCheckpoint`,
which agrees on it with every rank before saving). The handler does nothing else, so it cannot
disturb a collective in progress. A second SIGINT restores the usual behaviour (an immediate
``KeyboardInterrupt``, no checkpoint) for a user who does not want to wait; further SIGTERMs are
ignored (schedulers send SIGKILL after their grace period anyway).

DataLoader worker processes ignore both signals (:func:`ignore_stop_signals`, their
``worker_init_fn``): Ctrl-C in a terminal and schedulers signal every process of the run, and a
worker ended by the signal would make the training process fail before it can save. The
training process ends its workers itself.
"""
from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, and so on (the number for an unknown signal)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of the training DataLoaders: the worker ignores SIGTERM and SIGINT."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class StopRequest:
    """Records the first SIGTERM / SIGINT while installed (main thread only).

    Attributes:
        signal: number of the first signal received, or None.
        installed: whether the handlers are in place.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self.installed = False

    def install(self) -> bool:
        """Take over SIGTERM and SIGINT; False (nothing done) outside the main thread, where
        Python cannot set signal handlers."""
        if threading.current_thread() is not threading.main_thread() or self.installed:
            return False
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is signal.SIG_IGN:  # e.g. SIGINT of a background job: stays ignored
                continue
            self._previous[signum] = signal.signal(signum, self._handle)
        self.installed = True
        return True

    def restore(self) -> None:
        """Give SIGTERM and SIGINT back to the handlers they had before :meth:`install`."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        self.installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum
            log.warning("%s received: training stops after the current step, once last.ckpt is saved%s",
                        signal_name(signum), " (Ctrl-C again to stop at once, without saving)"
                        if signum == signal.SIGINT else "")
            return
        if signum == signal.SIGINT:
            self.restore()
            raise KeyboardInterrupt
        log.warning("%s received again: still stopping after the current step", signal_name(signum))
