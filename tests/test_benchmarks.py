"""Every benchmark script's main paths and options run (tiny sizes, CPU; each in a fresh process as
a user runs it). Speed is not asserted here: it lives in benchmarks/ as ratios."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import SHARED
from tests.processes import run_python

REPO = Path(__file__).resolve().parents[1]
DATA = SHARED / "data"
TINY_MODEL = ["--width-mult", "0.25", "--num-classes", "10"]
SMALL_MATMUL = ["--matmul-size", "128"]  # train_step's yardstick: four 2048^2 products a round cost seconds on a CPU

CASES = {
    "train_step.py": [
        ["--sizes", "32", "--rungs", "resnet50,kernel_5,convnext_small", "--steps", "1", "--ref-steps", "1", "--warmup",
         "0", "--batch", "2", *TINY_MODEL, *SMALL_MATMUL],
        ["--quick", "--batch", "2", "--ref-steps", "1", "--warmup", "0", "--formats", "channels_last",
         "--drop-path", "0.1", "--threads", "0", "--width-mult", "0.25", "--op-profile", "3", "--conv-pointwise",
         *SMALL_MATMUL],
    ],
    "loop_overhead.py": [
        ["--recipe", "paper", "--size", "32", "--batch", "8", "--steps", "2", "--trials", "1"],
        ["--recipe", "proxy", "--rung", "resnet50", "--size", "32", "--batch", "4", "--steps", "2", "--trials", "1",
         "--channels-last", "--no-as-run", "--precision", "bf16", "--width-mult", "0.25", "--num-classes", "4"],
    ],
    "input_pipeline.py": [
        ["--sizes", "64,96", "--images", "8", "--chunk", "4", "--rounds", "2", "--source-size", "96",
         "--data-root", str(DATA)],
        ["--sizes", "64", "--images", "4", "--chunk", "2", "--rounds", "1", "--recipe", "proxy", "--data-root", str(DATA),
         "--gpu-path", "none"],
        ["--sizes", "64", "--images", "4", "--chunk", "2", "--rounds", "1", "--gpu-decode", "--decode-device", "cpu",
         "--gpu-batch", "4", "--data-root", str(DATA)],
    ],
    "shard_formats.py": [["--limit", "20", "--rounds", "1", "--data-root", str(DATA)]],
    "memory.py": [
        ["--size", "32", "--batch", "2", "--rungs", "resnet50,gelu", "--no-references", "--channels-last", "--rss",
         "--precision", "bf16"],
    ],
    "downstream.py": [  # both heads on a quarter-width ConvNeXt-T, one step each (batch 2: the PSP's 1x1 BatchNorm)
        ["--size", "64", "--batch", "2", "--boxes", "2", "--rounds", "1", "--warmup", "0", "--width-mult", "0.25",
         "--decoder-channels", "32", "--fpn-channels", "32"],
    ],
    "proxy_epoch.py": [  # both settings' epochs and the profile in one case (each epoch a process)
        ["--rungs", "patchify_stem", "--rounds", "1", "--train-batches", "1", "--val-batches", "1", "--workers", "0",
         "--profile-images", "4", "--profile-steps", "1", "--data-root", str(DATA / "imagenette2-64-mini")],
    ],
}
# torch.compile costs a minute per case on a CPU: the slow set (tests/README.md; in the default set,
# test_run.py::test_compile_mode_reaches_torch_compile_out_of_the_hash). train_step's --precision bf16 is in the GPU cases only:
# on a CPU without bf16 units its 2048^2 bf16 matmul yardstick alone takes minutes.
SLOW_CASES = {  # one compiled case per script (each costs a minute or two of compiling on a CPU); and two
    # cases the default set covers otherwise: memory.py's references (its workers and table: the case in CASES;
    # the reference models: train_step's --quick case), train_step's endpoints without references (its --quick case)
    "train_step.py": [["--sizes", "32", "--rungs", "resnet50", "--steps", "1", "--batch", "2", "--compile",
                       "--compile-mode", "reduce-overhead", "--formats", "contiguous", *TINY_MODEL,
                       *SMALL_MATMUL],
                      ["--sizes", "32", "--rungs", "endpoints", "--batch", "2", "--ref-steps", "1", "--no-references",
                       "--warmup", "0", *SMALL_MATMUL]],
    "memory.py": [["--size", "32", "--batch", "2", "--rungs", "separate_downsampling,convnext_small", "--jobs", "1"]],
    # CUDA graphs (skipped by torch.compile for CPU tensors), the graph steps marked
    "loop_overhead.py": [["--rung", "resnet50", "--size", "32", "--batch", "4", "--steps", "2", "--trials", "1",
                          "--compile", "--compile-mode", "reduce-overhead", *TINY_MODEL]],
}
GPU_CASES = {
    "train_step.py": [["--quick", "--device", "cuda", "--precision", "bf16", "--formats", "channels_last"]],
    "loop_overhead.py": [["--device", "cuda", "--precision", "bf16", "--channels-last", "--trials", "2", "--steps", "4"],
                         ["--device", "cuda", "--precision", "bf16", "--channels-last", "--trials", "2", "--steps", "4",
                          "--compile", "--compile-mode", "reduce-overhead"]],
    "memory.py": [["--quick", "--rungs", "endpoints", "--device", "cuda", "--precision", "bf16"]],
    "input_pipeline.py": [["--sizes", "64,224", "--images", "16", "--chunk", "8", "--rounds", "2", "--gpu-path", "cuda",
                           "--data-root", str(DATA)],
                          ["--sizes", "224", "--images", "64", "--chunk", "16", "--rounds", "2", "--gpu-decode",
                           "--gpu-batch", "64", "--data-root", str(DATA)]],
}


def params(cases: dict[str, list[list[str]]], *marks: pytest.MarkDecorator) -> list:
    return [pytest.param(script, args, id=f"{script}:{' '.join(args)}", marks=marks)
            for script, variants in cases.items() for args in variants]


def run_benchmark(script: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return run_python(str(REPO / "benchmarks" / script), args, module=False, cwd=tmp_path, env=env, timeout=900)


@pytest.mark.parametrize(
    "script, args",
    params(CASES) + params(SLOW_CASES, pytest.mark.slow)
    + params(GPU_CASES, pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
)
def test_benchmark_runs(script: str, args: list[str], tmp_path: Path) -> None:
    proc = run_benchmark(script, args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\n| " in proc.stdout  # at least one Markdown table


# `<script> --help` of every script in one process (one start-up, not one per script), each run as
# `python <script> --help` runs it: its own sys.argv, as `__main__`, benchmarks/ first on sys.path.
HELP = """
import contextlib, io, json, runpy, sys
bench, helps = sys.argv[1], {}
sys.path.insert(0, bench)
for script in sys.argv[2:]:
    sys.argv = [f"{bench}/{script}", "--help"]
    out, code = io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    helps[script] = {"returncode": code, "stdout": out.getvalue()}
print(json.dumps(helps))
"""


@pytest.fixture(scope="module")
def helps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", HELP, str(REPO / "benchmarks"), *sorted(CASES)],
                          cwd=tmp_path_factory.mktemp("help"), env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.xdist_group("benchmark_help")  # one worker starts the process above once
@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_help(script: str, helps: dict[str, dict]) -> None:
    assert helps[script]["returncode"] == 0 and "usage:" in helps[script]["stdout"]


def test_device_check_fits_in_eight_minutes() -> None:
    """benchmarks/device_check.sh: its parts' caps add up to at most 410 s (with start-up, at most 450 s),
    the total its comment states."""
    script = (REPO / "benchmarks" / "device_check.sh").read_text()
    caps = [int(cap) for cap in re.findall(r"^(?:gpu_|cuda_)?part \S+ (\d+) ", script, re.MULTILINE)]
    assert len(caps) == 14 and sum(caps) <= 410
    assert f"= {sum(caps)}." in script
