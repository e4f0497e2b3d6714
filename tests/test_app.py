"""The app headless: a project as six linked tabs, the header's steps, stale banners with a
one-click re-run, errors as cards in their tab, one app per project folder."""

from __future__ import annotations

import shutil

import pytest

from conftest import copy_project

pytest.importorskip("ipywidgets")


@pytest.fixture()
def app_project(swept, tmp_path):
    return copy_project(swept[0], tmp_path, "app")


def _texts(widget) -> str:
    """Every HTML value under a widget (what a person reads there)."""
    import ipywidgets as W

    out = []
    stack = [widget]
    while stack:
        w = stack.pop()
        if isinstance(w, (W.HTML, W.Label)):
            out.append(w.value)
        stack.extend(getattr(w, "children", ()) or ())
    return "\n".join(out)


def test_app_shows_the_project_and_builds_every_tab(app_project):
    from workbench.project import Workbench
    from workbench_widgets import App
    from workbench_widgets.app import TABS

    with Workbench.open(app_project) as wb:
        app = App.for_project(wb)
        assert App.for_project(wb) is app  # one app per project folder in a kernel
        assert app.tabs.titles == TABS and "ewb-app" in app._dom_classes
        summary = app.steps_html.value
        for step in ("blueprint", "mapping", "comparisons", "conversions", "paths", "sweeps"):
            assert f">{step}: " in summary
        assert "mapping: fresh" in summary and "sweeps: fresh" in summary and "paths: missing" in summary
        assert "ewb-builder" in app.panel("Build")._dom_classes  # built when first shown
        for tab in TABS:
            app.select(tab)
            body = _texts(app.bodies[tab])
            assert "ewb-card" not in body and "Error" not in body, (tab, body[:500])
        # the recorded results are on screen again: the comparison, the sweep, the model to run
        assert app.panels["Compare"].comparison is not None
        assert app.panels["Run & Sweep"].table.value.count("class='ewb-row'") == 4
        assert app.run_panel is not None and "ewb-run" in app.run_panel._dom_classes
        assert "model: <b>fp32</b>" in _texts(app.bodies["Run & Sweep"]) or "sweep-" in _texts(app.bodies["Run & Sweep"])
        # picking in the sweep changes the model the Run panel runs
        app.panels["Run & Sweep"].pick("dynamic_int8")
        assert "sweep-sweep-dynamic_int8" in _texts(app.bodies["Run & Sweep"]) and "(chosen)" in _texts(
            app.bodies["Run & Sweep"])
        app.refresh()
        assert "model: <b>sweep-sweep-dynamic_int8</b> <span style='color:#777'>(chosen)" in app.steps_html.value


def test_a_saved_blueprint_marks_later_steps_stale_and_rerun_fixes_them(app_project):
    from workbench.convert_settings import ConvertSettings
    from workbench.project import Workbench
    from workbench_widgets import App

    with Workbench.open(app_project) as wb:
        app = App.for_project(wb)
        build = app.select("Build")
        old_compare = app.panel("Compare")
        build.fields["norm_eps"].value = 1e-5 if wb.blueprint.layer.norm_eps != 1e-5 else 2e-5
        build.save_button.click()
        summary = app.steps_html.value
        assert "mapping: stale" in summary and "comparisons: stale" in summary and "conversions: stale" in summary
        # the Map tab says so, with its one-click re-run
        assert "mapping is stale" in app.strips["Map"].value
        assert app.rerun_buttons["Map"].layout.display == "" and app.rerun_buttons["Map"].description == \
            "Save the mapping again"
        assert app.panel("Compare") is not old_compare  # rebuilt on the new blueprint
        app.rerun_buttons["Map"].click()
        assert "mapping: fresh" in app.steps_html.value and app.rerun_buttons["Map"].layout.display == "none"
        assert "comparisons is stale" in app.strips["Compare"].value
        app.rerun_buttons["Compare"].click()  # compares again, recorded in the project
        assert "comparisons: fresh" in app.steps_html.value
        assert app.rerun_buttons["Compare"].layout.display == "none"
        assert "sweeps is stale" in app.strips["Run & Sweep"].value
        # Convert again: the newest conversion's own settings (wb.rerun_settings), shown in the form
        newest = wb.newest("conversions")
        settings = wb.rerun_settings("conversions")["settings"]
        assert "conversions is stale" in app.strips["Convert"].value
        app.rerun_buttons["Convert"].click()
        conv = app.panel("Convert")
        assert conv.kv.value == settings.kv and conv.prefill.value == ",".join(map(str, settings.prefill))
        assert conv.wait(600) is not None and conv.state == "done", conv.card.value
        app.refresh()
        assert wb.status(detail=True)["conversions"][newest] == "fresh" and "conversions: fresh" in app.steps_html.value
        assert ConvertSettings.from_manifest(wb.conversions[newest]) == settings  # the same settings, made again


def test_errors_are_cards_in_their_tab_never_tracebacks(app_project, tmp_path):
    from workbench.project import Workbench
    from workbench_widgets import App

    import json

    shutil.rmtree(app_project / "checkpoint")  # the checkpoint is gone (and its fallback): later steps cannot open
    meta = json.loads((app_project / "workbench.json").read_text())
    meta["checkpoint"] = {"relative": "checkpoint", "absolute": str(tmp_path / "moved-away")}
    (app_project / "workbench.json").write_text(json.dumps(meta))
    with Workbench.open(app_project) as wb:
        app = App(wb)  # builds without raising
        app.select("Map")
        body = _texts(app.bodies["Map"])
        assert "ewb-card" in body and "checkpoint" in body and "Fix:" in body
        app.select("Build")
        assert "ewb-card" not in _texts(app.bodies["Build"])  # the blueprint still opens
        app.rerun("mapping")  # a re-run that cannot work says why, in its tab
        assert "ewb-card" in app.strips["Map"].value and "Fix:" in app.strips["Map"].value


def test_a_newer_workbench_of_the_same_folder_takes_over_the_app(app_project):
    from workbench.project import Workbench
    from workbench_widgets import App

    wb1 = Workbench.open(app_project)
    app = App.for_project(wb1)
    app.select("Convert")
    wb2 = Workbench.open(app_project)  # a re-run cell: the lock moves to the new object
    assert App.for_project(wb2) is app and app.wb is wb2
    assert app.panels["Convert"].project is wb2 and not wb2.readonly
    wb2.close()


def test_a_displayed_workbench_is_the_app(app_project):
    from IPython.core.interactiveshell import InteractiveShell

    from workbench.project import Workbench
    from workbench_widgets import App
    from workbench_widgets.app import register_display

    shell = InteractiveShell.instance()
    register_display()
    shown = []
    import IPython.display

    original = IPython.display.display
    IPython.display.display = lambda obj, **kw: shown.append(obj)
    try:
        with Workbench.open(app_project) as wb:
            shell.display_formatter.format(wb)
            assert shown and isinstance(shown[0], App) and shown[0].wb is wb
    finally:
        IPython.display.display = original
