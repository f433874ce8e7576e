"""`ArchConfig`: every architectural switch of the ResNet → ConvNeXt ladder as one typed field.

The builder knows nothing of Hydra; Hydra configs (conf/regime, conf/step) set these fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

Stem = Literal["resnet", "patchify"]
BlockKind = Literal["bottleneck", "inverted"]
DwconvPosition = Literal["middle", "top"]
Activation = Literal["relu", "gelu"]
Norm = Literal["batch", "layer"]
Init = Literal["trunc_normal", "torch_default"]

CHOICES: dict[str, tuple[str, ...]] = {
    "stem": ("resnet", "patchify"),
    "block": ("bottleneck", "inverted"),
    "dwconv_position": ("middle", "top"),
    "activation": ("relu", "gelu"),
    "norm": ("batch", "layer"),
    "init": ("trunc_normal", "torch_default"),
}


def _doc(text: str) -> dict[str, str]:
    """A field's one-line meaning, for the config reference (docs/config.md)."""
    return {"doc": text}


class ArchConfigError(ValueError):
    """An architecture field has a bad value or an impossible combination with another field."""


@dataclass
class ArchConfig:
    """One rung of the ladder. Stage i (0-based) has base width `width * 2**i`.

    Block widths: a `bottleneck` block has inner width d_i and output 4·d_i (ResNet); an
    `inverted` block has input/output d_i and hidden width 4·d_i (ConvNeXt).
    """

    depths: list[int] = field(default_factory=lambda: [3, 4, 6, 3], metadata=_doc("Blocks per stage."))
    width: int = field(default=64, metadata=_doc("Stage 0's base width d_0 (stage i: `width * 2**i`)."))
    width_mult: float = field(default=1.0, metadata=_doc("Scales `width`; < 1 gives small proxy models."))
    stem: Stem = field(default="resnet", metadata=_doc(
        "`resnet`: 7x7 stride-2 conv, norm, activation, 3x3 stride-2 max pool; `patchify`: 4x4 stride-4 conv."))
    block: BlockKind = field(default="bottleneck", metadata=_doc(
        "`bottleneck`: inner width d_i, output 4·d_i (ResNet); `inverted`: in/out d_i, hidden 4·d_i (ConvNeXt)."))
    depthwise: bool = field(default=False, metadata=_doc("The spatial conv is depthwise (groups = channels)."))
    kernel_size: int = field(default=3, metadata=_doc("The spatial conv's kernel (odd)."))
    dwconv_position: DwconvPosition = field(default="middle", metadata=_doc(
        "`top`: the spatial conv first, on the block input (needs `depthwise`)."))
    activation: Activation = field(default="relu", metadata=_doc("The activation."))
    fewer_activations: bool = field(default=False, metadata=_doc(
        "One activation per block, between the two 1x1 convs (needs `dwconv_position=top`)."))
    fewer_norms: bool = field(default=False, metadata=_doc(
        "One norm per block, after the spatial conv (needs `block=inverted`, `dwconv_position=top`)."))
    norm: Norm = field(default="batch", metadata=_doc("BatchNorm or LayerNorm."))
    separate_downsampling: bool = field(default=False, metadata=_doc(
        "Norm + 2x2 stride-2 conv between stages instead of a strided block."))
    layer_scale: float = field(default=0.0, metadata=_doc(
        "The per-channel residual scale's init; 0 disables it (from `recipe.layer_scale`)."))
    drop_path: float = field(default=0.0, metadata=_doc(
        "The maximum stochastic-depth rate, linear over all blocks, in [0, 1) (from `recipe.drop_path`)."))
    num_classes: int = field(default=1000, metadata=_doc("The head's classes (from `data.num_classes`)."))
    expansion: int = field(default=4, metadata=_doc("The bottleneck's output / inner width ratio."))
    init: Init = field(default="trunc_normal", metadata=_doc(
        "The weight init (from `recipe.init`). `trunc_normal`: every conv and Linear N(0, 0.02) truncated, zero "
        "bias (the released ConvNeXt models); `torch_default`: convs keep PyTorch's default init (kaiming-uniform "
        "a=√5, uniform bias), only the Linear head gets N(0, 0.02) and zero bias (the authors' code for the "
        "ladder's rungs). Norms start at weight 1, bias 0 either way."))
    head_init_scale: float = field(default=1.0, metadata=_doc(
        "The head's initial weight and bias are multiplied by this (from `recipe.head_init_scale`)."))

    def __post_init__(self) -> None:
        self.depths = [int(d) for d in self.depths]
        self.validate()

    @property
    def base_width(self) -> int:
        return max(1, round(self.width * self.width_mult))

    def stage_widths(self) -> list[int]:
        """d_i for each stage: the bottleneck's inner width or the inverted block's in/out width."""
        return [self.base_width * 2**i for i in range(len(self.depths))]

    def block_out_widths(self) -> list[int]:
        scale = self.expansion if self.block == "bottleneck" else 1
        return [d * scale for d in self.stage_widths()]

    def validate(self) -> None:
        for name, choices in CHOICES.items():
            value = getattr(self, name)
            if value not in choices:
                raise ArchConfigError(f"{name}={value!r} is not valid; choose one of {list(choices)}")
        if not self.depths or any(d < 1 for d in self.depths):
            raise ArchConfigError(f"depths={self.depths} must be a non-empty list of positive ints")
        if self.width < 1 or self.width_mult <= 0:
            raise ArchConfigError(f"width={self.width}, width_mult={self.width_mult} must be positive")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ArchConfigError(f"kernel_size={self.kernel_size} must be a positive odd number")
        if not 0.0 <= self.drop_path < 1.0:
            raise ArchConfigError(f"drop_path={self.drop_path} must be in [0, 1)")
        if self.layer_scale < 0:
            raise ArchConfigError(f"layer_scale={self.layer_scale} must be >= 0 (0 disables it)")
        if self.head_init_scale <= 0:
            raise ArchConfigError(f"head_init_scale={self.head_init_scale} must be > 0")
        if self.num_classes < 1 or self.expansion < 1:
            raise ArchConfigError(f"num_classes={self.num_classes}, expansion={self.expansion} must be >= 1")
        if self.dwconv_position == "top" and not self.depthwise:
            raise ArchConfigError(
                "dwconv_position='top' (moved-up depthwise conv) needs depthwise=true; "
                f"got depthwise={self.depthwise}"
            )
        if self.fewer_activations and self.dwconv_position != "top":
            raise ArchConfigError(
                "fewer_activations=true keeps only the activation between the two 1x1 convs, "
                f"which needs dwconv_position='top'; got dwconv_position={self.dwconv_position!r}"
            )
        if self.fewer_norms and (self.block != "inverted" or self.dwconv_position != "top"):
            raise ArchConfigError(
                "fewer_norms=true keeps only the norm after the depthwise conv, which needs "
                f"block='inverted' and dwconv_position='top'; got block={self.block!r}, "
                f"dwconv_position={self.dwconv_position!r}"
            )

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
