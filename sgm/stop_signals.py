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

import signal
import threading
from types import FrameType
from typing import Any

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

    The handler only stores the signal number (no I/O, no locks: it may interrupt any code,
    a write to stderr included); whoever reads :attr:`signal` reports it.

    Attributes:
        signal: number of the first signal received, or None.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Take over SIGTERM and SIGINT (not one that is ignored, like SIGINT of a background job);
        nothing outside the main thread, where Python cannot set signal handlers."""
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        for signum in STOP_SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Give SIGTERM and SIGINT back to the handlers they had before :meth:`install`."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            self.signal = signum
        elif signum == signal.SIGINT:  # Ctrl-C again: stop at once
            self.restore()
            raise KeyboardInterrupt
