"""A run says what it is when it starts: rung, output, devices and batch, data, schedule."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import SMOKE, TINY


def test_a_run_starts_with_a_summary_block(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "roadmap.run", "step=gelu", *SMOKE, *TINY, f"output_root={tmp_path}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line.split(" - ", 1)[1] for line in (proc.stdout + proc.stderr).splitlines() if "][roadmap.run][INFO] - " in line]
    out = tmp_path / "smoke" / "r50" / "gelu" / "seed0"
    assert lines[:5] == [
        "run: experiment smoke, rung r50/gelu, seed 0: a fresh run",
        f"output: {out} (log: {out / 'run.log'})",
        "device: cpu x 1 x 1 node(s), precision 32-true; batch 8 per device x 2 accumulated = 16",
        "data: imagenette at 32 px, 200 train / 100 val images, from " + SMOKE[1].split("=", 1)[1],
        "schedule: 1 epochs, 1 optimizer steps (1 per epoch); validation every 1 epoch(s) and after the last",
    ]
    assert lines[0] in (out / "run.log").read_text()
