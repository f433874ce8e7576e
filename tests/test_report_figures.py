"""Report figures with nothing to draw say so; a single epoch is drawn as a point, at its epoch from 0."""
from __future__ import annotations

import numpy as np
import pandas as pd


def test_figures_with_nothing_to_draw_say_so_and_single_epochs_have_markers() -> None:
    from roadmap.analysis import curves_figure, dynamics_figure

    curves = pd.DataFrame({"regime": "r50", "rung": "gelu", "step": "gelu", "variant": None, "seed": 0, "order": 8,
                           "epoch": [0], "val/top1": [np.nan], "val/top1_ema": [np.nan], "dyn/grad_norm": [1.5]})
    texts = [t.get_text() for ax in curves_figure(curves).axes for t in ax.texts]
    assert texts == ["no validation yet (validated every trainer.check_val_every_n_epoch)"] * 2
    [ax] = dynamics_figure(curves).axes
    [line] = ax.get_lines()
    assert line.get_marker() == "o"
    # one epoch convention: the figure's x is metrics.csv's epoch (from 0, as run.log's `epoch 0 done`)
    assert list(line.get_xdata()) == [0] and ax.get_xlabel().startswith("epoch (0 = the first")
