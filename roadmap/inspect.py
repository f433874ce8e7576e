"""`python -m roadmap.inspect [regime=r200] [model.width_mult=0.5 image_size=64]`: one table of
every rung (params, GMACs, the paper's GFLOPs and top-1, what the step changed); `regime=family`:
the family table (params with the 1K and 22K heads, GMACs at 224 and 384 px, the paper's top-1).
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
from roadmap.model.complexity import complexity, count_params
from roadmap.model.factory import FactoryError


CHANGE_WIDTH = 60  # a table cell; `inspect step=…` shows the whole config
IMAGENET_22K_CLASSES = 21841
# The family table's paper columns (../shared/reference/family.csv's names): `paper_figures`' columns.
FAMILY_TOP1 = {"top1_1k_224": "paper_top1", "top1_1k_384": "paper_top1_384",
               "top1_22k_224": "paper_top1_22k", "top1_22k_384": "paper_top1_22k_384"}


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


def family_table(regime: str, overrides: dict | None = None) -> pd.DataFrame:
    """Per model (adopted rung): model, depths, dims, params_1k and params_22k (1000- and 21,841-class
    heads), gmacs_224 and gmacs_384 (1000 classes), and the paper's top-1 (FAMILY_TOP1)."""
    import torch

    from roadmap.analysis.tables import paper_figures

    paper = paper_figures(regime).set_index("step")
    rows = []
    for step in list_steps(regime):
        with torch.device("meta"):  # counts need shapes only
            model = build_model(step, regime, **(overrides or {}))
            head_22k = build_model(step, regime, **{**(overrides or {}), "num_classes": IMAGENET_22K_CLASSES})
        at_224, at_384 = complexity(model, 224), complexity(model, 384)
        rows.append(
            {
                "model": step,
                "depths": "-".join(map(str, model.cfg.depths)),
                "dims": "-".join(map(str, model.cfg.stage_widths())),
                "params_1k": at_224["params"],
                "params_22k": count_params(head_22k),
                "gmacs_224": round(at_224["gmacs"], 4),
                "gmacs_384": round(at_384["gmacs"], 4),
                **{column: paper.at[step, given] for column, given in FAMILY_TOP1.items()},
            }
        )
    return pd.DataFrame(rows)


def table_report(regime: str, overrides: dict | None = None, image_size: int = 224, all_steps: bool = True) -> str:
    """What `python -m roadmap.inspect [regime=…]` prints: a header line, then the regime's table
    (`complexity_table`; the family's: `family_table`, at 224 and 384 px whatever `image_size`)."""
    from roadmap.analysis.tables import FAMILY_REGIME  # here: the analysis package imports matplotlib and scipy

    if regime == FAMILY_REGIME:
        header = (f"regime {regime}: params with 1000- and {IMAGENET_22K_CLASSES}-class heads; GMACs at 224 and 384px, "
                  "1000 classes; top1_*: the paper's ImageNet-1K top-1, trained on 1K or pre-trained on 22K")
        return f"{header}\n{table_text(family_table(regime, overrides))}"
    header = f"regime {regime}: GMACs at {image_size}px, 1000 classes; paper numbers: ImageNet-1K 224px"
    return f"{header}\n{table_text(complexity_table(regime, overrides, image_size, all_steps))}"


@hydra.main(config_path=str(conf_dir()), config_name="inspect", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from roadmap.plan import RunConfigError, plan_run

    try:
        if cfg.step is None and cfg.deltas is None:
            given = [o.split("=", 1)[0].lstrip("+") for o in HydraConfig.get().overrides.task]
            overrides = {k.removeprefix("model."): OmegaConf.select(cfg, k) for k in given if k.startswith("model.")}
            print(table_report(cfg.regime.name, overrides, int(cfg.image_size), bool(cfg.all_steps)))
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
