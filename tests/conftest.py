"""Shared test fixtures. Reference files and data are read from ../shared beside the repository."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch

from tests.slurm_cluster import slurm_cluster  # noqa: F401 - the session's one-node SLURM cluster

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"  # the one place tests name ../shared
MINI_DATA = SHARED / "data" / "imagenette2-64-mini"
SMOKE = ["experiment=smoke", f"data.root={MINI_DATA}"]  # a smoke run on the mini set
# The least a rung can train: one epoch of one batch, validated on one batch.
TINY = ["recipe.epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]


def pytest_configure() -> None:
    """Under pytest-xdist (`-n N`), each worker and the processes it starts get an equal share of the
    CPU threads instead of all of them (N workers × all cores would oversubscribe the machine)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the tests marked `slow` (left out by default: tests/README.md)")


def pytest_itemcollected(item: pytest.Item) -> None:
    """Under `--dist loadgroup`, the tests on the machine's one SLURM cluster (fixed ports) run on one
    xdist worker, which starts the cluster once (on two, the second would wait for the first's session
    to end); so do the tests on test_run.py's one smoke run (a module-scoped fixture runs once per
    worker that uses it). Marked as each test is collected: xdist reads the marks into node ids in its
    own pytest_collection_modifyitems, which may run before ours."""
    for fixture, group in (("slurm_cluster", "slurm"), ("smoke_run", "smoke_run")):
        if fixture in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_xdist_node_collection_finished(node: object, ids: list[str]) -> None:
    """Under `--dist loadgroup`, a grouped test's node id ends in `@<group>` (the SLURM tests: `@slurm`); if
    it does not, the grouping is silently off (pytest 9.2 with pytest-xdist 3.8): stop rather than run the
    SLURM tests on two workers, where one waits for the other's cluster."""
    ungrouped = [i for i in ids if i.startswith("tests/test_slurm_cluster.py::") and "@" not in i]
    if ungrouped and getattr(node, "config", None) is not None and node.config.getvalue("dist") == "loadgroup":
        pytest.exit(f"--dist loadgroup does not group {ungrouped[0]} with pytest {pytest.__version__}: install "
                    "the versions pyproject.toml's dev extra allows", returncode=4)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The `slow` tests are left out unless `--runslow` is given or `-m` chooses the tests itself
    (`-m slow`: the slow set alone)."""
    if config.getoption("--runslow") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


def reference_rows() -> list[dict[str, str]]:
    """../shared/reference/ladder.csv (for parametrizing at collection; tests take `ladder_rows`)."""
    with open(SHARED / "reference" / "ladder.csv", newline="") as f:
        return list(csv.DictReader(f))


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights and BatchNorm statistics, so equality is not an artefact of the init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return model.eval()


def family_rows() -> list[dict[str, str]]:
    """../shared/reference/family.csv: the ConvNeXt family's exact counts and the paper's figures."""
    with open(SHARED / "reference" / "family.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"../shared not found beside the repository (looked at {SHARED})")
    return SHARED


@pytest.fixture(scope="session")
def ladder_rows(shared_dir: Path) -> list[dict[str, str]]:
    return reference_rows()


@pytest.fixture(scope="session")
def mini_data(shared_dir: Path) -> Path:
    return MINI_DATA


@pytest.fixture(scope="session", autouse=True)
def decoded_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data.in_memory's cache ($XDG_CACHE_HOME/roadmap by default) goes to a temporary folder, not ~/.cache."""
    folder = tmp_path_factory.mktemp("xdg_cache")
    os.environ["XDG_CACHE_HOME"] = str(folder)
    return folder
