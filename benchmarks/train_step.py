"""Train-step throughput (forward + backward + AdamW step, images/s) of every adopted r50 rung, and
of the endpoint rungs beside their reference implementations, as ratios measured in one process.

    python benchmarks/train_step.py                      # 64 px / batch 64, every rung, both memory formats
    python benchmarks/train_step.py --quick              # endpoints vs references, 64 px, full and quarter width
    python benchmarks/train_step.py --sizes 224 --rungs endpoints   # the endpoints at 224 px / batch 32
    python benchmarks/train_step.py --sizes 64,224       # everything (long on a CPU: ~16 s a step at 224 px)
    python benchmarks/train_step.py --sizes 224 --batch 8 --rungs convnext_small,convnext_base --formats channels_last
                                                         # the family's models vs timm and torchvision
    python benchmarks/train_step.py --device cuda --precision bf16 --compile   # on a GPU
    python benchmarks/train_step.py --device cuda --precision bf16 --compile --compile-mode reduce-overhead  # + CUDA graphs

Comparison groups, each measured interleaved (one step of each model in turn, every round,
after one untimed warm-up step each), in contiguous and channels_last layouts:

- `resnet50`: rung `resnet50` beside torchvision `resnet50`.
- `convnext_tiny`: rung `separate_downsampling` built with layer_scale=1e-6 (exactly ConvNeXt-T)
  beside torchvision `convnext_tiny` and timm `convnext_tiny`. At `--width-mult` w != 1 the references
  get the same stage widths (torchvision's `ConvNeXt` with its `block_setting`, timm's with `dims`),
  so the CPU proxy's quarter-width ConvNeXt has its comparison too (ResNet-50 has none below width 1).
- a model of the ConvNeXt family (`--rungs convnext_small,…` or `family`: regime=family, released
  layer scale and init) beside timm's model of the same name and torchvision's (T/S/B/L), with the
  same stage widths at `--width-mult`.
- every other rung on its own (its two layouts interleaved).

Each comparison reports the median of the per-round ratios (reference step time / ours, the same
round's two steps) and their range; `--quick` runs 15 rounds, enough to tell a 5% gap from noise here.

A plain fp32 matmul (2048 x 2048, `--matmul-size`; bf16 under --precision bf16) runs in every round too: the
achieved GFLOP/s of a model (its conv + linear MACs at the image size x 2 FLOP x 3, since
forward + backward is ~3x the forward FLOPs) is compared with it. Norms, activations and the
optimizer are not counted, so the figure is a lower bound of the work done.

All models are built with drop path 0 (torchvision's ResNet-50 has none; --drop-path sets it on
the ConvNeXt rungs and references alike), 1000 classes, AdamW with the recipe's parameter groups.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common import (
    TORCHVISION_CONVNEXTS, Matmul, add_device_args, autocast, csv_list, interleave, print_header, print_table,
    setup_device, verdict,
)

import roadmap  # noqa: E402  (common puts the checkout on sys.path)
from roadmap.recipe import param_groups  # noqa: E402
from roadmap.plan import CUDA_GRAPH_MODES  # noqa: E402

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
DEFAULT_BATCH = {224: 32, 64: 64}
ENDPOINTS = ("resnet50", "separate_downsampling")
FAMILY = roadmap.list_steps("family")  # convnext_tiny … convnext_xlarge


@dataclass
class Entry:
    group: str  # the rung (or comparison group) it belongs to
    label: str  # e.g. "roadmap resnet50", "torchvision resnet50"
    impl: str  # roadmap / torchvision / timm
    build: Callable[[], nn.Module]
    step: str | None = None  # the rung, for roadmap models


def roadmap_entry(step: str, drop_path: float, arch: dict, conv_pointwise: bool = False, **overrides: float) -> Entry:
    """Our rung; `conv_pointwise`: with every block's 1x1 convs run as convolutions on NCHW tensors
    (the path before they ran as Linear layers on the channels-last view: the same function)."""
    suffix = "".join(f" ({k}={v:g})" for k, v in overrides.items()) + (", 1x1 as conv" if conv_pointwise else "")

    def build() -> nn.Module:
        model = roadmap.build_model(step, drop_path=drop_path if step != "resnet50" else 0.0, **arch, **overrides)
        if conv_pointwise:
            for module in model.modules():
                if hasattr(module, "pointwise_as_linear"):
                    module.pointwise_as_linear = False
        return model

    return Entry(step, f"roadmap {step}{suffix}", "roadmap", build, step)


def convnext_references(step: str, name: str, drop_path: float, num_classes: int, width_mult: float) -> list[Entry]:
    """timm's ConvNeXt `name` and torchvision's (T/S/B/L; any depths and widths through its `block_setting`),
    with the depths and stage widths of our rung `step` at `width_mult`."""
    import timm
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    arch = roadmap.compose_arch(step, overrides={"width_mult": width_mult})
    dims, depths = arch.stage_widths(), arch.depths
    settings = [CNBlockConfig(d, dims[i + 1] if i + 1 < len(dims) else None, n)
                for i, (d, n) in enumerate(zip(dims, depths))]
    references = [
        Entry(name, f"timm {name}", "timm",
              lambda: timm.create_model(name, dims=dims, depths=depths, drop_path_rate=drop_path, num_classes=num_classes)),
    ]
    if name in TORCHVISION_CONVNEXTS:
        references.insert(0, Entry(name, f"torchvision {name}", "torchvision",
                                   lambda: ConvNeXt(settings, stochastic_depth_prob=drop_path, num_classes=num_classes)))
    return references


def groups_for(rungs: list[str], drop_path: float, references: bool, arch: dict,
               conv_pointwise: bool = False) -> list[tuple[str, list[Entry]]]:
    import torchvision

    groups: list[tuple[str, list[Entry]]] = []
    for step in rungs:
        entries = [roadmap_entry(step, drop_path, arch)]
        if step in FAMILY and references:
            entries += convnext_references(step, step, drop_path, arch["num_classes"], arch["width_mult"])
        if step == "resnet50" and references and arch["width_mult"] == 1.0:
            entries.append(Entry(step, "torchvision resnet50", "torchvision",
                                 lambda: torchvision.models.resnet50(num_classes=arch["num_classes"])))
        groups.append((step, entries))
    if "separate_downsampling" in rungs and references:
        ours = [roadmap_entry("separate_downsampling", drop_path, arch, layer_scale=1e-6)]
        if conv_pointwise:
            ours.append(roadmap_entry("separate_downsampling", drop_path, arch, True, layer_scale=1e-6))
        references_t = convnext_references("separate_downsampling", "convnext_tiny", drop_path, arch["num_classes"],
                                           arch["width_mult"])
        groups.append(("convnext_tiny", [*ours, *references_t]))
    return groups


class TrainStep:
    """One model in one memory layout: forward (+ loss) under autocast, backward, AdamW step."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, layout: str,
                 device: torch.device, precision: str, compile_mode: str | None) -> None:
        model = model.to(device).train()
        self.memory_format = FORMATS[layout]
        model = model.to(memory_format=self.memory_format)
        self.optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
        self.model = torch.compile(model, mode=compile_mode) if compile_mode else model
        self.cuda_graphs = compile_mode in CUDA_GRAPH_MODES
        self.images = images.contiguous(memory_format=self.memory_format)
        self.labels = labels
        self.device, self.precision = device, precision

    def __call__(self) -> None:
        if self.cuda_graphs:  # as roadmap.classifier.Classifier: each step a new CUDA-graph iteration
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(self.device, self.precision):
            loss = F.cross_entropy(self.model(self.images), self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64", help="image sizes, comma-separated (default 64; 224 is slow on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 32 at 224 px, 64 at 64 px)")
    parser.add_argument("--rungs", default="all",
                        help="'all' adopted r50 rungs, 'endpoints' (resnet50, separate_downsampling), 'family' "
                        "(convnext_tiny … convnext_xlarge), or a list of rungs and family models")
    parser.add_argument("--formats", default="contiguous,channels_last", help="memory layouts to measure")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per model for a rung without reference")
    parser.add_argument("--ref-steps", type=int, default=None,
                        help="timed steps (rounds) per model in a comparison group (default 4; 15 with --quick)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    parser.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth of every rung but resnet50 (0 there, as torchvision's) and of the ConvNeXt references")
    parser.add_argument("--no-references", action="store_true", help="our rungs only")
    parser.add_argument("--width-mult", default=None,
                        help="model.width_mult of our rungs and the ConvNeXt references, comma-separated (e.g. "
                        "1,0.25: full and the CPU proxy ladder's quarter width; default 1, --quick 1,0.25); ResNet-50's reference at 1 only")
    parser.add_argument("--num-classes", type=int, default=1000, help="classes of every model's head, references too")
    parser.add_argument("--quick", action="store_true",
                        help="64 px, the endpoints and their references at width 1 and 0.25, 15 rounds")
    parser.add_argument("--matmul-size", type=int, default=2048,
                        help="side n of the n x n matmul yardstick (default 2048; small only to try the script quickly)")
    parser.add_argument("--conv-pointwise", action="store_true",
                        help="add our ConvNeXt endpoint with its 1x1 convs run as convolutions (NCHW; how every "
                        "rung ran them before they became Linear layers on the channels-last view) to its comparison")
    parser.add_argument("--op-profile", type=int, default=0, metavar="N",
                        help="after the timing, profile one step of each model (torch.profiler) and print its N "
                        "most expensive ops by self time, with call counts")
    add_device_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.rungs, args.width_mult = "64", "endpoints", args.width_mult or "1,0.25"
    args.ref_steps = args.ref_steps or (15 if args.quick else 4)
    width_mults = [float(w) for w in csv_list(args.width_mult or "1")]
    device = setup_device(args)

    all_rungs = roadmap.list_steps("r50")
    if args.rungs == "all":
        rungs = all_rungs
    elif args.rungs in ("endpoints", "family"):
        rungs = list(ENDPOINTS if args.rungs == "endpoints" else FAMILY)
    else:
        rungs = csv_list(args.rungs)
        unknown = sorted(set(rungs) - set(roadmap.list_steps("r50", adopted_only=False)) - set(FAMILY))
        if unknown:
            parser.error(f"--rungs: unknown {unknown}; valid: {all_rungs + FAMILY}")
    layouts = csv_list(args.formats)
    for layout in layouts:
        if layout not in FORMATS:
            parser.error(f"--formats: {layout!r} is not one of {list(FORMATS)}")
    sizes = [int(s) for s in csv_list(args.sizes)]

    print_header("train-step throughput: forward + backward + AdamW, images/s", device, args)
    matmul = Matmul(device, torch.bfloat16 if args.precision == "bf16" else torch.float32, n=args.matmul_size)
    start = time.perf_counter()

    for size in sizes:
        batch = args.batch or DEFAULT_BATCH.get(size, 64)
        g = torch.Generator().manual_seed(0)
        images = torch.randn(batch, 3, size, size, generator=g).to(device)
        labels = torch.randint(0, args.num_classes, (batch,), generator=g).to(device)
        for width_mult in width_mults:
            arch = {"num_classes": args.num_classes, "width_mult": width_mult}
            groups = groups_for(rungs, args.drop_path, not args.no_references, arch, args.conv_pointwise)
            results, matmul_gflops = measure(groups,
                                             images, labels, layouts, matmul, device, args)
            print(f"## {size} px, batch {batch}, width_mult {width_mult:g}, {args.precision}; plain "
                  f"{matmul.n}x{matmul.n} {str(matmul.dtype).removeprefix('torch.')} matmul: {matmul_gflops:.1f} "
                  f"GFLOP/s (median, interleaved with the steps)\n")
            _print_ladder(rungs, layouts, results, matmul_gflops)
            if not args.no_references:
                _print_comparisons(groups, layouts, results)
    print(f"# total {time.perf_counter() - start:.0f} s")
    return 0


def measure(groups: list[tuple[str, list[Entry]]], images: torch.Tensor, labels: torch.Tensor, layouts: list[str],
            matmul: Matmul, device: torch.device, args: argparse.Namespace) -> tuple[dict, float]:
    """Every group's models in every layout, interleaved with the matmul yardstick: one row per
    (label, layout), and the matmul's GFLOP/s."""
    batch, size = images.shape[0], images.shape[-1]
    results: dict[tuple[str, str], dict] = {}
    matmul_times: list[float] = []
    for group, entries in groups:
        steps = args.ref_steps if len(entries) > 1 else args.steps
        fns: dict[str, Callable[[], None]] = {}
        gmacs: dict[str, float] = {}  # conv + linear MACs of one image (any module: meta tensors)
        for entry in entries:
            for layout in layouts:
                torch.manual_seed(0)
                model = entry.build()
                gmacs[entry.label] = roadmap.complexity(model, size)["gmacs"]
                fns[f"{entry.label}|{layout}"] = TrainStep(
                    model, images, labels, layout, device, args.precision, args.compile_mode if args.compile else None
                )
        fns["matmul"] = matmul
        t0 = time.perf_counter()
        timings = interleave(fns, steps, device, warmup=args.warmup)
        matmul_times += timings.pop("matmul").wall
        for entry in entries:
            for layout in layouts:
                t = timings[f"{entry.label}|{layout}"]
                results[(entry.label, layout)] = {
                    "group": group, "entry": entry, "layout": layout, "wall": t.median_wall,
                    "cpu": t.median_cpu, "spread": t.spread(), "gmacs": gmacs[entry.label], "walls": t.wall,
                    "img_s": batch / t.median_wall, "gflop_s": gmacs[entry.label] * 2 * 3 * batch / t.median_wall,
                }
        print(f"#   {size} px {group}: {len(fns) - 1} models x {steps} steps in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)
        if args.op_profile:
            for name, fn in fns.items():
                if name != "matmul":
                    print_op_profile(name, fn, args.op_profile)
        del fns, timings
        gc.collect()
    return results, matmul.flop / statistics.median(matmul_times) / 1e9


def print_op_profile(name: str, step: Callable[[], None], top: int) -> None:
    """One profiled step: its `top` ops by self CPU time (the step is warm: timed before)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"### op profile: {name.replace('|', ', ')} (one step, {total / 1e3:.0f} ms self CPU time)\n")
    rows = [{"op": e.key, "calls": e.count, "self ms": e.self_cpu_time_total / 1e3,
             "% of step": 100 * e.self_cpu_time_total / total} for e in events[:top]]
    print_table(rows, ["op", "calls", "self ms", "% of step"], {"self ms": 1, "% of step": 1})


def _print_ladder(rungs: list[str], layouts: list[str], results: dict, matmul_gflops: float) -> None:
    rows = []
    for i, step in enumerate(rungs):
        label = f"roadmap {step}"
        row = {"#": i, "rung": step}
        for layout in layouts:
            r = results[(label, layout)]
            row["GMACs"] = r["gmacs"]
            row[f"img/s {layout}"] = r["img_s"]
            row[f"GFLOP/s {layout}"] = r["gflop_s"]
        best = max(results[(label, layout)]["gflop_s"] for layout in layouts)
        row["best % of matmul"] = 100 * best / matmul_gflops
        if len(layouts) == 2:
            row["channels_last / contiguous"] = row[f"img/s {layouts[1]}"] / row[f"img/s {layouts[0]}"]
        rows.append(row)
    columns = ["#", "rung", "GMACs"] + [f"img/s {lay}" for lay in layouts] + [f"GFLOP/s {lay}" for lay in layouts]
    columns += ["best % of matmul"] + (["channels_last / contiguous"] if len(layouts) == 2 else [])
    print("### every rung (GFLOP/s = GMACs x 2 x 3 x batch / step time: conv + linear only, fwd+bwd ~ 3x fwd)\n")
    print_table(rows, columns, {"GMACs": 3, "best % of matmul": 0})


def _print_comparisons(groups: list[tuple[str, list[Entry]]], layouts: list[str], results: dict) -> None:
    """Each comparison group's first model (ours) against each of the others."""
    rows = []
    pairs = [(entries[0].label, [e.label for e in entries[1:]]) for _, entries in groups if len(entries) > 1]
    for ours, refs in pairs:
        for layout in layouts:
            if (ours, layout) not in results:
                continue
            o = results[(ours, layout)]
            for ref in [ref for ref in refs if (ref, layout) in results]:
                r = results[(ref, layout)]
                paired = [b / a for a, b in zip(o["walls"], r["walls"])]  # the same round's two steps
                ratio = statistics.median(paired)
                rows.append({
                    "ours": ours, "reference": ref, "layout": layout, "ours img/s": o["img_s"],
                    "reference img/s": r["img_s"], "ratio ours/ref": ratio,
                    "per-round ratios min-max": f"{min(paired):.3f}-{max(paired):.3f}",
                    "CPU-time ratio": r["cpu"] / o["cpu"],
                    "target >= 1.0": verdict(ratio, 1.0, low=min(paired), high=max(paired)),
                })
    if rows:
        print(f"### our models vs reference implementations (median of {len(paired)} per-round ratios, interleaved; "
              "CPU-time ratio: the same from process CPU seconds, less sensitive to other jobs)\n")
        print_table(rows, ["ours", "reference", "layout", "ours img/s", "reference img/s", "ratio ours/ref",
                           "per-round ratios min-max", "CPU-time ratio", "target >= 1.0"],
                    {"ratio ours/ref": 3, "CPU-time ratio": 3})


if __name__ == "__main__":
    sys.exit(main())
