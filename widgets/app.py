"""The workbench app: one project, six linked tabs, a header with every step's state and the
running job.

    import workbench_widgets            # from now on a displayed Workbench is the app
    wb = Workbench.open("my-project")
    wb                                  # or: app = App.for_project(wb); app

Each tab is the panel from its step (Build, Map, Compare, Convert, Run & Sweep, Explore),
built when first opened, on the project. After a save or a recorded result the app reads
the project's state again: the header's steps change colour, a tab whose result turned
stale says so with a one-click re-run, and the panels that were built on an older
blueprint or mapping are rebuilt when next shown. Conversions, sweeps and graph exports
run in the background, so the kernel stays free; the header mirrors the running one.
Errors land in the tab where they happened, as a card with the fix; never as a traceback.

The app is kept per project folder in this kernel: displaying the project again (a re-run
cell, a reopened notebook) shows the same app, with its running job, on the newest
`Workbench` object.
"""

from __future__ import annotations

import html
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import ipywidgets as W
import traitlets

from workbench import WorkbenchError
from workbench.project import FRESH, MISSING, STALE, Workbench

TABS = ("Build", "Map", "Compare", "Convert", "Run & Sweep", "Explore")
# which steps each tab produces (its stale banner and re-run)
TAB_STEPS = {"Build": ("blueprint",), "Map": ("mapping",), "Compare": ("comparisons",),
             "Convert": ("conversions", "paths"), "Run & Sweep": ("sweeps",), "Explore": ()}
COLORS = {FRESH: "#2e7d32", STALE: "#e65100", MISSING: "#9e9e9e"}
RERUN = {"mapping": "Save the mapping again", "comparisons": "Compare again", "conversions": "Convert again",
         "paths": "Compare both paths again", "sweeps": "Sweep again"}
# the tab and panel action that re-run a step (with `Workbench.rerun_settings(step)`)
RERUN_ACTION = {"comparisons": ("Compare", "run"), "conversions": ("Convert", "convert"),
                "paths": ("Convert", "compare_paths"), "sweeps": ("Run & Sweep", "run")}
MISSING_HINT = {"mapping": "review the mapping below, then press Save mapping",
                "comparisons": "press Compare below", "conversions": "choose a recipe below and press Convert",
                "sweeps": "tick recipes below and press Run sweep"}

_APPS: dict[str, "App"] = {}  # project folder -> its app in this kernel


def card(message: str, hint: str = "", error: bool = True, extra: str = "") -> str:
    """An error (or notice) card: what happened, and what to do about it."""
    color, bg = ("#c62828", "#ffebee") if error else ("#e65100", "#fff3e0")
    fix = f"<div><b>Fix:</b> {html.escape(hint)}</div>" if hint else ""
    return (f"<div class='ewb-card' style='border-left:4px solid {color};background:{bg};padding:6px 10px;"
            f"margin:4px 0;white-space:pre-wrap'><b style='color:{color}'>{html.escape(message)}</b>{fix}{extra}</div>")


class App(W.VBox):
    """A project as one app: header, six tabs, linked through the project's state."""

    job = traitlets.Unicode("", help="what runs now in the background ('' when nothing)")

    def __init__(self, wb: Workbench, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wb = wb
        self.panels: dict[str, Any] = {}
        self._built_on: dict[str, tuple] = {}  # tab -> (blueprint fp, mapping fp) when built
        self.title = W.HTML()
        self.steps_html = W.HTML()
        self.job_html = W.HTML()
        self.job_progress = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="220px", visibility="hidden"))
        self.refresh_button = W.Button(description="Refresh", icon="refresh", tooltip="read the project's state again",
                                       layout=W.Layout(width="100px"))
        self.refresh_button.on_click(lambda _: self.refresh())
        self.strips = {t: W.HTML() for t in TABS}
        self._stale_step: dict[str, str] = {}  # tab -> the stale step its Re-run button makes again
        self.rerun_buttons = {t: W.Button(description="Re-run", icon="repeat", button_style="warning",
                                          layout=W.Layout(display="none", width="auto")) for t in TABS}
        for t, b in self.rerun_buttons.items():
            b.on_click(lambda _, t=t: self.rerun_tab(t))
        self.bodies = {t: W.VBox() for t in TABS}
        self.tabs = W.Tab(children=[W.VBox([W.HBox([self.strips[t], self.rerun_buttons[t]]), self.bodies[t]])
                                    for t in TABS], titles=TABS)
        self.tabs.observe(lambda ch: self._on_select(), names="selected_index")
        self.children = [
            W.HBox([self.title, self.refresh_button], layout=W.Layout(justify_content="space-between")),
            self.steps_html,
            W.HBox([self.job_html, self.job_progress]),
            self.tabs,
        ]
        self.add_class("ewb-app")
        self.refresh()
        self._on_select()

    @classmethod
    def for_project(cls, wb: Workbench) -> "App":
        """The project's app in this kernel (made once per folder; a newer `Workbench` of the
        same folder takes over the panels, running jobs included)."""
        key = str(Path(wb.root).resolve())
        app = _APPS.get(key)
        if app is None:
            app = _APPS[key] = cls(wb)
        elif app.wb is not wb:
            app.attach(wb)
        return app

    def attach(self, wb: Workbench) -> None:
        """Moves the app onto a newer Workbench of the same folder (a re-run `open` cell)."""
        self.wb = wb
        for p in self._all_panels():
            if hasattr(p, "project") and p.project is not None:
                p.project = wb
        self.refresh()

    # ---- tabs ---------------------------------------------------------------------
    def select(self, tab: str):
        """Shows a tab (building its panel on first use) and returns its panel."""
        if tab not in TABS:
            raise WorkbenchError(f"no tab {tab!r}", hint=f"tabs: {', '.join(TABS)}")
        self.tabs.selected_index = TABS.index(tab)
        self._on_select()
        return self.panels.get(tab)

    def panel(self, tab: str):
        """A tab's panel, built if needed (without switching to it). For "Run & Sweep" it is
        the Sweep panel; the Run panel is `app.run_panel` (None until a model is converted)."""
        if tab not in self.panels:
            self._build(tab)
        return self.panels.get(tab)

    @property
    def run_panel(self):
        self.panel("Run & Sweep")
        return self.panels.get("Run")

    def _on_select(self) -> None:
        tab = TABS[self.tabs.selected_index or 0]
        if tab not in self.panels:
            self._build(tab)

    def _fingerprints(self, tab: str) -> tuple:
        """What a tab's panel was built from: Map on the blueprint, the later steps on the
        blueprint and the saved mapping too (Build edits the blueprint itself)."""
        if tab == "Build":
            return ()
        cur = self.wb.current_inputs()
        return (cur["blueprint"],) if tab == "Map" else (cur["blueprint"], cur["mapping"])

    def _build(self, tab: str) -> None:
        body = self.bodies[tab]
        body.children = [W.HTML(f"<i style='color:#777'>opening {html.escape(tab)}…</i>")]
        try:
            made = self._make(tab)
        except WorkbenchError as e:
            body.children = [W.HTML(card(e.message, e.hint))]
            return
        except Exception as e:  # noqa: BLE001 - a card in the tab, never a traceback in the notebook
            body.children = [W.HTML(self._bug(e))]
            return
        self._built_on[tab] = self._fingerprints(tab)
        body.children = made

    def _make(self, tab: str) -> list:
        from workbench_widgets import BuilderPanel, ComparePanel, ConvertPanel, MappingPanel, SweepPanel

        wb = self.wb
        if tab == "Build":
            p = self.panels[tab] = BuilderPanel.for_project(wb)
            p.save_button.on_click(lambda _: self.refresh())
            return [p]
        if tab == "Map":
            p = self.panels[tab] = MappingPanel.for_project(wb)
            p.save_button.on_click(lambda _: self.refresh())
            return [p]
        if tab == "Compare":
            p = self.panels[tab] = ComparePanel.for_project(wb)
            if wb.comparisons:  # the newest recorded comparison, as it was
                p.comparison = wb.comparison(wb.newest("comparisons"))
                p.render()
            p.button.on_click(lambda _: self.refresh())
            return [p]
        if tab == "Convert":
            p = self.panels[tab] = ConvertPanel.for_project(wb)
            self._mirror(p, "Convert")
            return [p]
        if tab == "Run & Sweep":
            s = self.panels[tab] = SweepPanel.for_project(wb)
            self._mirror(s, "Sweep")
            s.observe(lambda _: (self._rebuild_run(), self.refresh()), names="chosen")
            self.run_box = W.VBox()
            self._rebuild_run()
            return [self.run_box, W.HTML("<hr>"), s]
        if tab == "Explore":
            from workbench_widgets.explore import ExplorePanel

            p = self.panels[tab] = ExplorePanel.for_project(wb)
            self._mirror(p, "Explore", busy="exporting")
            return [p]
        raise AssertionError(tab)

    def _rebuild_run(self) -> None:
        """The Run panel on the project's model: the chosen one, else the newest fresh one."""
        from workbench.runner import Runner
        from workbench_widgets import RunPanel

        wb = self.wb
        try:
            name = wb.latest_conversion()
            runner = Runner(wb.conversion_path(name), tokenizer=wb.checkpoint_path(), threads=2)
        except WorkbenchError as e:
            self.panels.pop("Run", None)
            self.run_box.children = [W.HTML(card("Nothing to run yet: " + e.message, e.hint, error=False))]
            return
        except Exception as e:  # noqa: BLE001
            self.run_box.children = [W.HTML(self._bug(e))]
            return
        p = self.panels["Run"] = RunPanel(runner, hf_dir=wb.checkpoint_path())
        chosen = " (chosen)" if wb.chosen == name else " (newest)"
        self.run_box.children = [W.HTML(f"<div style='color:#555'>model: <b>{html.escape(name)}</b>{chosen}</div>"), p]

    def _mirror(self, panel, label: str, busy: str = "running") -> None:
        """The header shows this panel's job while it runs; the app refreshes when it ends."""
        def on_state(change) -> None:
            if change["new"] == busy:
                self.job = label
                self.job_progress.layout.visibility = "visible"
                self.job_progress.bar_style = "info"
            elif change["old"] == busy:
                self.job = ""
                self.job_progress.layout.visibility = "hidden"
                self.job_html.value = (f"<span style='color:#555'>{html.escape(label)}: {html.escape(change['new'])}"
                                       "</span>")
                self.refresh()
                if label in ("Convert", "Sweep") and "Run & Sweep" in self.panels:
                    self._rebuild_run()

        def on_progress(change) -> None:
            if self.job == label:
                bar = panel.progress
                self.job_progress.max, self.job_progress.value = max(bar.max, 1), bar.value
                stage = getattr(panel, "stage_html", None) or getattr(panel, "status", None)
                text = stage.value if stage is not None else ""
                self.job_html.value = f"<b>{html.escape(label)}</b> running: {text}"

        panel.observe(on_state, names="state")
        panel.progress.observe(on_progress, names=["value", "max"])

    def _all_panels(self) -> list:
        return list(self.panels.values())

    # ---- linking ------------------------------------------------------------------
    def refresh(self) -> dict:
        """Reads the project's state again: header, stale banners, panels to rebuild."""
        try:
            d = self.wb.status(detail=True)
        except Exception as e:  # noqa: BLE001
            self.steps_html.value = self._bug(e)
            return {}
        steps = d["steps"]
        wb = self.wb
        ro = f" <i style='color:#e65100'>({html.escape(wb.notice or 'read-only')})</i>" if wb.readonly else ""
        self.title.value = (f"<div class='ewb-app-title'><b style='font-size:15px'>Edge Workbench</b> — "
                            f"<b>{html.escape(wb.name)}</b> "
                            f"<span style='color:#777'>{html.escape(str(wb.root))}</span>{ro}</div>")
        chips = "".join(
            f"<span class='ewb-step ewb-{state}' title='{html.escape(str(d['why'].get(s, '')))}' style='display:"
            f"inline-block;margin:2px 4px 2px 0;padding:1px 8px;border-radius:10px;border:1px solid {COLORS[state]};"
            f"color:{COLORS[state]}'>{s}: {state}</span>" for s, state in steps.items())
        chosen = ""
        try:  # the model run and bundle take: the chosen one while fresh, else the newest fresh one
            model = wb.latest_conversion()
            why = "chosen" if model == d.get("chosen") else "newest"
            chosen = f" &nbsp;model: <b>{html.escape(model)}</b> <span style='color:#777'>({why})</span>"
            if d.get("chosen") and model != d["chosen"]:
                chosen += (f" <span style='color:#e65100'>— the chosen {html.escape(d['chosen'])} is "
                           f"{html.escape(d['conversions'].get(d['chosen'], 'gone'))}</span>")
        except WorkbenchError:
            pass
        problems = "".join(f"<div style='color:#c62828'>{html.escape(p)}</div>" for p in d["problems"])
        self.steps_html.value = f"<div class='ewb-app-steps'>{chips}{chosen}</div>{problems}"
        for tab, tab_steps in TAB_STEPS.items():
            self._strip(tab, tab_steps, d)
        # panels built on an older blueprint or mapping are rebuilt (unless their job runs)
        for tab in list(self.panels):
            if tab in TABS and self._built_on.get(tab) != self._fingerprints(tab) and not self._busy(tab):
                self.panels.pop(tab)
                if tab == "Run & Sweep":
                    self.panels.pop("Run", None)
                self.bodies[tab].children = []
                if TABS[self.tabs.selected_index or 0] == tab:
                    self._build(tab)
        return d

    def _busy(self, tab: str) -> bool:
        p = self.panels.get(tab)
        return p is not None and getattr(p, "state", "") in ("running", "exporting", "colouring")

    def _strip(self, tab: str, tab_steps: tuple, d: dict) -> None:
        stale = [s for s in tab_steps if d["steps"].get(s) == STALE]
        button = self.rerun_buttons[tab]
        if stale:
            s = stale[0]
            why = d["why"].get(s) or "it was computed from an older blueprint or mapping"
            self.strips[tab].value = card(f"{s} is stale: {why}", "re-run it with the button, or change the "
                                                                  "settings below first", error=False)
            button.description, button.layout.display = RERUN.get(s, "Re-run"), ""
            self._stale_step[tab] = s
            return
        self._stale_step.pop(tab, None)
        button.layout.display = "none"
        missing = [s for s in tab_steps if d["steps"].get(s) == MISSING and s in MISSING_HINT]
        self.strips[tab].value = (f"<div class='ewb-strip' style='color:#777'>No {missing[0]} yet: "
                                  f"{MISSING_HINT[missing[0]]}.</div>" if missing else "")

    def rerun_tab(self, tab: str) -> None:
        step = self._stale_step.get(tab)
        if step:
            self.rerun(step)

    def rerun(self, step: str) -> None:
        """One click for a stale step: the same settings as its newest result, on the
        project's current blueprint and mapping. Errors go to the step's tab."""
        tab = next(t for t, ss in TAB_STEPS.items() if step in ss)
        self._guard(tab, lambda: self._rerun(step))
        self.refresh()

    def _rerun(self, step: str) -> None:
        """The core says how (`Workbench.rerun_settings`); the tab's panel runs it, so its
        progress, Cancel and result show where they always do."""
        if step == "mapping":
            self.wb.rerun("mapping")
            return
        tab, action = RERUN_ACTION[step]
        getattr(self.select(tab), action)(**self.wb.rerun_settings(step))

    def _guard(self, tab: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except WorkbenchError as e:
            self.strips[tab].value = card(e.message, e.hint)
        except Exception as e:  # noqa: BLE001
            self.strips[tab].value = self._bug(e)
        return None

    @staticmethod
    def _bug(e: BaseException) -> str:
        tb = html.escape("".join(traceback.format_exception(e)))
        return card(f"{type(e).__name__}: {e}", "this is a bug in Edge Workbench: please report it with the "
                                                  "details below", extra=f"<details><summary>details</summary>"
                                                                         f"<pre>{tb}</pre></details>")

    def wait(self, timeout: Optional[float] = None) -> None:
        """Blocks until the background work of every built panel ends (scripts, tests,
        headless runs)."""
        for p in self._all_panels():
            if hasattr(p, "wait"):
                p.wait(timeout)


def _display_workbench(wb: Workbench) -> None:
    from IPython.display import display

    display(App.for_project(wb))


def register_display() -> None:
    """Makes a displayed `Workbench` the app in this IPython kernel (done on import of
    `workbench_widgets`; the core itself knows nothing of widgets)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return
    ip.display_formatter.ipython_display_formatter.for_type(Workbench, _display_workbench)


__all__ = ["App", "TABS", "card", "register_display"]
