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


_owner_pid: int | None = None  # the process that installed the handlers; forked children inherit them


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _owner_pid:  # a forked child (a DataLoader worker): Python's default behaviour
        if signum == signal.SIGINT:
            signal.default_int_handler(signum, frame)
        exit_by_signal(signum)
    # A second signal must not interrupt the cleanup, nor the DataLoader's SIGCHLD handler, which
    # raises when its workers die of the same signal (sent to the whole process group by Ctrl-C,
    # `timeout`, SLURM). A no-op handler, not SIG_IGN/SIG_DFL: a signal that arrived just before is
    # still pending, and Python reports one whose handler became SIG_IGN/SIG_DFL with a traceback.
    for other in (*SIGNALS, signal.SIGCHLD):
        signal.signal(other, _ignore)
    raise Interrupted(signum)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Ignores a signal."""


def raise_on_signals() -> None:
    """From now on SIGTERM and SIGINT raise `Interrupted` in the main thread."""
    global _owner_pid
    _owner_pid = os.getpid()
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
