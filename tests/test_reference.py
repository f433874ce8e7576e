"""The paper's numbers shipped as package data equal ../shared/reference/ladder.csv."""
from __future__ import annotations

import math

from roadmap.reference import CITATION, paper_ladder


def test_package_data_equals_shared_reference(ladder_rows: list[dict[str, str]]) -> None:
    ours = paper_ladder()
    assert len(ladder_rows) == 34 and list(ours["step"][34:]) == ["classic_recipe"]  # cited in its note
    for (_, row), ref in zip(ours.iterrows(), ladder_rows):
        for key in ("regime", "step", "title", "adopted", "note"):
            assert row[key] == ref[key]
        assert int(row["order"]) == int(ref["order"])
        for key in ("paper_top1", "paper_top1_std", "paper_gflops"):
            expected = float(ref[key]) if ref[key] else math.nan
            assert (math.isnan(expected) and math.isnan(row[key])) or row[key] == expected
    assert "2201.03545" in CITATION
    assert list(paper_ladder("r200")["regime"].unique()) == ["r200"]


def test_the_classic_recipe_row_is_the_papers_training_techniques_step() -> None:
    row = paper_ladder("r50").set_index("step").loc["classic_recipe"]
    assert row["paper_top1"] == 76.13 and row["adopted"] == "no" and "§2.1" in row["note"]
