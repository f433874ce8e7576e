"""The ConvNeXt family (T/S/B/L/XL) as the `family` regime: exact counts (../shared/reference/family.csv)
and the released timm / torchvision models converted onto it."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision

import roadmap
from tests.conftest import family_rows, randomize

FAMILY = ["convnext_tiny", "convnext_small", "convnext_base", "convnext_large", "convnext_xlarge"]


def test_the_family_regime_lists_the_five_models_and_build_model_finds_them() -> None:
    assert roadmap.list_steps("family") == FAMILY
    assert [r["model"] for r in family_rows()] == FAMILY
    with torch.device("meta"):
        small = roadmap.build_model("convnext_small")  # no regime: the one that names the step
    assert small.cfg.depths == [3, 3, 27, 3] and small.cfg.width == 96
    assert small.cfg.layer_scale == 1e-6 and small.cfg.init == "trunc_normal"
    with pytest.raises(roadmap.LadderError, match="valid steps"):
        roadmap.build_model("convnext_huge")
    with pytest.raises(roadmap.LadderError, match=r"'convnext_small' is not a step of regime 'r50' \(it is one of "
                                                  r"regime 'family': add regime=family\); valid steps"):
        roadmap.build_model("convnext_small", "r50")


@pytest.mark.parametrize("row", family_rows(), ids=lambda r: r["model"])
def test_family_counts_equal_the_reference(row: dict[str, str]) -> None:
    depths, dims = [int(d) for d in row["depths"].split("-")], [int(d) for d in row["dims"].split("-")]
    for num_classes, params in ((1000, row["params_1k"]), (21841, row["params_22k"])):
        with torch.device("meta"):
            model = roadmap.build_model(row["model"], num_classes=num_classes)
        assert model.cfg.depths == depths and model.cfg.stage_widths() == dims
        assert roadmap.complexity(model, 224)["params"] == int(params)
    for size in (224, 384):  # MACs with the 1K head, as the paper counts FLOPs
        with torch.device("meta"):
            model = roadmap.build_model(row["model"])
        assert round(roadmap.complexity(model, size)["gmacs"], 4) == float(row[f"gmacs_{size}"])


def test_any_rung_scales_to_a_family_size() -> None:
    """depths and width are builder fields: `kernel_7` at ConvNeXt-S's depths is one override."""
    with torch.device("meta"):
        small_kernel_7 = roadmap.build_model("kernel_7", depths=[3, 3, 27, 3])
    assert small_kernel_7.cfg.kernel_size == 7 and sum(small_kernel_7.cfg.depths) == 36
    assert len(small_kernel_7.stages[2].blocks) == 27


# A full forward for the models a CPU test affords (T, S, B, and T with the 22K head); L and XL
# (198M and 350M weights) are converted on the meta device: every key and shape fits, which is
# what differs from B (the same code at a larger width).
FORWARD = [("timm", m, 1000) for m in FAMILY[:3]] + [("timm", "convnext_tiny", 21841)] + [
    ("torchvision", m, 1000) for m in FAMILY[:2]]
META = [("timm", m, n) for m in FAMILY[3:] for n in (1000, 21841)] + [("torchvision", "convnext_large", 1000)]


def _reference(impl: str, name: str, num_classes: int) -> torch.nn.Module:
    if impl == "timm":
        return timm.create_model(name, num_classes=num_classes)
    return getattr(torchvision.models, name)(num_classes=num_classes)


@pytest.mark.parametrize(("impl", "name", "num_classes"), FORWARD, ids=lambda v: str(v))
def test_converted_reference_computes_the_same(impl: str, name: str, num_classes: int) -> None:
    torch.manual_seed(0)
    ref = randomize(_reference(impl, name, num_classes))
    ours = roadmap.build_model(name, num_classes=num_classes).eval()
    ours.load_state_dict(roadmap.convert_state_dict(ref.state_dict(), name, num_classes=num_classes), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, actual = ref(x), ours(x)
    assert expected.std() > 0
    assert ((actual - expected).norm() / expected.norm()).item() <= 1e-4


@pytest.mark.parametrize(("impl", "name", "num_classes"), META, ids=lambda v: str(v))
def test_large_references_convert_on_meta(impl: str, name: str, num_classes: int) -> None:
    with torch.device("meta"):
        state = _reference(impl, name, num_classes).state_dict()
        ours = roadmap.build_model(name, num_classes=num_classes)
    converted = roadmap.convert_state_dict(state, name, num_classes=num_classes)
    ours.load_state_dict(converted, strict=True, assign=True)
    assert sum(t.numel() for t in converted.values()) == sum(t.numel() for t in state.values())
