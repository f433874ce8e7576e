"""The paper's published numbers, as package data (nothing at run time reads ../shared).

Source: Z. Liu, H. Mao, C.-Y. Wu, C. Feichtenhofer, T. Darrell, S. Xie, "A ConvNet for the
2020s", CVPR 2022 (arXiv:2201.03545v2): Figure 2 and Tables 9–11 (ImageNet-1K top-1 at 224²,
mean and std over 3 seeds in the ResNet-50 regime, single runs in the ResNet-200 regime; GFLOPs).
Rows with adopted = "ref" are reference points (Swin-T, Swin-B) that are not built. The rows of
../shared/reference/ladder.csv come first; after them, `classic_recipe`: ResNet-50 under the
classic recipe, 76.1 in the paper's §2.1 (torchvision's reference recipe gives 76.13).
`paper_table` gives any regime's paper rows: these, or the regime YAML's `regime.paper` block.
"""
from __future__ import annotations

from importlib.resources import files

import pandas as pd
from omegaconf import OmegaConf

from roadmap.ladder import LadderError, list_steps, load_regime

PAPER_COLUMNS = ["paper_top1", "paper_top1_std", "paper_gflops"]
PAPER_ROWS = ["regime", "order", "step", "title", "adopted", *PAPER_COLUMNS]

CITATION = (
    'Liu, Mao, Wu, Feichtenhofer, Darrell, Xie. "A ConvNet for the 2020s". CVPR 2022. '
    "arXiv:2201.03545v2, Figure 2 and Tables 9-11."
)


# ConvNeXt-T (ImageNet-1K weights, top-1 82.1: `init_top1`) as a backbone, the downstream ladder's endpoint:
# Mask R-CNN 3x on COCO (Table 3) and UperNet 160k on ADE20K (Table 4, single-scale and multi-scale + flip);
# family.md and family.csv.
PAPER_DOWNSTREAM = {
    "detection": {"ap_box": 46.2, "ap_box_50": 67.9, "ap_box_75": 50.8, "ap_mask": 41.7, "ap_mask_50": 65.0,
                  "ap_mask_75": 44.9, "init_top1": 82.1},
    "segmentation": {"miou": 46.0, "miou_ms": 46.7, "init_top1": 82.1},
}


def paper_ladder(regime: str | None = None) -> pd.DataFrame:
    """One row per rung: regime, order, step, title, adopted (yes/no/ref), paper_top1,
    paper_top1_std, paper_gflops, note. `regime` filters to "r50" or "r200"."""
    with files(__package__).joinpath("convnext_paper.csv").open() as f:
        table = pd.read_csv(f, keep_default_na=False, na_values={"paper_top1": [""], "paper_top1_std": [""], "paper_gflops": [""]})
    return table if regime is None else table[table["regime"] == regime].reset_index(drop=True)


def paper_table(regime: str) -> pd.DataFrame:
    """The paper's rows of a regime (PAPER_ROWS), the one source of the paper columns: the package's
    reference for the ConvNeXt paper's regimes (r50, r200), else the regime YAML's `regime.paper`
    block ({step: {title, top1, top1_std, gflops}}), one row per rung, blank where it gives none."""
    reference = paper_ladder(regime)
    if not reference.empty:
        return reference[PAPER_ROWS]
    try:
        spec = load_regime(regime)
    except LadderError:  # results of a regime that is no longer configured
        return pd.DataFrame(columns=PAPER_ROWS)
    given = OmegaConf.to_container(spec.paper) if spec.get("paper") else {}
    rows = [{"regime": regime, "order": i, "step": step, "title": given.get(step, {}).get("title", step),
             "adopted": "no" if step in spec.branches else "yes",
             **{f"paper_{k}": given.get(step, {}).get(k) for k in ("top1", "top1_std", "gflops")}}
            for i, step in enumerate(list_steps(spec, adopted_only=False))]
    return pd.DataFrame(rows, columns=PAPER_ROWS).astype({c: float for c in PAPER_COLUMNS})
