"""SIGTERM and SIGINT as an interruption, never a failure: the handler raises `Interrupted` (a
BaseException, so no `except Exception` on the way swallows it); the process cleans up, says how
to resume, then dies by the same signal, so its parent (a sweep, SLURM, a shell) sees the signal."""
from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import NoReturn

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """The process got SIGTERM or SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    for other in SIGNALS:  # a second signal must not interrupt the cleanup
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


def raise_on_signals() -> None:
    """From now on SIGTERM and SIGINT raise `Interrupted` in the main thread."""
    for signum in SIGNALS:
        signal.signal(signum, _raise_interrupted)


def was_interrupted(returncode: int) -> bool:
    """Whether a child process ended by SIGTERM or SIGINT (as `exit_by_signal` ends)."""
    return -returncode in SIGNALS or returncode - 128 in SIGNALS


def exit_by_signal(signum: int) -> NoReturn:
    """End the process by `signum` (exit status 128 + signum in a shell, -signum in Python's subprocess)."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    sys.exit(128 + signum)  # not reached
