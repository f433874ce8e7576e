"""`python -m <module> …` and `python <script> …` for the tests, each in a process of its own, started
by forking a server that has already imported torch, Lightning, Hydra, timm and roadmap
(multiprocessing's forkserver) rather than by a fresh interpreter: a fresh one spends ~10 s of CPU
on those imports before it does anything, and the suite starts dozens. The child then runs the module
or script as the interpreter would (`runpy`, as `__main__`, with its own argv, environment, working
directory and stdout/stderr files; exit handlers run at its end) and its exit status is the process's
(an exit code, or -signal). The server never runs a torch op, so a child starts with no thread pool to
inherit. `ROADMAP_TEST_FRESH_PROCESSES=1` starts a fresh interpreter for each instead."""
from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

# What the server imports once: every module a test starts as a process, and what they import.
PRELOAD = ["roadmap.run", "roadmap.sweep", "roadmap.status", "roadmap.collect", "roadmap.report",
           "roadmap.inspect", "lightning.pytorch", "timm", "pandas"]
FRESH = os.environ.get("ROADMAP_TEST_FRESH_PROCESSES") == "1"
_context = None


def _forkserver() -> multiprocessing.context.BaseContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _child(target: str, as_module: bool, argv: list[str], cwd: str, env: dict[str, str], out: str, err: str,
           preexec_fn: Callable[[], None] | None) -> None:
    """In the forked process: what `python -m target argv…` (or `python target argv…`) does."""
    if preexec_fn is not None:
        preexec_fn()
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        with open(path, "wb") as file:
            os.dup2(file.fileno(), fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # line-buffered, as PYTHONUNBUFFERED leaves text
    sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
    threads = env.get("OMP_NUM_THREADS")
    if threads:  # read by torch when the interpreter starts: the server read its own
        import torch

        torch.set_num_threads(int(threads))
    code: int = 0
    try:
        if as_module:
            sys.argv = [target, *argv]
            sys.path[0] = os.getcwd()  # as `python -m` puts it
            sys.modules.pop(target, None)  # preloaded: `python -m` runs it as __main__ only (runpy warns otherwise)
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [target, *argv]
            sys.path.insert(0, str(Path(target).parent))  # as `python script.py` puts it
            runpy.run_path(target, run_name="__main__")
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - as the interpreter: the traceback on stderr, exit status 1
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # as at the interpreter's exit (multiprocessing's children skip them)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_python(target: str, args: list[str], *, module: bool = True, cwd: str | Path | None = None,
               env: dict[str, str] | None = None, timeout: float = 600,
               preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """`python -m target args…` (`module=False`: `python target args…`), output captured as text, like
    `subprocess.run(..., capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn)` (a
    `preexec_fn` must be a module-level function: the server unpickles it by name)."""
    cwd = str(cwd or os.getcwd())
    env = dict(os.environ if env is None else env)
    command = [sys.executable, *(["-m"] if module else []), target, *args]
    if FRESH:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=preexec_fn)
    with tempfile.TemporaryDirectory(prefix="roadmap-proc-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        child = _forkserver().Process(target=_child, args=(target, module, list(args), cwd, env, out, err, preexec_fn))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired(command, timeout)
        read = lambda path: Path(path).read_text(errors="backslashreplace")  # noqa: E731
        return subprocess.CompletedProcess(command, child.exitcode, read(out), read(err))
