"""The Sweep panel headless: a recorded sweep shows at once, a click on the plot picks,
Export copies; a live run fills the table; bad settings are said in the panel."""

from __future__ import annotations

import pytest

from conftest import copy_project

pytest.importorskip("ipywidgets")


def test_panel_on_a_swept_project_shows_picks_and_exports(swept, tmp_path):
    from workbench.project import Workbench
    from workbench_widgets import SweepPanel

    root = copy_project(swept[0], tmp_path, "panel")
    with Workbench.open(root) as wb:
        panel = SweepPanel.for_project(wb)
        assert "ewb-sweep-panel" in panel._dom_classes
        # the recorded sweep is on screen without recomputing anything
        assert panel.table.value.count("class='ewb-row'") == 4 and "per-layer mix" in panel.table.value
        assert panel.kv.value == 32 and panel.export_hf.value and panel.recipes["int8_edges_fp16"].value
        assert len(panel.figure.data[0].x) == 4
        assert panel.export_button.disabled  # nothing chosen yet
        # a click on a point of the plot picks that recipe
        trace = panel.figure.data[0]
        i = [c[0] for c in trace.customdata].index("fp16")
        panel._clicked(trace, type("Points", (), {"point_inds": [i]})())
        assert wb.chosen == "sweep-sweep-fp16" and "chose fp16" in panel.message.value
        assert "✓ fp16" in panel.table.value and not panel.export_button.disabled
        panel.export_dest.value = str(tmp_path / "out")
        panel.export_button.click()
        assert (tmp_path / "out" / "sweep-sweep-fp16.tflite").is_file() and "exported" in panel.message.value
        # the dropdown's Pick, and a failed row cannot be picked (the message says why)
        panel.choice.value = "dynamic_int8"
        panel.pick_button.click()
        assert wb.chosen == "sweep-sweep-dynamic_int8"
        panel.pick("int8_edges_fp16@export_hf")
        assert "failed" in panel.message.value and wb.chosen == "sweep-sweep-dynamic_int8"


def test_panel_runs_a_sweep_and_refuses_bad_settings(samples, tmp_path):
    from workbench.blueprint import Blueprint
    from workbench.mapping import Mapping
    from workbench_widgets import SweepPanel

    m = Mapping.propose(Blueprint.from_hf(samples["llama"]), samples["llama"])
    panel = SweepPanel(m, out=tmp_path / "sw")
    for box in panel.recipes.values():
        box.value = False
    panel.run_button.click()
    assert panel.state == "failed" and "no recipes" in panel.message.value
    panel.recipes["dynamic_int8"].value = True
    panel.where.value = "dask"
    panel.run_button.click()
    assert "scheduler&#x27;s address" in panel.message.value and panel._work.thread is None
    panel.where.value = "local"
    panel.prefill.value = "8,x"
    panel.run_button.click()
    assert "not a list of lengths" in panel.message.value
    panel.prefill.value, panel.kv.value = "8", 32
    panel.run_button.click()
    assert panel.state == "running" and panel.stop_button.disabled is False
    panel.wait(300)
    assert panel.state == "done", panel.message.value
    assert panel.table.value.count("class='ewb-row'") == 1 and "dynamic_int8" in panel.table.value
    assert len(panel.figure.data[0].x) == 1 and panel.choice.options == ("dynamic_int8",)
    assert "1 of 1 recipes converted" in panel.stage_html.value and panel.run_button.disabled is False


def test_panel_times_rows_in_litert_lm_when_asked(samples, tmp_path, monkeypatch):
    """The "timed in" choice reaches the sweep's settings as engine= (the rows' timing itself
    is tested on the core: tests/test_bundle.py)."""
    from workbench import WorkbenchError
    from workbench.blueprint import Blueprint
    from workbench.mapping import Mapping
    from workbench_widgets import SweepPanel
    from workbench_widgets import sweep as sweep_widget

    seen = {}

    def refuse(*args, **kwargs):
        seen.update(kwargs)
        raise WorkbenchError("stop here", hint="(test)")

    monkeypatch.setattr(sweep_widget, "prepare", refuse)
    m = Mapping.propose(Blueprint.from_hf(samples["llama"]), samples["llama"])
    panel = SweepPanel(m, out=tmp_path / "sw")
    panel.run_button.click()
    assert "engine" not in seen and "stop here" in panel.message.value  # the default: ai-edge-litert
    panel.engine.value = "litert-lm"
    panel.run_button.click()
    assert seen["engine"] == "litert-lm"
