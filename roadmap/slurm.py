"""launcher=slurm: one submitit job per rung.

Each job runs `python -m roadmap.run …` in every SLURM task (one task per GPU, on every node), so
Lightning finds its SLURM environment and forms the DDP process group itself. A job that is
preempted or reaches its time limit is requeued by submitit (`checkpoint`), and a job requeued by
`scontrol requeue` starts again by itself (`--requeue`); either way the run resumes from the
last.ckpt in its deterministic output directory.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit
from omegaconf import DictConfig, OmegaConf

from roadmap.rundir import RESULT_FILE, read_result, record_job

log = logging.getLogger("roadmap.slurm")



class RungJob(submitit.helpers.Checkpointable):
    """The callable submitit pickles: run one rung; requeued as is on preemption/timeout."""

    def __init__(self, command: list[str], cwd: str) -> None:
        self.command = command
        self.cwd = cwd

    def __call__(self) -> int:
        env = submitit.JobEnvironment()
        print(f"roadmap: task {env.global_rank}/{env.num_tasks} of job {env.job_id} "
              f"(restart {os.environ.get('SLURM_RESTART_COUNT', '0')}): {' '.join(self.command)}", flush=True)
        code = subprocess.run(self.command, cwd=self.cwd).returncode
        if code < 0:
            # Killed by a signal: Slurm is ending the job (`scontrol requeue`, preemption) and will
            # rerun it. Writing a result now would make submitit report the job finished while the
            # rerun goes on, so wait to be killed; the rerun resumes from last.ckpt.
            print(f"roadmap: the run got signal {-code}; waiting for SLURM to requeue or end the job", flush=True)
            time.sleep(24 * 3600)
        if code != 0:
            raise RuntimeError(f"roadmap.run exited with {code}")
        return code


def executor_for(cfg: DictConfig) -> submitit.AutoExecutor:
    launcher, trainer = cfg.launcher, cfg.trainer
    gpus = launcher.gpus_per_node
    if gpus is None:
        gpus = int(launcher.tasks_per_node) if trainer.accelerator in ("gpu", "cuda") else 0
    additional = {"requeue": True, **OmegaConf.to_container(launcher.additional_parameters)}
    executor = submitit.AutoExecutor(
        folder=str(Path(launcher.folder) / "%j"), cluster="slurm", slurm_max_num_timeout=int(launcher.max_requeues)
    )
    params: dict[str, Any] = {
        "nodes": int(launcher.nodes),
        "tasks_per_node": int(launcher.tasks_per_node),
        "gpus_per_node": int(gpus),
        "cpus_per_task": int(launcher.cpus_per_task),
        "timeout_min": int(launcher.timeout_min),
        "slurm_signal_delay_s": int(launcher.signal_delay_s),
        "slurm_setup": list(launcher.setup),
        "slurm_additional_parameters": additional,
    }
    optional = {"slurm_partition": launcher.partition, "slurm_account": launcher.account,
                "slurm_qos": launcher.qos, "slurm_constraint": launcher.constraint, "mem_gb": launcher.mem_gb}
    params.update({k: v for k, v in optional.items() if v is not None})
    if not gpus:
        params.pop("gpus_per_node")
    executor.update_parameters(**params)
    return executor


# Slurm states after which a job never runs again (REQUEUED, COMPLETING, PENDING, … are not final).
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "DEADLINE", "BOOT_FAIL")


def _finished(rung: Any, job: submitit.Job, submitted: float) -> bool:
    """The rung wrote its result.json after submission, or its job ended for good. submitit's
    `done()` alone is not enough: a requeued job passes through states it counts as done."""
    result = rung.out_dir / RESULT_FILE
    if result.is_file() and result.stat().st_mtime >= submitted and read_result(rung.out_dir)["status"] != "interrupted":
        return True  # an interrupted run (preempted, requeued) goes on
    return job.state.upper().startswith(FINAL_STATES)


def launch_slurm(rungs: list[Any], passed_on: list[str], cfg: DictConfig) -> dict[str, int]:
    """Submit one job per rung; with launcher.wait, wait for all and return {label: 0 or 1}."""
    executor = executor_for(cfg)
    jobs = {}
    for rung in rungs:
        executor.update_parameters(name=f"roadmap:{rung.label}")
        job = executor.submit(RungJob(rung.command(passed_on), os.getcwd()))
        record_job(rung.out_dir, job.job_id)
        log.info("submitted %s as SLURM job %s", rung.label, job.job_id)
        jobs[rung.label] = (rung, job)
    if not cfg.launcher.wait:
        return {}
    submitted = time.time()
    while not all(_finished(rung, job, submitted) for rung, job in jobs.values()):
        time.sleep(float(cfg.launcher.poll_s))
    codes = {}
    for label, (rung, job) in jobs.items():
        result = read_result(rung.out_dir)
        ok = result is not None and result.get("status") == "completed"
        codes[label] = 0 if ok else 1
        if not ok:
            print(f"roadmap.sweep: {label}: SLURM job {job.job_id} ended {job.state}; logs in {job.paths.folder}",
                  file=sys.stderr)
    return codes
