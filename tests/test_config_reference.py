"""roadmap.schema: every key of the run config is in it, checked by it, and docs/config.md is generated from it."""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from roadmap import schema
from roadmap.ladder import conf_dir
from tests.test_recipe import compose_run

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "config.md"
# A rung of each regime (the default step is r50's), and the step that sets the classic recipe's keys.
REGIME_STEP = {"r200": "resnet200", "bag_of_tricks": "mixup"}


def leaves(node: dict, prefix: str = "") -> set[str]:
    """The dotted keys of a config, the model and regime blocks and a key whose value is a mapping
    (task.detector_options) as one key each."""
    found = set()
    for key, value in node.items():
        name = f"{prefix}{key}"
        whole = name in schema.BLOCKS or name in schema.KEYS
        found |= leaves(value, name + ".") if isinstance(value, dict) and not whole else {name}
    return found


def configs() -> dict[str, dict]:
    """The default run config, and one with each option of each config group."""
    cases = {"default": [], "classic_recipe": ["step=classic_recipe"]}
    for group in schema.GROUPS:
        for option in sorted(p.stem for p in (conf_dir() / group).glob("*.yaml")):
            step = [f"step={REGIME_STEP[option]}"] if group == "regime" and option in REGIME_STEP else []
            cases[f"{group}={option}"] = [f"{group}={option}", *step]
    return {name: OmegaConf.to_container(compose_run(*overrides), resolve=False) for name, overrides in cases.items()}


def test_the_reference_is_generated_from_the_schema() -> None:
    assert REFERENCE.read_text() == schema.reference_markdown(), (
        "docs/config.md differs from the schema: run `python -m roadmap.schema > docs/config.md`")


def test_every_config_key_is_in_the_schema_and_every_schema_key_in_a_config() -> None:
    seen: set[str] = set()
    required = {k.name for k in schema.KEYS.values() if k.default is schema.REQUIRED}
    for name, cfg in configs().items():
        keys = leaves(cfg)
        assert keys - set(schema.KEYS) - set(schema.BLOCKS) == set(), f"{name}: keys missing from roadmap/schema.py"
        assert required - keys == set(), f"{name}: keys without a default missing from the config"
        seen |= keys
    assert set(schema.KEYS) - seen == set(), "keys in roadmap/schema.py that no config has"


def test_defaults_are_valid_and_legacy_values_are_the_defaults() -> None:
    for key in schema.KEYS.values():
        if key.default is not schema.REQUIRED:
            assert key.error(key.default) is None, key.name
        if key.name in schema.LEGACY:
            assert key.default == schema.LEGACY[key.name], key.name
    assert schema.LEGACY["model._target_"] == "roadmap.model.net.build_net"


@pytest.mark.parametrize("override, says", [
    ("data.in_memory=yes", "data.in_memory='yes' must be one of auto, true, false."),
    ("data.augment_on=tpu", "data.augment_on='tpu' must be one of ('cpu', 'gpu')"),
    ("+recipe.schedule.name=linear", "recipe.schedule.name='linear' is not supported; valid: ['warmup_cosine', 'warmup_poly', 'step']"),
    ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps=0 must be an integer >= 1"),
    ("trainer.compile=ture", "trainer.compile='ture' must be true or false"),
    ("recipe.grad_clip=-1", "recipe.grad_clip=-1 must be a number >= 0 or null"),
    ("data.num_workers=-2", "data.num_workers=-2 must be 'auto' or an integer >= 0"),
])
def test_one_check_names_key_value_and_choices(override: str, says: str) -> None:
    with pytest.raises(schema.ConfigError) as error:
        schema.check(OmegaConf.to_container(compose_run("experiment=smoke", override)))
    assert str(error.value) == says


def test_a_missing_key_reads_as_its_default_or_legacy_value() -> None:
    assert schema.value({}, "data.in_memory") == "auto"
    assert schema.value({}, "recipe.schedule.name") == "warmup_cosine"
    assert schema.value({}, "model._target_") == "roadmap.model.net.build_net"
    assert schema.value({"in_memory": False}, "data.in_memory") is False
    with pytest.raises(KeyError):
        schema.value({}, "recipe.epochs")


def test_the_plan_derives_lr_batches_and_mixing_once() -> None:
    from roadmap.plan import plan_run

    plan = plan_run(compose_run("experiment=smoke"))
    assert (plan.global_batch, plan.per_device_batch, plan.accumulate) == (16, 8, 2)
    assert plan.lr == pytest.approx(2e-3 * 16 / 128) and plan.lr_scaled and plan.mixing
    plan = plan_run(compose_run("experiment=smoke", "recipe.global_batch=128", "recipe.augment.mixup=0",
                                "recipe.augment.cutmix=0"))
    assert plan.lr == pytest.approx(2e-3) and not plan.lr_scaled and not plan.mixing
