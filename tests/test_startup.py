"""A run says what it is when it starts: rung, output, devices and batch, data, schedule."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import SMOKE, TINY
from tests.processes import run_python


def test_a_run_starts_with_a_summary_block(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "roadmap.run", "step=gelu", *SMOKE, *TINY, f"output_root={tmp_path}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "" and "Warning" not in proc.stdout  # no warning in a smoke run, ours or a library's
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


def test_the_first_epoch_is_validated_and_the_run_trains_as_without_it(tmp_path: Path) -> None:
    """trainer.check_val_every_n_epoch=2 over 3 epochs: trainer.validate_first_epoch (on by default) adds
    a validation after epoch 0, so a run shows an accuracy early, and the run trains as without it: the
    same losses, bit for bit, and the same final accuracy (a persistent loader worker included)."""
    import pandas as pd

    args = ["step=patchify_stem", *SMOKE, "recipe.epochs=3", "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1", "trainer.check_val_every_n_epoch=2", "trainer.deterministic=true",
            "data.num_workers=1"]
    runs = {}
    for first in (True, False):
        out = tmp_path / str(first)
        proc = run_python("roadmap.run", [*args, f"trainer.validate_first_epoch={first}", f"output_root={out}"],
                          cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[first] = pd.read_csv(out / "smoke" / "r50" / "patchify_stem" / "seed0" / "metrics.csv"), proc.stdout
    (early, log), (plain, _) = runs[True], runs[False]
    assert early["val/top1"].notna().tolist() == [True, True, True]  # the last: the validation after the fit
    assert plain["val/top1"].notna().tolist() == [False, True, True]
    assert early["train/loss"].tolist() == plain["train/loss"].tolist()
    assert early["val/top1"].iloc[1:].tolist() == plain["val/top1"].iloc[1:].tolist()
    assert "validation after epoch 0, then every 2 epoch(s) and after the last" in log
