"""Helpers shared by the benchmarks: device / precision / thread options, interleaved timing with
medians, the plain-matmul yardstick, and the printed tables.

Every benchmark measures the thing under test and its reference in the same process, alternating
between them round by round (the order is reversed every other round, so a drift in the machine's
load falls on both alike), and reports medians and the ratio of the medians.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/x.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

# The ConvNeXt models torchvision has (timm has all five of the family).
TORCHVISION_CONVNEXTS = ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large")


# --------------------------------------------------------------------------------------------
# Options


def add_device_args(parser: argparse.ArgumentParser, compile_option: bool = True) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda when available)")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32",
        help="fp32, or bf16 autocast for forward and loss (bf16-mixed, as trainer=gpu)",
    )
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads on CPU (default 1; 0: torch's own choice, one per core). One thread "
        "gives stable ratios on a machine shared with other jobs, where OpenMP threads wait for a "
        "descheduled sibling at every op (here 2 threads ran 2.7x slower than 1 beside a busy core)",
    )
    if compile_option:
        from roadmap.plan import COMPILE_MODES

        parser.add_argument("--compile", action="store_true", help="torch.compile every model (as trainer.compile)")
        parser.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                            help="torch.compile mode with --compile (as trainer.compile_mode; reduce-overhead: "
                            "CUDA graphs)")


def setup_device(args: argparse.Namespace) -> torch.device:
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available here")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here, on both sides
        torch.backends.cudnn.allow_tf32 = False
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def csv_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def load_recipe(name: str, batch: int) -> dict[str, Any]:
    """conf/recipe/<name>.yaml as a run composes it (Hydra, with its `defaults`), global batch = `batch`."""
    from omegaconf import OmegaConf

    from roadmap.ladder import compose_run

    recipe = OmegaConf.to_container(compose_run([f"recipe={name}", "~experiment"]).recipe, resolve=True)
    recipe["global_batch"] = batch
    return recipe


# --------------------------------------------------------------------------------------------
# Environment


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, args: argparse.Namespace | None = None) -> list[str]:
    """Lines that say where and how the figures were taken."""
    lines = [
        f"date {datetime.date.today().isoformat()}, host {platform.node()}, python {platform.python_version()}, "
        f"torch {torch.__version__}",
        f"cpu: {cpu_name()}, {os.cpu_count()} logical cores, torch intra-op threads {torch.get_num_threads()}",
    ]
    if hasattr(os, "getloadavg"):
        load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
        lines.append(f"load average before the run (1, 5, 15 min): {load} (other jobs share this machine when > 0)")
    if device.type == "cuda":
        lines.append(f"device: {torch.cuda.get_device_name(device)}")
    else:
        lines.append("device: cpu")
    if args is not None:
        opts = {k: v for k, v in vars(args).items() if k not in ("worker",)}
        lines.append("options: " + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in opts.items()))
    return lines


def print_header(title: str, device: torch.device, args: argparse.Namespace | None = None) -> None:
    print(f"# {title}")
    for line in environment(device, args):
        print(f"# {line}")
    print(flush=True)


# --------------------------------------------------------------------------------------------
# Timing


@dataclass
class Timings:
    """Per-call wall seconds and process CPU seconds of one timed thing."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall) if self.wall else float("nan")

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu) if self.cpu else float("nan")

    def spread(self) -> float:
        """(max - min) / median of the wall times: how noisy the machine was for this one."""
        if len(self.wall) < 2:
            return float("nan")
        return (max(self.wall) - min(self.wall)) / self.median_wall


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def interleave(
    fns: Mapping[str, Callable[[], Any]],
    rounds: int,
    device: torch.device,
    warmup: int = 1,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, Timings]:
    """Call every fn once per round, `warmup` untimed rounds first; the order alternates
    forward / reversed between rounds. Returns each fn's wall and CPU seconds per call."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    out = {name: Timings() for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            wall, cpu = timed(fns[name], device)
            out[name].wall.append(wall)
            out[name].cpu.append(cpu)
        if on_round is not None:
            on_round(r)
    return out


class Matmul:
    """A plain n x n matmul (2 n^3 FLOP per call), the machine's attainable FLOP rate for dense
    math in `dtype`. One call runs `repeat` products."""

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeat: int = 4):
        g = torch.Generator(device="cpu").manual_seed(0)
        self.a = torch.randn(n, n, generator=g).to(device, dtype)
        self.b = torch.randn(n, n, generator=g).to(device, dtype)
        self.flop = 2.0 * n**3 * repeat
        self.repeat = repeat
        self.n = n
        self.dtype = dtype

    def __call__(self) -> None:
        for _ in range(self.repeat):
            torch.mm(self.a, self.b)


# --------------------------------------------------------------------------------------------
# Tables


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: Mapping[str, int] | None = None) -> None:
    """A Markdown table (it pastes into benchmarks/README.md as it is)."""
    digits = digits or {}
    cells = [[fmt(row.get(c), digits.get(c, 2)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows) for c in columns]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join(("-" * (w + 1) + ":") if n else "-" * (w + 2) for w, n in zip(widths, numeric)) + "|")
    for r in cells:
        print("| " + " | ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(r, widths, numeric)) + " |")
    print(flush=True)


def verdict(ratio: float, target: float, low: float | None = None, high: float | None = None) -> str:
    """"met" / "MISSED"; "within noise" when missed by the median but the per-round ratios
    (low..high) straddle the target."""
    if ratio != ratio:
        return "–"
    if ratio >= target:
        return "met"
    if low is not None and high is not None and low <= target <= high:
        return "within noise"
    return "MISSED"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence stdout and stderr (progress bars, Lightning's banners) inside a timed section."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        yield
