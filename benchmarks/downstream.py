"""Downstream train steps (forward + backward + AdamW step) on our ConvNeXt-T backbone vs timm's, in the
same head: Mask R-CNN (torchvision's MaskRCNN + FPN, `roadmap.model.detection`) and UperNet (smp's
UPerNetDecoder + FCN auxiliary head, `roadmap.model.segmentation`), as ratios measured in one process.

    python benchmarks/downstream.py                            # 320 px, batch 2, both heads, 5 rounds
    python benchmarks/downstream.py --heads upernet --size 512 # the paper's ADE20K crop
    python benchmarks/downstream.py --device cuda --precision bf16 --channels-last   # on a GPU

Ours: the family's `convnext_tiny` through `roadmap.model.backbone.Backbone` (its four levels, one
LayerNorm each). Reference: timm's `convnext_tiny` with `features_only=True` and the same four
LayerNorms (timm's LayerNorm2d), so the heads see the same thing. Both backbones carry the same weights
(a timm ConvNeXt-T's, converted for ours) and both heads the same weights (ours copied into the
reference's); the printed "levels max abs diff" checks that the two backbones compute the same levels.
At `--width-mult` w != 1 both get the same stage widths (a quick try of the script).

Each head's two models run interleaved (one step of each per round, the order reversed every other
round, after `--warmup` untimed steps each); the ratio is timm's step time / ours (> 1: ours faster),
the median of the per-round ratios, with their range and the same ratio from process CPU seconds.

Batches are synthetic: Mask R-CNN gets `--batch` images of `--size`² (min_size = max_size = size, so
no resize) with `--boxes` boxes each (rectangular masks, COCO's 91 classes); UperNet `--batch` images
and label maps (ADE20K's 150 classes, a band of ignored pixels), its loss cross-entropy + 0.4 x the
auxiliary head's. drop path 0; AdamW (lr 1e-4, weight decay 0.05) over every parameter.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from common import add_device_args, autocast, csv_list, interleave, print_header, print_table, setup_device, verdict

import roadmap  # noqa: E402  (common puts the checkout on sys.path)
from roadmap.model.backbone import Backbone  # noqa: E402
from roadmap.model.detection import FPNBackbone  # noqa: E402
from roadmap.model.segmentation import UperNet, segmentation_loss  # noqa: E402

HEADS = ("maskrcnn", "upernet")
COCO_CLASSES, ADE20K_CLASSES = 91, 150
BODY_PREFIX = {"maskrcnn": "backbone.body.", "upernet": "backbone."}  # the backbone's keys in each model


class TimmLevels(nn.Module):
    """timm's `features_only` ConvNeXt with one LayerNorm per level, as `Backbone` on a LayerNorm rung."""

    def __init__(self, features: nn.Module, channels: list[int]) -> None:
        from timm.layers import LayerNorm2d

        super().__init__()
        self.features, self.out_channels = features, list(channels)
        self.norms = nn.ModuleList(LayerNorm2d(c, eps=1e-6) for c in channels)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict((str(i), norm(f)) for i, (norm, f) in enumerate(zip(self.norms, self.features(x))))


def backbones(width_mult: float) -> tuple[Backbone, TimmLevels]:
    """Our ConvNeXt-T levels and timm's, on the same (timm-initialized) weights."""
    import timm

    arch = roadmap.compose_arch("convnext_tiny", overrides={"width_mult": width_mult})
    dims, depths = arch.stage_widths(), arch.depths
    full = timm.create_model("convnext_tiny", dims=dims, depths=depths, drop_path_rate=0.0)
    net = roadmap.build_model("convnext_tiny", width_mult=width_mult, drop_path=0.0)
    net.load_state_dict(roadmap.convert_state_dict(full.state_dict(), "convnext_tiny", width_mult=width_mult))
    features = timm.create_model("convnext_tiny", features_only=True, dims=dims, depths=depths, drop_path_rate=0.0)
    features.load_state_dict({k.replace("stem.", "stem_", 1).replace("stages.", "stages_", 1): v
                              for k, v in full.state_dict().items() if not k.startswith("head")})
    return Backbone(net), TimmLevels(features, dims)


def build_head(head: str, body: nn.Module, args: argparse.Namespace) -> nn.Module:
    if head == "maskrcnn":
        from torchvision.models.detection import MaskRCNN

        return MaskRCNN(FPNBackbone(body, args.fpn_channels), num_classes=COCO_CLASSES, min_size=args.size,
                        max_size=args.size)
    return UperNet(body, ADE20K_CLASSES, decoder_channels=args.decoder_channels)


def same_heads(head: str, ours: nn.Module, reference: nn.Module) -> None:
    """Our model's head weights copied into the reference's (everything but the backbone)."""
    prefix = BODY_PREFIX[head]
    state = {k: v for k, v in ours.state_dict().items() if not k.startswith(prefix)}
    missing, unexpected = reference.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(prefix) for k in missing), (unexpected, missing)


def synthetic_batch(head: str, args: argparse.Namespace, device: torch.device) -> tuple:
    g = torch.Generator().manual_seed(0)
    size, batch = args.size, args.batch
    if head == "upernet":
        images = torch.randn(batch, 3, size, size, generator=g)
        labels = torch.randint(0, ADE20K_CLASSES, (batch, size, size), generator=g)
        labels[:, : size // 8] = 255
        return images.to(device), labels.to(device)
    images, targets = [], []
    for _ in range(batch):
        corners = torch.randint(0, size // 2, (args.boxes, 2), generator=g).float()
        sides = torch.randint(size // 8, size // 2, (args.boxes, 2), generator=g).float()
        boxes = torch.cat([corners, corners + sides], 1)
        masks = torch.zeros(args.boxes, size, size, dtype=torch.uint8)
        for mask, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            mask[y0:y1, x0:x1] = 1
        labels = torch.randint(1, COCO_CLASSES, (args.boxes,), generator=g)
        images.append(torch.rand(3, size, size, generator=g).to(device))
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return images, targets


class TrainStep:
    """One model: forward and loss under autocast, backward, AdamW step."""

    def __init__(self, head: str, model: nn.Module, batch: tuple, device: torch.device, precision: str,
                 channels_last: bool) -> None:
        self.model = model.to(device).train()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            if head == "upernet":
                batch = (batch[0].contiguous(memory_format=torch.channels_last), batch[1])
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.05)
        self.head, self.batch, self.device, self.precision = head, batch, device, precision

    def __call__(self) -> None:
        inputs, targets = self.batch
        with autocast(self.device, self.precision):
            if self.head == "maskrcnn":
                loss = sum(self.model(inputs, targets).values())
            else:
                loss = segmentation_loss(self.model(inputs), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def levels_difference(ours: nn.Module, reference: nn.Module, size: int, device: torch.device) -> float:
    """Max |difference| of the two backbones' levels on one image (eval mode)."""
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        a, b = ours.eval()(x), reference.eval()(x)
    return max((a[k] - b[k]).abs().max().item() for k in a)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", default=",".join(HEADS), help="maskrcnn, upernet or both (default)")
    parser.add_argument("--size", type=int, default=320, help="image side in px (default 320)")
    parser.add_argument("--batch", type=int, default=2, help="images per step (default 2)")
    parser.add_argument("--boxes", type=int, default=4, help="Mask R-CNN: objects per image (default 4)")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per model, interleaved (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    parser.add_argument("--width-mult", type=float, default=1.0,
                        help="stage widths of both backbones (default 1: ConvNeXt-T; 0.25 to try the script)")
    parser.add_argument("--decoder-channels", type=int, default=512, help="UperNet decoder channels (paper: 512)")
    parser.add_argument("--fpn-channels", type=int, default=256, help="Mask R-CNN FPN channels (default 256)")
    parser.add_argument("--channels-last", action="store_true", help="models (and UperNet's batch) channels_last")
    add_device_args(parser, compile_option=False)
    args = parser.parse_args(argv)
    heads = csv_list(args.heads)
    if not heads or set(heads) - set(HEADS):
        parser.error(f"--heads: {args.heads!r}; valid: {','.join(HEADS)}")
    device = setup_device(args)
    print_header("downstream train steps: our ConvNeXt-T backbone vs timm's, in the same head", device, args)
    start, rows = time.perf_counter(), []
    for head in heads:
        ours_body, timm_body = backbones(args.width_mult)
        difference = levels_difference(ours_body.to(device), timm_body.to(device), 64, device)
        torch.manual_seed(0)
        ours = build_head(head, ours_body, args)
        reference = build_head(head, timm_body, args)
        same_heads(head, ours, reference)
        batch = synthetic_batch(head, args, device)
        fns: dict[str, Callable[[], None]] = {
            "ours": TrainStep(head, ours, batch, device, args.precision, args.channels_last),
            "timm": TrainStep(head, reference, batch, device, args.precision, args.channels_last),
        }
        t0 = time.perf_counter()
        timings = interleave(fns, args.rounds, device, warmup=args.warmup)
        print(f"#   {head}: 2 models x {args.rounds} steps in {time.perf_counter() - t0:.0f} s", file=sys.stderr,
              flush=True)
        o, r = timings["ours"], timings["timm"]
        paired = [b / a for a, b in zip(o.wall, r.wall)]  # the same round's two steps
        ratio = statistics.median(paired)
        rows.append({
            "head": head, "px, batch": f"{args.size}, {args.batch}", "levels max abs diff": f"{difference:.1e}",
            "ours s/step": o.median_wall, "timm s/step": r.median_wall, "ratio timm/ours": ratio,
            "per-round ratios min-max": f"{min(paired):.3f}-{max(paired):.3f}",
            "CPU-time ratio": r.median_cpu / o.median_cpu,
            "target >= 1.0": verdict(ratio, 1.0, low=min(paired), high=max(paired)),
        })
        del fns, timings, ours, reference
    print(f"### ConvNeXt-T (width {args.width_mult:g}) in the same head, ours vs timm features_only "
          f"(median of {args.rounds} per-round ratios, interleaved; {args.precision})\n")
    print_table(rows, list(rows[0]), {"ours s/step": 3, "timm s/step": 3, "ratio timm/ours": 3, "CPU-time ratio": 3})
    print(f"# total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
