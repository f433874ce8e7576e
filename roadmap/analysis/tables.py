"""The ladder table of a regime: our numbers per rung beside the paper's, in ladder order."""
from __future__ import annotations

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from roadmap.ladder import LadderError, known_regime, ladder_order, list_steps, load_regime, step_chain
from roadmap.reference import PAPER_COLUMNS, paper_table

DEFAULT_REGIME = "r50"
FAMILY_REGIME = "family"  # the ConvNeXt family: `roadmap.inspect`'s family table, every report's family panel
# The `regime.paper` keys beyond `paper_table`'s: ImageNet-1K top-1 at 384 px, and after ImageNet-22K
# pre-training at 224 and 384 px (the family's, conf/regime/family.yaml).
PAPER_EXTRAS = ("top1_384", "top1_22k", "top1_22k_384")


def paper_figures(regime: str) -> pd.DataFrame:
    """`reference.paper_table` with the regime's `regime.paper` PAPER_EXTRAS as `paper_<key>` columns
    (NaN where it gives none)."""
    table = paper_table(regime)
    given = load_regime(regime).get("paper") if known_regime(regime) else None
    block = OmegaConf.to_container(given) if given else {}
    extras = {f"paper_{key}": [block.get(step, {}).get(key) for step in table["step"]] for key in PAPER_EXTRAS}
    return table.assign(**extras).astype({column: float for column in extras})


def parent_step(regime: str, step: str) -> str | None:
    """The rung `step` is one delta away from (a branch's parent is the rung it branches off)."""
    try:
        spec = load_regime(regime)
        chain = step_chain(step, regime)
    except LadderError:
        return None
    if step == spec.baseline:
        return None
    return chain[-2] if len(chain) >= 2 else spec.baseline


def ladder_table(summary: pd.DataFrame, regime: str = DEFAULT_REGIME) -> pd.DataFrame:
    """One row per paper rung (and per extra step we ran), in ladder order, our numbers beside the
    paper's, `number` (the README's; -1 off the adopted path), `parent`, and `gain` / `paper_gain`
    over the parent rung. A rung that ran has the paper columns of the results table (`summary`);
    one that has not, ours NaN and the paper's from `reference.paper_table`. Reference rows (Swin,
    adopted = "ref") come last."""
    paper = paper_table(regime).drop(columns="regime")
    ours = summary[(summary["regime"] == regime) & (summary["variant"].fillna("") == "")]
    ours = ours.drop(columns=["regime", "variant", "order"]).merge(paper.drop(columns=PAPER_COLUMNS), on="step", how="left")
    not_run = paper[(paper["order"] >= 0) & ~paper["step"].isin(ours["step"])]  # the recipe step (< 0): once run
    frames = [df for df in (ours, not_run.reindex(columns=ours.columns)) if not df.empty]
    table = pd.concat(frames, ignore_index=True) if frames else ours
    # A step we ran that the paper's table lacks gets its ladder position and adoption here.
    adopted_steps = list_steps(regime) if known_regime(regime) else []
    table["order"] = [o if pd.notna(o) else ladder_order(regime, s) for o, s in zip(table["order"], table["step"])]
    table["adopted"] = [
        a if isinstance(a, str) else ("yes" if s in adopted_steps or not adopted_steps else "no")
        for a, s in zip(table["adopted"], table["step"])
    ]
    table = table.sort_values("order", kind="stable").reset_index(drop=True)
    table["number"] = (table["adopted"] == "yes").cumsum() - 1  # README's numbering: adopted rungs only
    table.loc[table["adopted"] != "yes", "number"] = -1
    table["parent"] = [parent_step(regime, s) for s in table["step"]]
    by_step = table.set_index("step")
    for ours_col, gain_col in (("top1_mean", "gain"), ("paper_top1", "paper_gain")):
        table[gain_col] = [
            row[ours_col] - by_step.at[row["parent"], ours_col] if row["parent"] in by_step.index else np.nan
            for _, row in table.iterrows()
        ]
    return table


def missing_rungs(summary: pd.DataFrame, regime: str = DEFAULT_REGIME, adopted_only: bool = True) -> list[str]:
    """Rungs of the regime with no completed run yet, in ladder order."""
    done = set(summary.loc[(summary["regime"] == regime) & (summary["variant"].fillna("") == ""), "step"])
    return [s for s in list_steps(regime, adopted_only=adopted_only) if s not in done]
