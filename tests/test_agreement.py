"""Agreement of a proxy's rankings with the paper, beside predictors that train nothing, with
bootstrap intervals over seeds: a four-rung fixture whose answers are worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from roadmap.analysis.markdown import agreement_table
from roadmap.statistics import bootstrap_agreement, gain_agreement, ordered_pairs, spearman


@pytest.fixture()
def table() -> pd.DataFrame:
    """Paper top-1 rises a → b → c → d (six pairs, all ≥ 0.5 apart); ours swaps b and c."""
    paper = [78.0, 79.0, 80.0, 81.0]
    return pd.DataFrame({
        "step": ["a", "b", "c", "d"], "adopted": "yes", "parent": [None, "a", "b", "c"],
        "paper_top1": paper, "paper_gain": [np.nan, 1.0, 1.0, 1.0],
        "top1_mean": [60.0, 70.0, 65.0, 80.0], "top1_ema_mean": [60.0, 70.0, 65.0, 80.0],
        "train_loss_sum_mean": [4.0, 3.0, 2.0, 1.0],  # lower ranks higher: the paper's order exactly
        "gmacs": [4.0, 4.0, 2.0, 5.0], "params": [1.0, 2.0, 3.0, 4.0],
    })


def _runs(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"step": s, "top1": v, "top1_ema": v, "train_loss_sum": 5.0 - i}
                         for i, (s, vs) in enumerate(values.items()) for v in vs])


def test_rankings_by_hand(table: pd.DataFrame) -> None:
    assert spearman(table)[0] == pytest.approx(0.8)  # 1 - 6·2 / (4·15)
    assert ordered_pairs(table) == (5, 6) and gain_agreement(table) == (2, 3)
    assert spearman(table, "train_loss_sum_mean", lower_is_better=True)[0] == pytest.approx(1.0)
    # MACs (ties count for no pair and no sign): ranks (2.5, 2.5, 1, 4) against (1, 2, 3, 4)
    assert spearman(table, "gmacs")[0] == pytest.approx(1 / math.sqrt(10))
    assert ordered_pairs(table, column="gmacs") == (3, 6) and gain_agreement(table, "gmacs") == (1, 3)


def test_bootstrap_interval_over_seeds(table: pd.DataFrame) -> None:
    separated = _runs({"a": [59, 61], "b": [69, 71], "c": [64, 66], "d": [79, 81]})
    (rho_low, rho_high), (pairs_low, pairs_high) = bootstrap_agreement(table, separated, "top1_mean", False, "top1")
    assert (rho_low, rho_high, pairs_low, pairs_high) == pytest.approx((0.8, 0.8, 5, 5))  # no draw reorders them
    overlapping = _runs({"a": [59, 61], "b": [60, 75], "c": [62, 68], "d": [79, 81]})  # b and c swap in some draws
    (rho_low, rho_high), (pairs_low, pairs_high) = bootstrap_agreement(table, overlapping, "top1_mean", False, "top1")
    assert rho_low == pytest.approx(0.8) and rho_high == pytest.approx(1.0) and (pairs_low, pairs_high) == (5, 6)
    assert bootstrap_agreement(table, _runs({s: [70.0] for s in "abcd"}), "top1_mean", False, "top1") is None


def test_the_report_table_shows_the_null_baseline_and_says_when_no_interval_can_be_given(table) -> None:
    one_seed = agreement_table(table, _runs({s: [v] for s, v in zip("abcd", table["top1_mean"])}))
    assert "| our top-1 | 0.800 | 5 of 6 | 2 of 3 |" in one_seed
    assert "| MACs at the run's resolution (trains nothing) | 0.316 | 3 of 6 | 1 of 3 |" in one_seed
    assert "| parameters (trains nothing) | 1.000 | 6 of 6 | 3 of 3 |" in one_seed
    assert "No interval where every rung has one seed." in one_seed
    two_seeds = agreement_table(table, _runs({"a": [59, 61], "b": [69, 71], "c": [64, 66], "d": [79, 81]}))
    assert "| our top-1 | 0.800 [0.80, 0.80] | 5 of 6 [5, 5] | 2 of 3 |" in two_seeds
    assert "No interval" not in two_seeds


def test_a_run_recorded_without_val_loss_gets_its_last_validation_loss(tmp_path) -> None:
    import json

    from roadmap.analysis import load_results
    from roadmap.rundir import run_dir

    out = run_dir(tmp_path, "old", "r50", "gelu", None, 0)
    out.mkdir(parents=True)
    (out / "result.json").write_text(json.dumps({"regime": "r50", "step": "gelu", "seed": 0, "status": "completed",
                                                 "top1": 50.0}))
    (out / "metrics.csv").write_text("epoch,train/loss,val/loss\n0,2.0,1.9\n1,1.5,\n2,1.2,1.4\n3,1.1,\n")
    row = load_results(tmp_path / "old").iloc[0]
    assert row["val_loss"] == 1.4 and row["train_loss_sum"] == pytest.approx(5.8)

