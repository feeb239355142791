"""The notebooks in examples/: stored without outputs, and each one executed top to bottom in a real
Jupyter kernel (nbclient, kernel "python3" from ipykernel) in quick mode (DEEPSTEP_QUICK=1, see
src/deepstep/quick.py), within the time budget in its metadata (`metadata.deepstep.budget_s`).

The kernel runs this checkout's sources (PYTHONPATH), writes its runs into a temporary folder and
uses the tests' cache folder (conftest.py), so nothing outside the test's folders is touched.
Budgets are about three times the quick-mode time measured on a busy 2-core machine.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conftest import SRC

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))

nbformat = pytest.importorskip("nbformat")


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def test_there_is_a_notebook_per_topic():
    """Topics 1-19 of the guides, one notebook each, named NN-topic.ipynb."""
    numbers = sorted(int(p.name[:2]) for p in NOTEBOOKS if p.name[:2].isdigit())
    assert numbers == list(range(1, 20)), [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_clean(path):
    """No outputs or execution counts (the repository stays small), a valid notebook, a time
    budget, and a first code cell that installs deepstep only where it is missing."""
    nb = _read(path)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, path.name
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: a cell was saved with outputs"
    assert isinstance(nb.metadata.get("deepstep", {}).get("budget_s"), int), f"{path.name}: no budget_s"
    assert 'find_spec("deepstep") is None' in code[0].source, f"{path.name}: the first cell is not the set-up"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = _read(path)
    budget = nb.metadata["deepstep"]["budget_s"]
    # the kernel inherits this environment: quick mode, this checkout's sources, runs under tmp_path
    monkeypatch.setenv("DEEPSTEP_QUICK", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p))
    monkeypatch.setenv("DEEPSTEP_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as the CLI tests (conftest.cli_env): no thread contention
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(nb, timeout=budget, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, when a cell fails
    seconds = time.perf_counter() - start
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    pictures = [o for o in outputs if "image/png" in o.get("data", {}) or "<img" in o.get("data", {}).get("text/html", "")]
    assert pictures, f"{path.name} showed no picture"
    print(f"{path.name}: {seconds:.1f} s (budget {budget} s)")
    assert seconds < budget, f"{path.name} took {seconds:.0f} s, over its budget of {budget} s"
