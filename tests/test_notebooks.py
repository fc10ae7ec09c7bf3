"""experiments/notebooks: every notebook is a jupytext pair in sync, and runs without an error.

Each notebook is read from its percent-format ``.py`` (the source of truth) and executed by nbclient in a
real IPython kernel. One kernel per test worker runs the notebooks one after another (``%reset -f``
first, so no notebook sees another's names; imported modules stay loaded, which saves the seconds of
importing JAX each time). The steps run in quick mode, writing to a temporary folder; steps 7-8 with
one epoch (``DLX_NOTEBOOK_SETTINGS``, set in each notebook's first cell), 9-10 as a reader runs them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "experiments" / "notebooks"
NOTEBOOKS = sorted(p.stem for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.py"))
# the suite's sizes: quick mode, and one epoch for steps 7-8
SETTINGS = {"epochs": 1}
CELL_TIMEOUT_S = 600
# Notebooks 09-10 run as a reader runs them (no sizes: quick mode samples the shipped pretrained UNets,
# a 1,000-step DDPM grid and 200 judged samples: 43 s and 39 s on 2 idle cores).
READER_SETTINGS = {"09_diffusion", "10_diffusion2"}


def test_one_notebook_per_book_chapter():
    assert [name[:2] for name in NOTEBOOKS] == [f"{i:02d}" for i in range(1, 11)]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_pair_is_in_sync(name):
    """The committed ``.ipynb`` (for hosted services) holds exactly the cells of the ``.py``, no outputs."""
    text = jupytext.read(NOTEBOOKS_DIR / f"{name}.py")
    paired = nbformat.read(NOTEBOOKS_DIR / f"{name}.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in paired.cells] == [(c.cell_type, c.source) for c in text.cells], (
        f"{name}.ipynb differs from {name}.py: run `uv run jupytext --sync experiments/notebooks/{name}.py`"
    )
    assert all(not c.get("outputs") for c in paired.cells), f"{name}.ipynb holds outputs: commit it cleared"
    assert paired.metadata["jupytext"]["formats"] == "ipynb,py:percent"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """One IPython kernel for this worker's notebooks, writing to a temporary folder."""
    from jupyter_client.manager import AsyncKernelManager
    from nbclient.util import run_sync

    out = tmp_path_factory.mktemp("notebooks")
    env = {**os.environ, "DLX_NOTEBOOK_OUT": str(out)}
    env["MPLBACKEND"] = "Agg"
    manager = AsyncKernelManager(kernel_name="python3")
    run_sync(manager.start_kernel)(cwd=str(out), env=env)
    yield manager, out
    run_sync(manager.shutdown_kernel)(now=True)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, kernel):
    manager, out = kernel
    nb = jupytext.read(NOTEBOOKS_DIR / f"{name}.py")
    settings = json.dumps({} if name in READER_SETTINGS else SETTINGS)
    first = f"%reset -f\nimport os\nos.environ['DLX_NOTEBOOK_SETTINGS'] = {settings!r}"
    nb.cells.insert(0, nbformat.v4.new_code_cell(first))
    client = nbclient.NotebookClient(
        nb, km=manager, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(out)}}
    )
    try:
        client.execute()  # raises CellExecutionError naming the cell and the traceback
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{name} showed no figure"
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "the book prints" in printed, f"{name} printed no book numbers beside the project's"
