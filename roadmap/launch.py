"""Launching a sweep's rungs on this machine: one `python -m roadmap.run` child process per rung,
one after another (launcher=local) or several at a time on their own devices (local_parallel).
SLURM jobs: `roadmap.slurm`."""
from __future__ import annotations

import logging
import os
import subprocess
import time

from omegaconf import DictConfig

from roadmap.preset import Rung, SweepError, status_of
from roadmap.rundir import EXIT_BUSY, STDOUT_LOG, read_result
from roadmap.signals import Interrupted, was_interrupted

log = logging.getLogger("roadmap.sweep")


def visible_devices(slot: int, devices_per_run: int, runs_per_device: int) -> str:
    """CUDA_VISIBLE_DEVICES of the run in parallel slot `slot`: `runs_per_device` consecutive slots share
    one group of `devices_per_run` GPUs (slot // runs_per_device is the group)."""
    first = slot // runs_per_device * devices_per_run
    return ",".join(str(first + i) for i in range(devices_per_run))


def launch_local(rungs: list[Rung], passed_on: list[str], launcher: DictConfig, trainer_devices: int) -> dict[str, int]:
    """Run rungs as child processes, `max_parallel` at a time (1 for launcher=local), `runs_per_device`
    of them on each device group; each child's output goes to its run directory's stdout.log. A rung that another
    sweep has finished or started by its turn is skipped, so that two sweeps of one ladder share its
    rungs. Returns {label: exit code} of the rungs started."""
    parallel = int(launcher.get("max_parallel", 1))
    per_run = int(launcher.get("devices_per_run", trainer_devices) or 1)
    sharing = launcher.get("runs_per_device", 1)
    if isinstance(sharing, bool) or not isinstance(sharing, int) or sharing < 1:
        raise SweepError(f"launcher.runs_per_device={sharing!r} must be an integer >= 1")
    threads = max(1, (os.cpu_count() or 1) // parallel)
    pending, running, codes = list(rungs), {}, {}
    free_slots = list(range(parallel))
    try:
        while pending or running:
            while pending and free_slots:
                rung = pending.pop(0)
                state = status_of(rung)
                if state in ("done", "running"):  # another sweep finished or started it since the plan
                    log.info("skip  %s: %s elsewhere since the sweep started", rung.label, state)
                    continue
                slot = free_slots.pop(0)
                env = dict(os.environ)
                if parallel > 1:
                    env["OMP_NUM_THREADS"] = str(threads)
                    if os.environ.get("CUDA_VISIBLE_DEVICES") is None and _gpu_count() > 0:
                        env["CUDA_VISIBLE_DEVICES"] = visible_devices(slot, per_run, sharing)
                rung.out_dir.mkdir(parents=True, exist_ok=True)
                stream = open(rung.out_dir / STDOUT_LOG, "a")
                log.info("start %s", rung.label)
                proc = subprocess.Popen(rung.command(passed_on), env=env, stdout=stream, stderr=subprocess.STDOUT)
                running[proc] = (rung, slot, stream, time.monotonic())
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                rung, slot, stream, started = running.pop(proc)
                stream.close()
                free_slots.append(slot)
                if proc.returncode == EXIT_BUSY:  # another sweep started it between our check and its lock
                    log.info("skip  %s: running elsewhere (started by another process meanwhile)", rung.label)
                    continue
                codes[rung.label] = proc.returncode
                log.info("end   %s: %s in %.0fs", rung.label, _outcome(rung, proc.returncode), time.monotonic() - started)
    except Interrupted as stop:  # pass the signal on to the running rungs; each stops as a resumable run
        for proc, (rung, _, stream, _) in running.items():
            proc.send_signal(stop.signum)
            proc.wait()
            stream.close()
            codes[rung.label] = proc.returncode
            log.info("end   %s: %s", rung.label, _outcome(rung, proc.returncode))
        raise
    return codes


def stopped_by_signal(rung: Rung, code: int) -> bool:
    """Its process died of SIGTERM/SIGINT, or (a SLURM job's exit code says less) its result says so."""
    result = read_result(rung.out_dir)
    return was_interrupted(code) or (result is not None and result.get("status") == "interrupted")


def _outcome(rung: Rung, code: int) -> str:
    if code == 0:
        return "ok"
    what = "interrupted" if was_interrupted(code) else "FAILED"
    return f"{what} (exit {code}, see {rung.out_dir / STDOUT_LOG})"


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()
