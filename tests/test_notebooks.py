"""Every notebook runs top to bottom (tiny settings) under Jupyter's inline backend and shows its figures.

The kernel gets the backend Jupyter itself uses (matplotlib-inline), never Agg, so a library
that switched the backend at import would leave a plotting cell without its image.
"""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
INLINE = "module://matplotlib_inline.backend_inline"
PLOTTING = re.compile(r"\bplt\.(plot|imshow|hist|subplots|bar|scatter)\b|\bplots\.seed_band\b")


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4


def test_plotting_cell_pattern_finds_plots():
    assert PLOTTING.search("fig, ax = plt.subplots(1, 2)") and PLOTTING.search("plt.hist(final, bins=10)")
    assert not PLOTTING.search("print(plots_done)")


def _text_under_figure(cell) -> tuple[bool, str]:
    """Whether a code cell output an image, and the text it printed after its first image."""
    images = [i for i, o in enumerate(cell.outputs) if "image/png" in o.get("data", {})]
    if not images:
        return False, ""
    return True, "".join(o.text for o in cell.outputs[images[0]:]
                         if o.output_type == "stream" and o.name == "stdout")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_shows_its_figures(path, tmp_path, monkeypatch):
    monkeypatch.setenv("NETALCHEMY_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("MPLBACKEND", INLINE)  # what Jupyter sets for its kernels
    notebook = nbformat.read(path, as_version=4)
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and "Question" in first.source  # each opens with its question
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in notebook.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0].get("evalue")
    stderr = "".join(o.get("text", "") for c in code for o in c.outputs if o.get("name") == "stderr")
    assert "IProgress not found" not in stderr
    plotting = [c for c in code if PLOTTING.search(c.source)]
    assert plotting, "every notebook draws at least one figure"
    for cell in plotting:
        shown, text = _text_under_figure(cell)
        assert shown, f"no image from:\n{cell.source}"
        # Under the figure, a printed line says what it shows on this data, with a number.
        assert re.search(r"\d", text), f"no computed line under the figure of:\n{cell.source}"
