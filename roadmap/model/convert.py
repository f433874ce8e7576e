"""Map published torchvision / timm ResNet-50 and ConvNeXt state dicts onto a rung's keys."""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

# Each source format: the key that identifies it, and (pattern, replacement) rules applied in order.
Rules = list[tuple[str, str | Callable[[re.Match], str]]]

TORCHVISION_RESNET: Rules = [
    (r"^conv1\.", "stem.conv."),
    (r"^bn1\.", "stem.norm."),
    (r"^layer(\d+)\.", lambda m: f"stages.{int(m[1]) - 1}.blocks."),
    (r"\.bn(\d)\.", r".norm\1."),
    (r"\.downsample\.0\.", ".shortcut.conv."),
    (r"\.downsample\.1\.", ".shortcut.norm."),
    (r"^fc\.", "head.fc."),
]
TORCHVISION_CONVNEXT: Rules = [
    (r"^features\.0\.0\.", "stem.conv."),
    (r"^features\.0\.1\.", "stem.norm."),
    (r"^features\.(\d+)\.(\d+)\.block\.", lambda m: f"stages.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.block."),
    (r"^features\.(\d+)\.(\d+)\.layer_scale", lambda m: f"stages.{(int(m[1]) - 1) // 2}.blocks.{m[2]}.gamma"),
    (r"^features\.(\d+)\.0\.", lambda m: f"stages.{int(m[1]) // 2}.downsample.norm."),
    (r"^features\.(\d+)\.1\.", lambda m: f"stages.{int(m[1]) // 2}.downsample.conv."),
    (r"\.block\.0\.", ".conv1."),
    (r"\.block\.2\.", ".norm1."),
    (r"\.block\.3\.", ".conv2."),
    (r"\.block\.5\.", ".conv3."),
    (r"^classifier\.0\.", "head.norm."),
    (r"^classifier\.2\.", "head.fc."),
]
TIMM_CONVNEXT: Rules = [
    (r"^stem\.0\.", "stem.conv."),
    (r"^stem\.1\.", "stem.norm."),
    (r"\.downsample\.0\.", ".downsample.norm."),
    (r"\.downsample\.1\.", ".downsample.conv."),
    (r"\.conv_dw\.", ".conv1."),
    (r"\.blocks\.(\d+)\.norm\.", r".blocks.\1.norm1."),
    (r"\.mlp\.fc1\.", ".conv2."),
    (r"\.mlp\.fc2\.", ".conv3."),
]
FORMATS: dict[str, tuple[str, Rules]] = {
    "torchvision_resnet": ("layer1.0.conv1.weight", TORCHVISION_RESNET),
    "torchvision_convnext": ("features.1.0.block.0.weight", TORCHVISION_CONVNEXT),
    "timm_convnext": ("stages.0.blocks.0.conv_dw.weight", TIMM_CONVNEXT),
    "roadmap": ("stem.conv.weight", []),
}


class ConversionError(ValueError):
    """The state dict is of no known format, or does not fit the rung."""


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    for name, (marker, _) in FORMATS.items():
        if marker in state_dict:
            return name
    raise ConversionError(
        f"unrecognised state dict (first keys {list(state_dict)[:3]}); known formats: {list(FORMATS)}"
    )


def rename_keys(state_dict: Mapping[str, torch.Tensor], rules: Rules) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


def map_onto_model(state_dict: Mapping[str, torch.Tensor], model: nn.Module,
                   drop: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Rename a torchvision/timm state dict to `model`'s keys and shapes (Linear → 1x1 conv).

    Layer scale is folded into the last 1x1 conv when the rung has none (γ(Wx + b) = γW x + γb),
    so released ConvNeXt weights load exactly into the endpoint rung without layer scale. Keys in
    `drop` (a head) that are absent or of another shape are left out: the model keeps its own.
    """
    source = detect_format(state_dict)
    converted = rename_keys(state_dict, FORMATS[source][1])
    target = model.state_dict()
    for key in [k for k in converted if k.endswith(".gamma") and k not in target]:
        gamma = converted.pop(key).flatten()
        prefix = key[: -len("gamma")]
        converted[prefix + "conv3.weight"] = converted[prefix + "conv3.weight"] * gamma.view(-1, 1)
        converted[prefix + "conv3.bias"] = converted[prefix + "conv3.bias"] * gamma
    for key, value in converted.items():
        if key in target and value.shape != target[key].shape and value.numel() == target[key].numel():
            converted[key] = value.reshape(target[key].shape)

    for key in drop:
        if key in converted and key in target and converted[key].shape != target[key].shape:
            del converted[key]
    missing = sorted(set(target) - set(converted) - set(drop))
    unexpected = sorted(set(converted) - set(target))
    mismatched = sorted(k for k in set(target) & set(converted) if converted[k].shape != target[k].shape)
    if missing or unexpected or mismatched:
        first = (f"first mismatched key {mismatched[0]}: {list(converted[mismatched[0]].shape)} in the weights, "
                 f"{list(target[mismatched[0]].shape)} in the model; " if mismatched else "")
        raise ConversionError(
            f"{source} weights do not fit this rung: {first}missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}), shape mismatch {mismatched[:5]} "
            f"({len(mismatched)}). ResNet weights fit rung resnet50 (r50); ConvNeXt weights fit "
            f"the family's rungs convnext_tiny … convnext_xlarge (T and B also separate_downsampling of r50 / "
            f"r200), with num_classes matching the checkpoint."
        )
    return converted
