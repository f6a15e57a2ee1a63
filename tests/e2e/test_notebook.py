"""notebooks/explore.ipynb runs top to bottom (nbclient, a kernel on this interpreter), through the Python API
alone (no subprocess), with nothing downloaded: the demo run is handed in, the own-model part uses the digits
scikit-learn ships."""

from __future__ import annotations

import json
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.ui_helpers import ROOT, copy_run

pytestmark = pytest.mark.slow  # whole module: real runs or subprocesses

NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"


@pytest.fixture
def kernel_name(tmp_path, monkeypatch) -> str:
    """A kernelspec that starts *this* Python (the venv's), whatever ``python`` is on PATH."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "mimic-explorer-test"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "mimic_explorer tests",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "mimic-explorer-test"


def test_explore_notebook_runs_top_to_bottom(demo_run, tmp_path, monkeypatch, kernel_name):
    run = copy_run(demo_run, tmp_path / "run")
    monkeypatch.setenv("MIMIC_EXPLORER_RUN", str(run))  # the notebook builds the demo itself without it
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, kernel_name=kernel_name, timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = {
        i: "".join(o.get("text", "") + json.dumps(o.get("data", {})) for o in cell.get("outputs", []))
        for i, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
    }
    text = "\n".join(outputs.values())
    assert "Traceback" not in text and "Error" not in "".join(
        o.get("ename", "") for c in notebook.cells for o in c.get("outputs", [])
    )
    assert "1438 samples;" in text and "mimic_score" in text
    assert "Kept: " in text and "precision" in text
    assert "application/vnd.holoviews_load.v0+json" in text or "application/vnd.bokehjs_exec.v0+json" in text
    assert "FilterRule(kind='quantile'" in text
    assert "TensorDataset[" in text and "AUROC" in text and "keep_mask is indexed like the dataset" in text
    assert "kept 1010 of 1438; spec " in text  # the export from Python
    pictures = [o for c in notebook.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pictures) == 4
    assert "subprocess" not in "".join(cell.source for cell in notebook.cells)
