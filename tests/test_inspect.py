"""`roadmap.inspect step=…` shows what `roadmap.run step=…` would run."""
from __future__ import annotations

import pytest
from omegaconf import open_dict

from roadmap.ladder import compose_run
from roadmap.plan import plan_run


@pytest.mark.parametrize("overrides", [["step=gelu"], ["step=kernel_7", "experiment=smoke", "seed=2"],
                                       ["deltas=[gelu,layer_norm]", "recipe.epochs=3"]])
def test_inspect_composes_what_run_runs(overrides: list[str]) -> None:
    shown = compose_run(overrides, "inspect")
    with open_dict(shown):  # inspect's own keys, as roadmap.inspect drops them
        del shown.image_size, shown.all_steps
    inspected, run = plan_run(shown), plan_run(compose_run(overrides, "train"))
    assert inspected.cfg == run.cfg
    assert (inspected.out_dir, inspected.config_hash) == (run.out_dir, run.config_hash)
