"""`python -m roadmap.run step=<rung> [experiment=…] [key=value …]`: train one rung.

Writes the rung's run directory (`roadmap.rundir`): config.yaml (resolved), last.ckpt, metrics.csv
(one row per epoch), logs/, run.log, and result.json once the run has completed, failed or been
interrupted. The same command again resumes from last.ckpt, or skips a completed run. Everything is
checked before anything is written (`roadmap.plan`); each fault is one line on stderr
(HYDRA_FULL_ERROR=1 adds the traceback; run.log always has it).
"""
from __future__ import annotations

import errno
import logging
import os
import shlex
import signal
import sys
import traceback
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from roadmap.data import DataError
from roadmap.ladder import conf_dir, rung_argv
from roadmap.plan import RunConfigError, RunPlan, plan_run, valid_per_device_batches
from roadmap.rundir import EXIT_BUSY, RESULT_FILE, Attempt, RunBusy, plan_action, refuse_if_busy
from roadmap.signals import Interrupted, exit_by_signal, raise_on_signals
from roadmap.tasks import headline
from roadmap.training import CheckpointError, Parts, attempt_fields, build_parts, is_rank_zero, train, verify_checkpoint

log = logging.getLogger("roadmap.run")
trace_log = logging.getLogger("roadmap.run.trace")  # tracebacks: run.log only (stderr gets one line)
trace_log.propagate = False

DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
# The environment a run reads: the resume hint repeats it, so that the hint is the command that resumes.
RUN_ENVIRONMENT = ("ROADMAP_DATA_DIR", "ROADMAP_OUTPUT_DIR")


def _error(message: Any, code: int = 2) -> int:
    print(f"roadmap.run: error: {message}", file=sys.stderr)
    return code


def resume_command() -> str:
    """The user's command line as it was started: the environment it read, then its arguments
    (without the deltas `ladder.rung_argv` added to them)."""
    environment = [f"{name}={shlex.quote(os.environ[name])}" for name in RUN_ENVIRONMENT if os.environ.get(name)]
    return " ".join([*environment, shlex.join(["python", "-m", "roadmap.run", *(USER_ARGV or sys.argv)[1:]])])


def execute(cfg: DictConfig) -> int:
    """Check everything, then train and record. Returns the exit code; -signum when a signal
    interrupted the run (main() then ends the process by that signal)."""
    try:
        plan = plan_run(cfg)
        action = plan_action(plan.out_dir, plan.config_hash, bool(plan.cfg.force))
        if action == "skip":
            log.info("%s: completed with the same config; skipping (force=true reruns it)", plan.out_dir)
            return 0
        if is_rank_zero():  # at once, rather than after building (DDP's other ranks run under rank 0's lock)
            refuse_if_busy(plan.out_dir)
        parts = build_parts(plan)
        attempt = Attempt(plan.out_dir, action)
        if action == "resume":
            verify_checkpoint(attempt.checkpoint, plan, parts.model)
    except RunBusy as error:
        return _error(error, EXIT_BUSY)
    except (RunConfigError, CheckpointError, DataError, ValueError) as error:
        return _error(error)
    except Interrupted as stop:
        print(f"roadmap.run: interrupted by {stop} before training; nothing was written", file=sys.stderr)
        return -stop.signum
    from roadmap.callbacks import RunState

    config_text = OmegaConf.to_yaml(plan.cfg) + f"config_hash: {plan.config_hash}\n"
    state = RunState(attempt.work, OmegaConf.to_container(plan.cfg), config_text, fresh=action != "resume")
    if not is_rank_zero():
        return _train_and_record(plan, parts, attempt, state)
    try:
        attempt.open(trace_log)
    except OSError as error:
        return _error(f"cannot write to {error.filename or plan.out_dir}: {error.strerror}; nothing was changed. "
                      f"Use a writable output_root with free space.")
    except RunBusy as error:  # another process started it while this one was building
        return _error(error, EXIT_BUSY)
    try:
        return _train_and_record(plan, parts, attempt, state)
    finally:
        attempt.close(committed=state.committed)  # not committed: failed before its first optimizer step


def _train_and_record(plan: RunPlan, parts: Parts, attempt: Attempt, state: Any) -> int:
    work = attempt.work
    try:
        record = train(plan, parts, work, attempt.action, state)
    except Interrupted as stop:
        return _interrupted(plan, parts, attempt, state, stop.signum)
    except Exception as error:  # noqa: BLE001 - classified, recorded, reported in one line
        trace_log.error("%s", error, exc_info=True)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            traceback.print_exc()
        signum = _killed_worker_signal(error)
        if signum is not None:
            return _interrupted(plan, parts, attempt, state, signum)
        if _is_out_of_memory(error):
            return _error(_out_of_memory_message(plan), 1)
        if isinstance(error, OSError) and error.errno in DISK_ERRORS:
            kept = f"{attempt.checkpoint} is whole" if attempt.checkpoint.is_file() else "nothing was lost"
            return _error(f"cannot write {error.filename or work}: {error.strerror}; {kept}. Free space (or "
                          f"make it writable), then run the same command again: {resume_command()}", 1)
        kind, message = _described(error)
        if not state.committed:
            if isinstance(error, DataError):  # bad input, found before anything was written: the command's fault
                return _error(message)
            return _error(f"{kind}: {message} (before the first optimizer step: nothing was recorded)", 1)
        reason = f"{kind}: {message}"
        if is_rank_zero():
            attempt.record({**attempt_fields(plan, parts, state), "status": "failed", "reason": reason})
        kept = f"; the completed {RESULT_FILE} of {plan.out_dir} is kept" if attempt.action == "rerun" else ""
        return _error(f"the run failed: {reason.splitlines()[0]}{kept} (result in {work / RESULT_FILE})", 1)
    if record is not None:
        attempt.complete(record)
        metric = headline(record["task"])
        if metric == "top1":
            log.info("top-1 %s (EMA %s) -> %s", record["top1"], record["top1_ema"], plan.out_dir)
        else:
            log.info("%s %s -> %s", metric, record[metric], plan.out_dir)
    return 0


def _described(error: Exception) -> tuple[str, str]:
    """The error's type name and message; a DataLoader worker's error by its own (torch wraps it in
    "Caught DataError in DataLoader worker process 0." and the worker's traceback)."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        kind, _, message = [line for line in text.splitlines() if line.strip()][-1].partition(": ")
        return kind.rsplit(".", 1)[-1], message
    return type(error).__name__, text


def _interrupted(plan: RunPlan, parts: Parts, attempt: Attempt, state: Any, signum: int) -> int:
    name = signal.Signals(signum).name
    if state.committed and is_rank_zero():
        attempt.record({**attempt_fields(plan, parts, state), "status": "interrupted", "reason": f"interrupted by {name}"})
    if not state.committed:
        name += " before the first optimizer step (nothing was written)"
    if attempt.action == "rerun":
        hint = (f"the completed {RESULT_FILE} of {plan.out_dir} is kept; the same command (force=true) "
                f"starts the rerun again: {resume_command()}")
    else:
        since = "from last.ckpt" if attempt.checkpoint.is_file() else "from the start (no epoch had ended)"
        hint = f"the same command resumes it {since}: {resume_command()}"
    print(f"roadmap.run: interrupted by {name}; {hint}", file=sys.stderr)
    return -signum


def _killed_worker_signal(error: Exception) -> int | None:
    """SIGTERM/SIGINT sent to the process group reaches DataLoader workers too: their death is that signal."""
    text = str(error)
    if "DataLoader worker" not in text:
        return None
    for signum, word in ((signal.SIGTERM, "Terminated"), (signal.SIGINT, "Interrupt")):
        if f"killed by signal: {word}" in text:
            return signum
    return None


def _is_out_of_memory(error: Exception) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and ("out of memory" in str(error) or "can't allocate memory" in str(error)))


def _out_of_memory_message(plan: RunPlan) -> str:
    cfg = plan.cfg
    per_device = plan.per_device_batch
    smaller = [b for b in valid_per_device_batches(plan.global_batch, plan.devices * int(cfg.trainer.num_nodes))
               if b < per_device and (b % 2 == 0 or not plan.mixing)]
    if not smaller:
        return (f"out of memory at trainer.per_device_batch={per_device}, the smallest possible here; lower "
                f"data.image_size or use more devices")
    return (f"out of memory at trainer.per_device_batch={per_device}: run the same command with "
            f"trainer.per_device_batch={smaller[-1]} (same recipe.global_batch={plan.global_batch}, more "
            f"accumulation; it resumes as the same run): {resume_command()} trainer.per_device_batch={smaller[-1]}")


@hydra.main(config_path=str(conf_dir()), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import lightning.pytorch  # noqa: F401 - it sets up its loggers on import

    # Lightning, imported before Hydra set up logging, gave its loggers a stderr handler of their own:
    # its warnings go to Hydra's handlers (console + run.log) instead, and stderr is left to the one
    # line of a fault. So do Python's warnings (Lightning's hints): they are log lines, not faults.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.WARNING)  # its info lines (GPU available: …) say nothing the summary does not
    logging.captureWarnings(True)
    logging.raiseExceptions = False  # a full disk must not turn every log line into a traceback
    raise_on_signals()
    code = execute(cfg)
    if code < 0:
        exit_by_signal(-code)
    if code:
        sys.exit(code)


USER_ARGV: list[str] = []  # the command line as typed, before rung_argv adds the deltas


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    USER_ARGV = list(sys.argv)
    sys.argv = rung_argv("roadmap.run", "train")
    main()
