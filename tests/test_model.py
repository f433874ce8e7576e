"""The builder reproduces every rung of the ladder exactly (../shared/reference)."""
from __future__ import annotations


import pytest
import timm
import torch
import torchvision

import roadmap
from roadmap import ArchConfig, ArchConfigError, LadderError
from roadmap.model.layers import LayerNorm2d
from tests.conftest import randomize, reference_rows

def _built_rows() -> list[dict[str, str]]:
    return [r for r in reference_rows() if r["adopted"] in ("yes", "no")]


@pytest.mark.parametrize("row", _built_rows(), ids=lambda r: f"{r['regime']}-{r['step']}")
def test_rung_matches_reference_counts(row: dict[str, str]) -> None:
    with torch.device("meta"):  # shapes only: no init of up to 90M weights (other tests train every rung)
        model = roadmap.build_model(row["step"], regime=row["regime"])
    counts = roadmap.complexity(model, image_size=224)
    assert counts["params"] == int(row["target_params"])
    assert counts["gmacs"] == pytest.approx(float(row["target_gmacs"]), abs=5e-4)


def test_every_built_row_is_a_listed_step(ladder_rows: list[dict[str, str]]) -> None:
    for regime in ("r50", "r200"):
        csv_steps = [r["step"] for r in ladder_rows if r["regime"] == regime and r["adopted"] != "ref"]
        if regime == "r50":  # the paper's §2.1 recipe step, a branch off the baseline (not in ladder.csv)
            csv_steps.insert(1, "classic_recipe")
        assert roadmap.list_steps(regime, adopted_only=False) == csv_steps
        adopted = [r["step"] for r in ladder_rows if r["regime"] == regime and r["adopted"] == "yes"]
        assert roadmap.list_steps(regime) == adopted
    assert len(roadmap.list_steps()) == 13


def test_layer_scale_gives_convnext_tiny_and_base() -> None:
    tiny = roadmap.build_model("separate_downsampling", layer_scale=1e-6)
    base = roadmap.build_model("separate_downsampling", regime="r200", layer_scale=1e-6)
    assert roadmap.complexity(tiny)["params"] == 28_589_128
    assert roadmap.complexity(base)["params"] == 88_591_464


@pytest.mark.parametrize(
    ("reference", "step", "regime", "overrides"),
    [
        (lambda: torchvision.models.resnet50(), "resnet50", "r50", {}),
        (lambda: torchvision.models.convnext_tiny(), "separate_downsampling", "r50", {"layer_scale": 1e-6}),
        (lambda: timm.create_model("convnext_tiny"), "separate_downsampling", "r50", {"layer_scale": 1e-6}),
        # Without layer scale in the rung, the converter folds it into the last 1x1 conv.
        (lambda: timm.create_model("convnext_tiny"), "separate_downsampling", "r50", {}),
        (lambda: torchvision.models.convnext_base(), "separate_downsampling", "r200", {"layer_scale": 1e-6}),
        (lambda: timm.create_model("convnext_base"), "separate_downsampling", "r200", {"layer_scale": 1e-6}),
    ],
    ids=["tv-resnet50", "tv-convnext_tiny", "timm-convnext_tiny", "timm-convnext_tiny-folded",
         "tv-convnext_base", "timm-convnext_base"],
)
def test_endpoint_rungs_equal_reference_implementations(reference, step, regime, overrides) -> None:
    torch.manual_seed(0)
    ref = randomize(reference())
    ours = roadmap.build_model(step, regime=regime, **overrides).eval()
    ours.load_state_dict(roadmap.convert_state_dict(ref.state_dict(), step, regime, **overrides), strict=True)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        expected, actual = ref(x), ours(x)
    assert expected.std() > 0
    assert ((actual - expected).norm() / expected.norm()).item() <= 1e-4


def test_convert_rejects_weights_of_another_rung() -> None:
    state = torchvision.models.resnet50().state_dict()
    with pytest.raises(roadmap.ConversionError, match="do not fit"):
        roadmap.convert_state_dict(state, "gelu")
    with pytest.raises(roadmap.ConversionError, match="unrecognised"):
        roadmap.convert_state_dict({"foo.weight": torch.zeros(1)}, "resnet50")


@pytest.mark.parametrize("step", roadmap.list_steps("r50", adopted_only=False))
def test_every_r50_rung_trains_at_64px(step: str) -> None:
    torch.manual_seed(0)
    model = roadmap.build_model(step, num_classes=10, drop_path=0.1).train()
    x, y = torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_drop_path_is_linear_over_all_blocks() -> None:
    model = roadmap.build_model("separate_downsampling", drop_path=0.1)
    rates = [b.drop_path.p for stage in model.stages for b in stage.blocks]
    assert len(rates) == 18
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    steps = [b - a for a, b in zip(rates, rates[1:])]
    assert steps == pytest.approx([0.1 / 17] * 17)


def test_layer_norm_is_over_channels_only() -> None:
    norm = LayerNorm2d(8)
    x = torch.randn(2, 8, 5, 5) * 3 + 1
    y = norm(x)
    assert torch.allclose(y.mean(1), torch.zeros(2, 5, 5), atol=1e-5)
    expected = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,), eps=1e-6).permute(0, 3, 1, 2)
    assert torch.allclose(y, expected, atol=1e-6)
    assert not torch.allclose(y, torch.nn.GroupNorm(1, 8, eps=1e-6)(x), atol=1e-3)


def test_bias_rules_follow_the_norm() -> None:
    bn = roadmap.build_model("fewer_norms")
    ln = roadmap.build_model("layer_norm")
    block_bn, block_ln = bn.stages[1].blocks[0], ln.stages[1].blocks[0]
    assert all(c.bias is None for c in (block_bn.conv1, block_bn.conv2, block_bn.conv3))
    assert all(c.bias is not None for c in (block_ln.conv1, block_ln.conv2, block_ln.conv3))
    assert block_ln.shortcut.conv.bias is None  # projection shortcuts never have a bias
    assert bn.stem.conv.bias is not None  # the patchify stem does


def test_width_multiplier_scales_every_stage() -> None:
    arch = roadmap.compose_arch("separate_downsampling", overrides={"width_mult": 0.25})
    assert arch.stage_widths() == [24, 48, 96, 192]
    model = roadmap.build_model("separate_downsampling", width_mult=0.25, num_classes=10)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_unknown_step_and_regime_list_valid_names() -> None:
    with pytest.raises(LadderError, match=r"step='patchify'.*valid steps: \['resnet50'"):
        roadmap.build_model("patchify")
    with pytest.raises(LadderError, match=r"regime='r101'.*\['bag_of_tricks', 'family', 'r200', 'r50'\]"):
        roadmap.build_model("resnet50", regime="r101")
    with pytest.raises(LadderError, match="width_128"):
        roadmap.build_model("width_128", regime="r50")  # an r200-only step
    with torch.device("meta"):  # without a regime: the one that names the step
        assert roadmap.build_model("width_128").cfg.width == 128
    with pytest.raises(LadderError, match=r"unknown builder field\(s\) \['kernal_size'\]; valid fields"):
        roadmap.build_model("gelu", kernal_size=5)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"fewer_norms": True}, ["fewer_norms", "block", "dwconv_position"]),
        ({"dwconv_position": "top"}, ["dwconv_position", "depthwise"]),
        ({"fewer_activations": True}, ["fewer_activations", "dwconv_position"]),
        ({"norm": "group"}, ["norm", "batch", "layer"]),
        ({"kernel_size": 4}, ["kernel_size"]),
    ],
)
def test_impossible_combinations_name_the_fields(fields: dict, named: list[str]) -> None:
    with pytest.raises(ArchConfigError) as error:
        ArchConfig(**fields)
    for name in named:
        assert name in str(error.value)
    with pytest.raises(LadderError):
        roadmap.build_model("resnet50", **fields)


def _std(t: torch.Tensor) -> float:
    return float(t.detach().float().std())


def test_init_torch_default_is_the_authors_and_trunc_normal_the_released() -> None:
    """The authors' ladder code leaves convs at PyTorch's default (kaiming-uniform a=sqrt(5):
    std 1/sqrt(3 fan_in), bias likewise) and gives only the Linear head N(0, 0.02)."""
    torch.manual_seed(0)
    steps = ("resnet50", "depthwise_conv", "layer_norm")
    default = {step: roadmap.build_model(step, init="torch_default") for step in steps}
    torch.manual_seed(0)
    released = {step: roadmap.build_model(step, init="trunc_normal") for step in steps}
    # The figures pinned in the proxy-fidelity study: depthwise 3x3, patchify stem, 7x7 stem.
    assert _std(default["resnet50"].stem.conv.weight) == pytest.approx(0.048, abs=0.002)
    assert _std(default["layer_norm"].stem.conv.weight) == pytest.approx(0.083, abs=0.005)
    dwconv = default["depthwise_conv"].stages[0].blocks[0].conv2
    assert dwconv.groups == dwconv.in_channels and _std(dwconv.weight) == pytest.approx(0.19, abs=0.01)
    dwconv7 = default["layer_norm"].stages[0].blocks[0].conv1  # 7x7, with a bias on the LN rungs
    assert _std(dwconv7.weight) == pytest.approx(1 / 147**0.5, rel=0.05)
    assert _std(dwconv7.bias) == pytest.approx(1 / 147**0.5, rel=0.3)
    for model in default.values():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Conv2d) and module.weight.numel() >= 4096:
                fan_in = module.weight[0].numel()
                assert _std(module.weight) == pytest.approx((3 * fan_in) ** -0.5, rel=0.05), name
        assert _std(model.head.fc.weight) == pytest.approx(0.02, rel=0.05) and not model.head.fc.bias.any()
    for model in released.values():
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.weight.numel() >= 4096:
                assert _std(module.weight) == pytest.approx(0.02, rel=0.05), name  # truncated at ±2: 100 std
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
                assert not module.bias.any(), name
    norms = [m for m in default["layer_norm"].modules() if isinstance(m, LayerNorm2d)]
    assert all(bool((n.weight == 1).all()) and not n.bias.any() for n in norms)


def test_head_init_scale_multiplies_the_head() -> None:
    torch.manual_seed(0)
    plain = roadmap.build_model("gelu", num_classes=10)
    torch.manual_seed(0)
    scaled = roadmap.build_model("gelu", num_classes=10, head_init_scale=0.001)
    assert torch.equal(scaled.head.fc.weight, plain.head.fc.weight * 0.001)
    with pytest.raises(LadderError, match="head_init_scale"):
        roadmap.build_model("gelu", head_init_scale=0)


def test_init_is_validated() -> None:
    with pytest.raises(LadderError, match=r"init='kaiming'.*torch_default"):
        roadmap.build_model("gelu", init="kaiming")
