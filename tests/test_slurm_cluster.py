"""A real one-node SLURM cluster on localhost (tests/slurm_cluster.py), and submitit against it.

Starts slurmctld/slurmd (installs slurm-wlm with apt-get on first use); skipped when the machine
cannot run it (not root, no apt-get and no slurmctld). In the default set (nothing faster covers a
real cluster), on one xdist worker with tests/test_sweep_slurm.py (tests/conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

try:
    from tests.slurm_cluster import job_info, requeue, slurm_cluster, wait_for_state  # noqa: F401
except ImportError:  # tests/ itself on sys.path (pytest's default rootdir handling)
    from slurm_cluster import job_info, requeue, slurm_cluster, wait_for_state  # noqa: F401


def _result(job, timeout: float = 90.0):
    """job.result(), but never hang: submitit waits forever if the cluster disappears."""
    deadline = time.monotonic() + timeout
    while not job.done():
        if time.monotonic() > deadline:
            pytest.fail(f"submitit job {job.job_id} not done after {timeout}s (state {job.state})")
        time.sleep(0.5)
    return job.result()


def _wait_for_file(path: Path, timeout: float = 30.0, predicate=lambda text: bool(text)) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text()
            if predicate(text):
                return text
        time.sleep(0.2)
    raise AssertionError(f"{path} not as expected after {timeout}s: {text!r}")


def test_sbatch_wrap_completes(slurm_cluster, tmp_path):
    out = tmp_path / "hello.txt"
    job_id = slurm_cluster.sbatch(
        ["-o", str(tmp_path / "slurm-%j.out"), "--wrap", f"echo hello $SLURM_JOB_ID > {out}"]
    )
    assert wait_for_state(job_id, "COMPLETED", timeout=30, env=slurm_cluster.env) == "COMPLETED"
    assert out.read_text().strip() == f"hello {job_id}"
    info = job_info(job_id, slurm_cluster.env)
    assert info["ExitCode"] == "0:0"
    assert info["Partition"] == slurm_cluster.partition


def test_requeue_reruns_job_with_restart_count(slurm_cluster, tmp_path):
    log = tmp_path / "restarts.txt"
    script = f'echo "restart=${{SLURM_RESTART_COUNT:-0}}" >> {log}; sleep 3'
    job_id = slurm_cluster.sbatch(
        ["--requeue", "--open-mode=append", "-o", str(tmp_path / "slurm-%j.out"), "--wrap", script]
    )
    wait_for_state(job_id, "RUNNING", timeout=30, env=slurm_cluster.env)
    _wait_for_file(log)
    requeue(job_id, slurm_cluster.env)
    wait_for_state(job_id, "COMPLETED", timeout=30, env=slurm_cluster.env)
    assert log.read_text().split() == ["restart=0", "restart=1"]
    assert job_info(job_id, slurm_cluster.env)["Restarts"] == "1"


def test_sacct_shim_reports_scontrol_states(slurm_cluster, tmp_path):
    job_id = slurm_cluster.sbatch(["-o", str(tmp_path / "o-%j"), "--wrap", "exit 3"])
    wait_for_state(job_id, "FAILED", timeout=30, env=slurm_cluster.env)
    out = slurm_cluster.run("sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", job_id).stdout
    assert out.splitlines() == ["JobID|State|NodeList", f"{job_id}|FAILED|{slurm_cluster.node}"]


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    """submitit calls sbatch/sacct/scancel itself, from os.environ: put the cluster's env there."""
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    return slurm_cluster


def _executor(folder: Path, cluster):
    submitit = pytest.importorskip("submitit")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(timeout_min=5, slurm_partition=cluster.partition)
    assert executor.cluster == "slurm"
    return executor


def test_submitit_result_failure_and_cancel(slurm_env, tmp_path):
    submitit = pytest.importorskip("submitit")
    executor = _executor(tmp_path / "submitit", slurm_env)

    # Functions defined here are pickled by value; module-level ones would be pickled by
    # reference and must then be importable by the job's python (same interpreter, same cwd).
    def double(x):
        return 2 * x

    def boom():
        raise ValueError("boom")

    def sleeper():
        import time

        time.sleep(60)

    job = executor.submit(double, 21)
    assert _result(job) == 42

    bad = executor.submit(boom)
    with pytest.raises(submitit.core.utils.FailedJobError, match="boom"):
        _result(bad)

    # A job killed without writing a result is only seen through sacct (here: the shim).
    slow = executor.submit(sleeper)
    wait_for_state(slow.job_id, "RUNNING", timeout=30, env=slurm_env.env)
    subprocess.run(["scancel", slow.job_id], check=True)
    wait_for_state(slow.job_id, "CANCELLED", timeout=30, env=slurm_env.env)
    assert slow.watcher.get_state(slow.job_id, mode="force") == "CANCELLED"
    assert slow.done()
    assert job.watcher.get_state(job.job_id, mode="force") == "COMPLETED"
    assert bad.watcher.get_state(bad.job_id, mode="force") == "FAILED"


def _counter_class():
    import submitit

    class Counter(submitit.helpers.Checkpointable):
        """Counts to n; submitit pickles it (with its progress) on USR2.

        Steps take ``first_pause`` s in the first run (long enough to be interrupted, even by a
        requeue that submitit ignores until KillWait) and 0.2 s once restarted.
        """

        def __init__(self, marks: str, first_pause: float = 1.0):
            self.marks = marks
            self.first_pause = first_pause
            self.step = 0

        def __call__(self, n: int):
            import os
            import time

            restart = os.environ.get("SLURM_RESTART_COUNT", "0")
            with open(self.marks, "a") as fh:
                fh.write(f"step={self.step} restart={restart}\n")
            while self.step < n:
                time.sleep(self.first_pause if restart == "0" else 0.2)
                self.step += 1
            return self.step

    return Counter


def test_submitit_checkpoint_on_preemption_signal(slurm_env, tmp_path):
    """USR2 (submitit's preemption/timeout signal): checkpoint, self-requeue, resume."""
    pytest.importorskip("submitit")
    executor = _executor(tmp_path / "submitit", slurm_env)
    marks = tmp_path / "marks.txt"
    job = executor.submit(_counter_class()(str(marks), first_pause=0.5), 20)
    wait_for_state(job.job_id, "RUNNING", timeout=30, env=slurm_env.env)
    _wait_for_file(marks)
    time.sleep(2)  # make some progress
    job._interrupt()  # scancel --signal SIGTERM, then --signal USR2 (what submitit's own tests do)
    # submitit's handler pickled the Counter and ran `scontrol requeue` from inside the job:
    wait_for_state(job.job_id, "PENDING", timeout=30, env=slurm_env.env)
    assert job_info(job.job_id, slurm_env.env)["Restarts"] == "1"
    slurm_env.release(job.job_id)  # skip Slurm's BeginTime delay (StartTime=now)
    assert _result(job) == 20
    first, second = marks.read_text().splitlines()
    assert first == "step=0 restart=0"
    step, restart = second.split()
    assert restart == "restart=1" and int(step.split("=")[1]) > 0  # resumed, not restarted


def test_submitit_external_requeue_reruns_from_scratch(slurm_env, tmp_path):
    """`scontrol requeue` (SIGTERM, then SIGKILL after KillWait): no checkpoint, plain rerun."""
    pytest.importorskip("submitit")
    executor = _executor(tmp_path / "submitit", slurm_env)
    marks = tmp_path / "marks.txt"
    job = executor.submit(_counter_class()(str(marks), first_pause=2.0), 10)
    wait_for_state(job.job_id, "RUNNING", timeout=30, env=slurm_env.env)
    _wait_for_file(marks)
    time.sleep(1)
    requeue(job.job_id, slurm_env.env)
    assert _result(job) == 10
    assert marks.read_text().splitlines() == ["step=0 restart=0", "step=0 restart=1"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
