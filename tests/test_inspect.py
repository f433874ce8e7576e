"""`roadmap.inspect step=…` shows what `roadmap.run step=…` would run."""
from __future__ import annotations

import pytest
from omegaconf import open_dict

from roadmap.inspect import CHANGE_WIDTH, complexity_table, table_report, table_text
from roadmap.ladder import compose_run
from roadmap.plan import plan_run
from tests.conftest import family_rows


@pytest.mark.parametrize("overrides", [["step=gelu"], ["step=kernel_7", "experiment=smoke", "seed=2"],
                                       ["deltas=[gelu,layer_norm]", "recipe.epochs=3"]])
def test_inspect_composes_what_run_runs(overrides: list[str]) -> None:
    shown = compose_run(overrides, "inspect")
    with open_dict(shown):  # inspect's own keys, as roadmap.inspect drops them
        del shown.image_size, shown.all_steps
    inspected, run = plan_run(shown), plan_run(compose_run(overrides, "train"))
    assert inspected.cfg == run.cfg
    assert (inspected.out_dir, inspected.config_hash) == (run.out_dir, run.config_hash)


def test_the_table_says_what_each_step_changed_in_one_short_left_aligned_cell() -> None:
    table = complexity_table("r50")
    changes = dict(zip(table["step"], table["change"]))
    assert changes["resnet50"] == "the baseline"
    assert changes["kernel_7"] == "kernel_size=7" and changes["stage_ratio"] == "depths=[3, 3, 9, 3]"
    assert all(0 < len(cell) <= CHANGE_WIDTH for cell in changes.values())
    assert changes["classic_recipe"].startswith("recipe.epochs=90") and changes["classic_recipe"].endswith("…")
    header, *rows = table_text(table).splitlines()
    assert header.split() == list(table.columns)
    column = header.index("change")
    assert [row[column:] for row in rows] == list(table["change"])  # left-aligned under its header
    assert all(row.startswith(step) for row, step in zip(rows, table["step"]))


def test_regime_family_prints_the_family_table_of_the_reference() -> None:
    """`inspect regime=family`: counts from our counter and the paper's top-1 from the regime's
    paper block, each cell as ../shared/reference/family.csv has it ("-" where it is blank)."""
    header, *lines = table_report("family").splitlines()
    assert header.startswith("regime family: params with 1000- and 21841-class heads")
    columns, *rows = [line.split() for line in lines]
    assert columns == ["model", "depths", "dims", "params_1k", "params_22k", "gmacs_224", "gmacs_384",
                       "top1_1k_224", "top1_1k_384", "top1_22k_224", "top1_22k_384"]
    assert rows == [[row[c] or "-" for c in columns] for row in family_rows()]
