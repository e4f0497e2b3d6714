"""Every notebook runs top to bottom in a fresh kernel, headless (as CI and
`bash run.sh --headless` run them), and its outputs hold no error."""

from __future__ import annotations

import pytest

from workbench.notebooks import NOTEBOOKS, run_notebook

PATHS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def test_the_tour_exists():
    assert (NOTEBOOKS / "00_tour.ipynb") in PATHS


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs_headless(path, tmp_path):
    nb = run_notebook(path, html_dir=tmp_path)
    assert (tmp_path / f"{path.stem}.html").stat().st_size > 0
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    noise = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"
             and ("Failed to load" in o.text or "absl" in o.text)]
    assert not noise, noise


def test_committed_notebooks_have_no_outputs():
    import nbformat

    for p in PATHS:
        nb = nbformat.read(p, as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in nb.cells if c.cell_type == "code"), f"{p.name}: clear its outputs before committing"
