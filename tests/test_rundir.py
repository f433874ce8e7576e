"""roadmap.rundir: the one owner of the run directory — the layout that every consumer asks for."""
from __future__ import annotations

from pathlib import Path

import pytest

from roadmap.ladder import compose_run
from roadmap.plan import plan_run
from roadmap.rundir import experiment_dir, list_runs, run_dir, run_label
from tests.conftest import SMOKE


def _plan(tmp_path: Path, *overrides: str):
    return plan_run(compose_run(["step=gelu", *SMOKE, f"output_root={tmp_path}", *overrides]))


def test_a_run_writes_where_rundir_says(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "variant=lr_half", "seed=3")
    assert plan.out_dir == run_dir(tmp_path, "smoke", "r50", "gelu", "lr_half", 3)
    assert plan.out_dir == experiment_dir(tmp_path, "smoke") / run_label("r50", "gelu", "lr_half", 3)
    assert plan.out_dir.relative_to(tmp_path).parts == ("smoke", "r50", "gelu-lr_half", "seed3")


def test_listing_finds_a_run_by_its_record(tmp_path: Path) -> None:
    out = run_dir(tmp_path, "smoke", "r50", "gelu", "lr_half", 3)
    out.mkdir(parents=True)
    (out / "config.yaml").write_text("step: gelu\nvariant: lr_half\nseed: 3\nregime: {name: r50}\n")
    [run] = list_runs(experiment_dir(tmp_path, "smoke"))
    assert (run.regime, run.rung, run.step, run.variant, run.seed, run.path) == ("r50", "gelu-lr_half", "gelu", "lr_half", 3, out)


def test_two_variants_of_one_rung_get_two_wandb_run_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    from roadmap.wandb_logging import build_wandb_logger

    names = {build_wandb_logger(_plan(tmp_path, "logger=wandb", f"variant={v}"))._wandb_init["name"]
             for v in ("lr_half", "lr_double", "null")}
    assert names == {"smoke/r50/gelu-lr_half/seed0", "smoke/r50/gelu-lr_double/seed0", "smoke/r50/gelu/seed0"}

