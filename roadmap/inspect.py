"""`python -m roadmap.inspect [regime=r200] [model.width_mult=0.5 image_size=64]`: one table of
every rung (params, GMACs, the paper's GFLOPs and top-1, what the step changed).
`python -m roadmap.inspect step=gelu [experiment=…]` (or `deltas=[…]`): that rung's resolved run
config, composed with its deltas as `roadmap.run` composes it (`--cfg job` shows it unresolved)."""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from roadmap import build_model
from roadmap.reference import paper_table
from roadmap.ladder import LadderError, changed_fields, conf_dir, list_steps, rung_argv
from roadmap.model.complexity import complexity
from roadmap.model.factory import FactoryError


CHANGE_WIDTH = 60  # a table cell; `inspect step=…` shows the whole config


def describe_change(step: str, regime: str, baseline: str) -> str:
    """What `step` itself changes, as `key=value` pairs, cut to one short cell ("the baseline" for the baseline)."""
    if step == baseline:
        return "the baseline"
    text = ", ".join(f"{k}={v}" for k, v in changed_fields(step, regime).items())
    return text if len(text) <= CHANGE_WIDTH else text[: CHANGE_WIDTH - 1] + "…"


def table_text(table: pd.DataFrame) -> str:
    """The table as text: numbers right-aligned, text left-aligned (pandas right-aligns every column)."""
    def decimals(column: pd.Series) -> int:
        return max((len(repr(float(v)).split(".")[1]) for v in column.dropna()), default=0)

    places = {c: decimals(table[c]) for c in table.columns if pd.api.types.is_float_dtype(table[c])}
    cells = {c: ["-" if pd.isna(v) else f"{v:.{places[c]}f}" if c in places else str(v) for v in table[c]]
             for c in table.columns}
    widths = {c: max(len(c), *map(len, cells[c])) for c in table.columns}
    numeric = {c: pd.api.types.is_numeric_dtype(table[c]) for c in table.columns}

    def line(values: dict[str, str]) -> str:
        return "  ".join(v.rjust(widths[c]) if numeric[c] else v.ljust(widths[c]) for c, v in values.items()).rstrip()

    rows = [line({c: c for c in table.columns})]
    rows += [line({c: cells[c][i] for c in table.columns}) for i in range(len(table))]
    return "\n".join(rows)


def complexity_table(regime: str, overrides: dict | None = None, image_size: int = 224, all_steps: bool = True) -> pd.DataFrame:
    """Per rung: step, adopted, params_m, gmacs, paper_gflops, paper_top1, change."""
    import torch

    paper = paper_table(regime).set_index("step")
    baseline = list_steps(regime)[0]
    rows = []
    for step in list_steps(regime, adopted_only=not all_steps):
        with torch.device("meta"):  # counts need shapes only
            counts = complexity(build_model(step, regime, **(overrides or {})), image_size)
        ref = paper.loc[step] if step in paper.index else None
        rows.append(
            {
                "step": step,
                "adopted": "yes" if ref is None else ref["adopted"],
                "params_m": round(counts["params"] / 1e6, 3),
                "gmacs": round(counts["gmacs"], 4),
                "paper_gflops": None if ref is None else ref["paper_gflops"],
                "paper_top1": None if ref is None else ref["paper_top1"],
                "change": describe_change(step, regime, baseline),
            }
        )
    return pd.DataFrame(rows)


@hydra.main(config_path=str(conf_dir()), config_name="inspect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from roadmap.plan import RunConfigError, plan_run

    try:
        if cfg.step is None and cfg.deltas is None:
            given = [o.split("=", 1)[0].lstrip("+") for o in HydraConfig.get().overrides.task]
            overrides = {k.removeprefix("model."): OmegaConf.select(cfg, k) for k in given if k.startswith("model.")}
            table = complexity_table(cfg.regime.name, overrides, int(cfg.image_size), bool(cfg.all_steps))
            print(f"regime {cfg.regime.name}: GMACs at {cfg.image_size}px, 1000 classes; paper numbers: ImageNet-1K 224px")
            print(table_text(table))
        else:
            with open_dict(cfg):  # inspect's own keys are not part of the run's config (or its hash)
                del cfg.image_size, cfg.all_steps
            plan = plan_run(cfg)
            print(OmegaConf.to_yaml(plan.cfg), end="")
            print(f"# output_dir: {plan.out_dir}\n# accumulate: {plan.accumulate}\n# config_hash: {plan.config_hash}")
    except (LadderError, RunConfigError, FactoryError) as error:
        print(f"roadmap.inspect: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    sys.argv = rung_argv("roadmap.inspect", "inspect")
    main()
