"""The Explore panel, headless: tick graphs, pick a layout and height, click Refresh, and
read the core objects and the HTML the panel shows."""

from __future__ import annotations

from conftest import copy_project
from workbench_widgets.explore import ExplorePanel


def test_refresh_shows_the_chosen_graphs(explored):
    from workbench.explore import Explorer

    root, ex, graphs = explored
    panel = ExplorePanel(Explorer(root))
    assert "ewb-explore" in panel._dom_classes
    assert all(c.value and not c.disabled for c in panel.checks.values())
    panel.checks["original"].value = False
    panel.layout_choice.value = "stacked"
    panel.height.value = 450
    panel.refresh_button.click()
    view = panel.wait(120)
    assert panel.state == "done" and view.graphs == ["reauthored", "tflite"]
    assert view.layout == "stacked" and view.height == 450
    html = panel.frame.value
    assert html.count("<iframe") == 2 and "height:450px" in html
    assert "reauthored.pt2" in html and graphs["tflite"].label in html
    assert "cached" in panel.status.value and "used in place" in panel.status.value
    assert panel.explorer.graphs["reauthored"].cached  # Refresh exported nothing: nothing changed


def test_refresh_reexports_only_what_changed_and_reports_a_failure(explored, tmp_path):
    from workbench.project import Workbench

    root, _, _ = explored
    wb = Workbench.open(copy_project(root, tmp_path, "changed"))
    panel = ExplorePanel.for_project(wb)
    wb.mapping.set("ff_up_proj", "model.layers.{}.mlp.missing_weight")  # the re-authored graph cannot load now
    wb.save_mapping()
    panel.checks["tflite"].value = False
    panel.refresh()
    view = panel.wait(300)
    assert panel.state == "done"
    assert panel.explorer.graphs["original"].cached  # the checkpoint did not change
    assert not panel.explorer.graphs["reauthored"].ok
    assert view.graphs == ["original"] and [g.name for g in view.failed] == ["reauthored"]
    assert "ewb-explore-error" in panel.frame.value and "missing_weight" in panel.frame.value
    assert panel.frame.value.count("<iframe") == 1
    assert "could not be exported" in panel.status.value
    wb.close()


def test_no_conversion_disables_the_tflite_box_and_nothing_ticked_is_refused(samples, tmp_path):
    from workbench.explore import Explorer

    panel = ExplorePanel(Explorer(samples["llama"], graphs_dir=tmp_path / "g"))
    assert panel.checks["tflite"].disabled and "convert first" in panel.checks["tflite"].description
    for c in panel.checks.values():
        c.value = False
    assert panel.refresh() is None
    assert "no graph chosen" in panel.status.value and panel.error is not None


def test_the_overlay_dropdown_recolours_without_exporting(explored, monkeypatch):
    """Choosing an overlay re-draws the view with its node data and legend; the export cache
    is never consulted (#14)."""
    from workbench.explore import Explorer
    from workbench.explore.graphs import GraphStore

    root, _, _ = explored
    panel = ExplorePanel(Explorer(root))
    offered = [v for _, v in panel.overlay.options]
    assert offered == [None, "compare", "quant", "sizes"]  # fp32: no quantization error to show
    assert "per-op timing is not available" in panel.overlay_note.value
    assert "quantization error per op" in panel.overlay_note.value
    assert panel.recolour() is None  # nothing shown yet: nothing to colour
    panel.refresh()
    panel.wait(300)
    assert panel.state == "done" and "ewb-explore-legend-overlay" not in panel.frame.value
    assert "match node id" in panel.frame.value  # the sync note is there from the start
    tree = {str(p): p.stat().st_mtime_ns for p in panel.explorer.store.folder.rglob("*")}

    def no(*a, **k):
        raise AssertionError("the export cache was consulted")

    monkeypatch.setattr(GraphStore, "ensure", no)
    monkeypatch.setattr(GraphStore, "_export", no)
    panel.overlay.value = "compare"  # what choosing it in the dropdown does
    view = panel.wait(120)
    assert panel.state == "done", panel.status.value
    assert view.overlay.name == "compare" and "ewb-explore-legend" in panel.frame.value
    assert "within the tolerance" in panel.frame.value and "coloured by" in panel.status.value
    assert "Upload mapping" in panel.frame.value  # the split view holds original and re-authored
    panel.overlay.value = "quant"
    view = panel.wait(120)
    assert view.overlay.name == "quant" and "fp32 weights (not quantized)" in panel.frame.value
    panel.overlay.value = None
    view = panel.wait(120)
    assert view.overlay is None and "quantization scheme" not in panel.frame.value
    assert {str(p): p.stat().st_mtime_ns for p in panel.explorer.store.folder.rglob("*")} == tree
