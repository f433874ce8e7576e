"""An interrupted run's hint is the command that resumes it, environment included, and its
result.json already says what is known (size, cost, where it resumed from)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import MINI_DATA


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"


def test_the_resume_hint_is_the_command_with_its_environment(tmp_path: Path) -> None:
    data_dir = tmp_path / "shared-data"
    data_dir.mkdir()
    (data_dir / "imagenette2-64").symlink_to(Path(MINI_DATA).resolve())
    out = tmp_path / "out"
    started = {**os.environ, "PYTHONUNBUFFERED": "1", "ROADMAP_DATA_DIR": str(data_dir), "ROADMAP_OUTPUT_DIR": str(out)}
    proc = subprocess.Popen([sys.executable, "-m", "roadmap.run", "step=gelu", "experiment=smoke", "recipe.epochs=3"],
                            cwd=tmp_path, env=started, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    run_dir = out / "smoke" / "r50" / "gelu" / "seed0"
    _wait_for(run_dir / "last.ckpt", proc)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    hint = stderr.strip().splitlines()[-1].split("the same command resumes it from last.ckpt: ", 1)[1]
    assert hint == (f"ROADMAP_DATA_DIR={data_dir} ROADMAP_OUTPUT_DIR={out} "
                    "python -m roadmap.run step=gelu experiment=smoke recipe.epochs=3")
    interrupted = json.loads((run_dir / "result.json").read_text())
    assert interrupted["status"] == "interrupted"
    assert interrupted["params"] > 0 and interrupted["gmacs"] > 0 and interrupted["gmacs_224"] > 0

    bare = {k: v for k, v in os.environ.items() if k not in ("ROADMAP_DATA_DIR", "ROADMAP_OUTPUT_DIR")}
    resumed = subprocess.run(hint.replace("python ", f"{sys.executable} ", 1), shell=True, cwd=tmp_path, env=bare,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    completed = json.loads((run_dir / "result.json").read_text())
    assert completed["status"] == "completed" and completed["resumed_from_step"] >= 1
    assert not (tmp_path / "data").exists()  # the default ./data root was never used
