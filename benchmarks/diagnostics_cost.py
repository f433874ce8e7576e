"""The work roadmap.diagnostics.TrainingDynamics adds to a training step, timed on its own in process
CPU time (which other jobs on a shared machine disturb far less than wall time), against one
training step (forward, backward, AdamW) of the same model on the same batch.

    python benchmarks/diagnostics_cost.py          # the default experiment's model, 64 px, batch 64

- every optimizer step: the global gradient norm, a copy of the update layers' weights and the
  norms of their change (roadmap.diagnostics.update_layers);
- on a measured batch (every 10th by default): the 12 RMS reductions of the activation hooks, on
  the tensors the hooks see (captured from one training forward).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from common import add_device_args, print_header, setup_device

import roadmap  # noqa: E402
from roadmap.diagnostics import rms, update_layers  # noqa: E402


def cpu_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median process CPU seconds of one call."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rung", default="separate_downsampling")
    parser.add_argument("--width-mult", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (the parts: 5x as many calls)")
    add_device_args(parser, compile_option=False)
    args = parser.parse_args(argv)
    device = setup_device(args)
    if device.type != "cpu":
        raise SystemExit("process CPU time measures CPU work only: run it with --device cpu")
    print_header("training-dynamics diagnostics: their work per step, process CPU time", device, args)
    torch.manual_seed(0)
    model = roadmap.build_model(args.rung, num_classes=10, width_mult=args.width_mult, drop_path=0.05, layer_scale=1e-6)
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    layers = update_layers(model)

    def train_step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    def every_step() -> None:
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        before = [m.weight.detach().clone() for m in layers.values()]
        ratios = [torch.linalg.vector_norm(m.weight - w) / torch.linalg.vector_norm(w) for m, w in zip(layers.values(), before)]
        torch.stack([norm, *ratios])

    train_step()
    step = cpu_seconds(train_step, args.steps)
    per_step = cpu_seconds(every_step, 5 * args.steps)
    seen: list[torch.Tensor] = []  # what ActivationStats' hooks receive, in one training-mode forward
    for stage in model.stages:
        stage.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
        stage.blocks[-1].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
        stage.blocks[-1].drop_path.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    with torch.no_grad():
        model(x)
    per_measured = cpu_seconds(lambda: torch.stack([rms(t) for t in seen]), 5 * args.steps)
    print(f"training step: {1e3 * step:.1f} ms")
    print(f"gradient norm + update ratios (every optimizer step): {1e3 * per_step:.2f} ms = {100 * per_step / step:.2f}%")
    print(f"activation statistics (on a measured batch): {1e3 * per_measured:.2f} ms = {100 * per_measured / step:.2f}%, "
          f"{10 * per_measured / step:.3f}% of every step at every 10th batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
