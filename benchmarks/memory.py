"""Peak memory of one train step (forward + backward + AdamW step) of every adopted r50 rung and of
the reference implementations, each in a fresh subprocess.

    python benchmarks/memory.py                  # 224 px, batch 32, every rung + references (CPU: ~5 min)
    python benchmarks/memory.py --quick          # 64 px, batch 64
    python benchmarks/memory.py --rungs endpoints --channels-last --rss
    python benchmarks/memory.py --device cuda --precision bf16
    python benchmarks/memory.py --rungs convnext_small,convnext_base --size 224 --batch 8   # the family vs timm/torchvision

How (CPU): each model runs in its own `python benchmarks/memory.py --worker …` process (--jobs of
them at a time; what one measures is its own tensors, whatever runs beside it). It builds
the model, the AdamW optimizer and the batch, allocates the optimizer state (one AdamW step on
zero gradients, then zero_grad(set_to_none=True)), so that what is live before the measured step
is what is live before every step of a training run: parameters, buffers, AdamW state and the
batch (the "resident" column, summed from the tensors). The step then runs under
`torch.profiler` with profile_memory=True, which records every tensor allocation and free of
torch's CPU allocator; their running sum, in time order, peaks at the step's peak of live tensor
memory above what was resident ("step peak": activations saved for backward, gradients,
temporaries). "peak" = resident + step peak: the CPU counterpart of
torch.cuda.max_memory_allocated, and what it reports on a GPU (where it is what is used).
It counts tensors only, not the allocator's caching or the libraries' own buffers.

With --rss, as a cross-check, the worker also reports the growth of the process's resident set
during the step (Linux: the peak RSS, VmHWM, is reset through /proc/self/clear_refs right before
the step; glibc is told by MALLOC_MMAP_THRESHOLD_=65536 to map and unmap every block >= 64 KiB, so
freed activations leave the resident set). It includes what oneDNN/MKL allocate outside torch on
first use. It is off by default: mapping every block makes the steps ~1.5x slower (page faults).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import TORCHVISION_CONVNEXTS, add_device_args, autocast, csv_list, print_header, print_table, setup_device

import roadmap  # noqa: E402
from roadmap.recipe import param_groups  # noqa: E402

MB = 2**20


FAMILY = roadmap.list_steps("family")  # convnext_tiny … convnext_xlarge: built with drop path 0, as the references


def models(rungs: list[str], references: bool) -> tuple[list[dict], list[tuple[str, str]]]:
    """Worker specs: our rungs, then the reference implementations beside the endpoints and the family's
    models; and the (ours, reference) label pairs to compare."""
    specs = [{"impl": "roadmap", "name": step, "overrides": {"drop_path": 0.0} if step in FAMILY else {}}
             for step in rungs]
    compared: list[tuple[dict, str]] = []  # (our spec, the reference model's name)
    if references and "resnet50" in rungs:
        compared.append((specs[rungs.index("resnet50")], "resnet50"))
    if references and "separate_downsampling" in rungs:
        specs.append({"impl": "roadmap", "name": "separate_downsampling", "overrides": {"layer_scale": 1e-6}})
        compared.append((specs[-1], "convnext_tiny"))
    if references:
        compared += [(specs[rungs.index(step)], step) for step in rungs if step in FAMILY]
    pairs = []
    for ours, name in compared:
        impls = ["torchvision"] * (name == "resnet50" or name in TORCHVISION_CONVNEXTS) + ["timm"] * name.startswith("convnext")
        for impl in impls:
            reference = {"impl": impl, "name": name}
            if reference not in specs:
                specs.append(reference)
            pairs.append((label(ours), label(reference)))
    return specs, pairs


def build(spec: dict) -> torch.nn.Module:
    if spec["impl"] == "roadmap":
        return roadmap.build_model(spec["name"], num_classes=1000, **spec["overrides"])
    if spec["impl"] == "torchvision":
        import torchvision

        return getattr(torchvision.models, spec["name"])(**({"stochastic_depth_prob": 0.0} if "convnext" in spec["name"] else {}))
    import timm

    return timm.create_model(spec["name"])


def label(spec: dict) -> str:
    extra = "".join(f" ({k}={v:g})" for k, v in spec.get("overrides", {}).items())
    return f"{spec['impl']} {spec['name']}{extra}"


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def worker(spec: dict, args: argparse.Namespace) -> dict:
    device = setup_device(args)
    torch.manual_seed(0)
    model = build(spec).to(device).train()
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    for p in model.parameters():  # allocate the AdamW state as a first step would
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tensors = list(itertools.chain(model.parameters(), model.buffers(), (images, labels),
                                   (t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t))))
    resident = sum(t.numel() * t.element_size() for t in tensors)
    params = sum(p.numel() for p in model.parameters())

    def step() -> None:
        with autocast(device, args.precision):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result = {"label": label(spec), "params": params, "resident": resident}
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        result["step_peak"] = torch.cuda.max_memory_allocated(device) - before
        result["rss_growth"] = None
    else:
        from torch.profiler import ProfilerActivity, profile

        rss_ok = args.rss
        try:
            if rss_ok:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        except OSError:
            rss_ok = False
        rss_before = _status("VmRSS")
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()
        hwm = _status("VmHWM")
        events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                        key=lambda e: e.start_ns())
        running = list(itertools.accumulate(e.nbytes() for e in events))
        result["step_peak"] = max([0, *running])
        result["rss_growth"] = hwm - rss_before if rss_ok else None
    result["seconds"] = time.perf_counter() - start
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="64 px, batch 64")
    parser.add_argument("--rungs", default="all", help="'all' adopted r50 rungs, 'endpoints', 'family' "
                        "(convnext_tiny … convnext_xlarge), or a list of rungs and family models")
    parser.add_argument("--no-references", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--rss", action="store_true", help="also the resident-set growth (see above; slower)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="worker processes at a time (default 2; each needs up to ~6 GiB at 224 px / batch 32)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    add_device_args(parser, compile_option=False)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch = 64, 64
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args)))
        return 0

    rungs = {"all": roadmap.list_steps("r50"), "endpoints": ["resnet50", "separate_downsampling"],
             "family": FAMILY}.get(args.rungs)
    rungs = rungs or csv_list(args.rungs)
    device = setup_device(args)
    print_header(f"peak memory of one train step, {args.size} px, batch {args.batch}, "
                 f"{'channels_last' if args.channels_last else 'contiguous'}, {args.precision}", device, args)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"} if args.rss else None
    passthrough = [f"--size={args.size}", f"--batch={args.batch}", f"--device={device}", f"--precision={args.precision}"]
    passthrough.append(f"--threads={args.threads}")
    if args.channels_last:
        passthrough.append("--channels-last")
    if args.rss:
        passthrough.append("--rss")
    rows, by_label = [], {}
    start = time.perf_counter()

    def run(spec: dict) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec), *passthrough],
                              capture_output=True, text=True, env=env)

    specs, pairs = models(rungs, not args.no_references)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:  # workers side by side: memory is per process
        procs = list(pool.map(run, specs))
    failed = 0
    for spec, proc in zip(specs, procs):
        if proc.returncode:
            print(f"# {label(spec)}: worker failed ({proc.returncode}):\n{proc.stderr[-2000:]}", file=sys.stderr)
            failed += 1
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["peak"] = r["resident"] + r["step_peak"]
        by_label[r["label"]] = r
        rows.append({
            "model": r["label"], "params (M)": r["params"] / 1e6, "resident MiB": r["resident"] / MB,
            "step peak MiB": r["step_peak"] / MB, "peak MiB": r["peak"] / MB,
            "RSS growth MiB": r["rss_growth"] / MB if r["rss_growth"] is not None else None,
            "step s": r["seconds"],
        })
    columns = ["model", "params (M)", "resident MiB", "step peak MiB", "peak MiB"] + (["RSS growth MiB"] if args.rss else [])
    print_table(rows, columns + ["step s"],
                {"params (M)": 3, "resident MiB": 0, "step peak MiB": 0, "peak MiB": 0, "RSS growth MiB": 0, "step s": 1})

    cmp = [{"ours": o, "reference": r, "peak ours/ref": by_label[o]["peak"] / by_label[r]["peak"],
            "step peak ours/ref": by_label[o]["step_peak"] / by_label[r]["step_peak"]}
           for o, r in pairs if o in by_label and r in by_label]
    if cmp:
        print("### our models vs references (lower is better)\n")
        print_table(cmp, ["ours", "reference", "peak ours/ref", "step peak ours/ref"],
                    {"peak ours/ref": 3, "step peak ours/ref": 3})
    print(f"# total {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
