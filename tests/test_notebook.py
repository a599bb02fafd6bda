"""The walkthrough notebook runs top to bottom, offline, on a CPU: executed here so it cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_runs_top_to_bottom(tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Kernel "python3" is started with this interpreter (jupyter_client swaps a bare `python` for sys.executable),
    # so the notebook sees the same installed trainwatch as the tests.
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = {i: _text(cell) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"}
    text = "\n".join(outputs.values())
    assert "verdict: healthy" in text
    assert "verdict: exploding | stopped at step" in text
    assert "exploding lr_too_high at step" in text and "fix 1." in text
    assert "[pass] examples with targets" in text  # the pre-flight checklist was printed
    assert "exit code 1" in text  # the CLI agrees: a failure was diagnosed
    last = notebook.cells[[i for i, c in enumerate(notebook.cells) if c.cell_type == "code"][-1]]
    assert any("image/png" in output.get("data", {}) for output in last.outputs)  # the plot is shown


def _text(cell) -> str:
    parts = []
    for output in cell.outputs:
        if "text" in output:
            parts.append(output["text"])
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)
