"""launcher=slurm against a real one-node SLURM cluster on localhost (tests/slurm_cluster.py):
a 2-rung smoke sweep, one job requeued with `scontrol requeue` mid-run, resumed from last.ckpt."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import SMOKE


def test_slurm_sweep_requeues_and_resumes(slurm_cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_dir = out / "smoke" / "r50" / "gelu" / "seed0"
    args = [
        "+roadmap=all", "roadmap.steps=[gelu,layer_norm]", *SMOKE,
        f"output_root={out}", "recipe.epochs=8", "launcher=slurm", f"launcher.partition={slurm_cluster.partition}",
        "launcher.cpus_per_task=1", "launcher.poll_s=1", "launcher.timeout_min=30",
        "launcher.setup=['export OMP_NUM_THREADS=1']",
    ]
    sweep = subprocess.Popen([sys.executable, "-m", "roadmap.sweep", *args], cwd=tmp_path,
                             env=slurm_cluster.full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 400
    while not (run_dir / "last.ckpt").exists() and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.2)
    assert (run_dir / "last.ckpt").exists(), "the gelu job never wrote a checkpoint"
    assert not (run_dir / "result.json").exists(), "the gelu job finished before it could be requeued"
    job_id = json.loads((run_dir / "slurm_job.json").read_text())["job_id"]
    slurm_cluster.requeue(job_id)  # scontrol requeue + release

    output, _ = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, output[-4000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "completed"
    assert result["resumed_from_step"] and result["resumed_from_step"] > 0  # went on from last.ckpt
    assert result["optimizer_steps"] == 8 * 4 // 2  # epochs x batches / accumulate, as uninterrupted
    other = json.loads((out / "smoke" / "r50" / "layer_norm" / "seed0" / "result.json").read_text())
    assert other["status"] == "completed"
    logs = "".join(p.read_text() for p in (out / "smoke" / "slurm").rglob(f"{job_id}*.out"))
    assert "(restart 1)" in logs
