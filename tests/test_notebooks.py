"""Every analysis/*.ipynb runs top to bottom in a fresh kernel and draws at least one figure,
on the recorded experiment in whatever state it is (absent, partial or complete); the ladder
notebook also on a complete synthetic experiment."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.test_report import _synthetic_records, _write_run

ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"
NOTEBOOKS = sorted(ANALYSIS.glob("*.ipynb"))


def run_notebook(path: Path, experiment_dir: Path | None = None) -> list[dict]:
    """Execute in a fresh kernel with cwd analysis/ (optionally pointing the parameters cell at
    `experiment_dir`); returns every code cell output."""
    notebook = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), "commit notebooks without outputs"
    if experiment_dir is not None:
        cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
        cell.source += f"\nEXPERIMENT_DIR = {str(experiment_dir)!r}"
    # Kernel "python3" starts `python -m ipykernel_launcher`; jupyter_client swaps in sys.executable,
    # so the kernel runs in this interpreter's environment, where roadmap is importable.
    client = NotebookClient(notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(ANALYSIS)}},
                            extra_arguments=["--HistoryManager.enabled=False"])
    client.execute()
    return [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _assert_ran(outputs: list[dict]) -> None:
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors[0].get("traceback") if errors else ""
    assert any("image/png" in o.get("data", {}) for o in outputs), "no figure drawn"


def test_notebooks_found() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"ladder.ipynb", "curves.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path) -> None:
    _assert_ran(run_notebook(path))


def test_ladder_notebook_on_complete_experiment(tmp_path: Path) -> None:
    experiment_dir = tmp_path / "synthetic"
    for record in _synthetic_records():
        rung = record["step"] + (f"-{record['variant']}" if record["variant"] else "")
        _write_run(experiment_dir, record, rung, record["seed"])
    outputs = run_notebook(ANALYSIS / "ladder.ipynb", experiment_dir)
    _assert_ran(outputs)
    text = "".join(o.get("text", "") for o in outputs)
    assert "12 of 13 adopted rungs have results; missing: layer_norm" in text
    rho = float(text.split("Spearman rho (ours vs paper, 12 adopted rungs): ")[1].split()[0])
    assert 0.8 < rho <= 1.0
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
