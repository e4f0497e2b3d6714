"""The Explore panel, headless: tick graphs, pick a layout and height, click Refresh, and
read the core objects and the HTML the panel shows."""

from __future__ import annotations

from conftest import copy_project
from explore_fixtures import explored  # noqa: F401 - the shared fixture
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
