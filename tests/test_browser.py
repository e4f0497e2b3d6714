"""Panels as a person sees them: the notebooks run in a real JupyterLab, in headless
Chromium, and their widgets render. Screenshots land in the test's tmp folder."""

from __future__ import annotations

import pytest

import browser  # tests/browser.py: the headless JupyterLab + Chromium driver

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(browser.chromium_path() is None, reason="Debian's chromium is not installed")]


@pytest.fixture(scope="module")
def lab():
    with browser.JupyterLab() as server:
        yield server


def test_builder_panel_renders_in_jupyterlab(lab, tmp_path):
    with browser.browser_page() as page:
        browser.run_all_cells(page, lab.notebook_url(browser.ROOT / "notebooks" / "01_build.ipynb"), ".ewb-builder")
        panel = page.locator(".ewb-builder").first
        panel.scroll_into_view_if_needed()
        text = panel.inner_text()
        assert "Builder" in text and "parameters" in text and "No problems" in text
        assert "num_kv_heads" in text and "Per-layer overrides" in text
        assert page.locator(".ewb-builder .js-plotly-plot").count() >= 1  # the chart drew
        assert page.locator(".ewb-builder .ewb-overridden").count() == 1  # layer 2's window
        # a click in the browser reaches the kernel and comes back
        page.locator(".ewb-builder button", has_text="Build").first.click()
        page.wait_for_selector(".ewb-builder :text('matches the summary')", timeout=60_000)
        page.screenshot(path=str(tmp_path / "builder.png"))
    assert (tmp_path / "builder.png").stat().st_size > 10_000


def test_mapping_panel_renders_in_jupyterlab(lab, tmp_path):
    with browser.browser_page() as page:
        browser.run_all_cells(page, lab.notebook_url(browser.ROOT / "notebooks" / "02_map_weights.ipynb"),
                              ".ewb-mapping")
        panel = page.locator(".ewb-mapping").first
        text = panel.inner_text()
        assert "Weight mapping" in text and "ready to load" in text
        assert page.locator(".ewb-mapping tr.ewb-row").count() == 24
        assert "Loaded 24 parameters" in text  # the notebook's panel.load() reached the page
        page.screenshot(path=str(tmp_path / "mapping.png"))


def test_compare_panel_renders_in_jupyterlab(lab, tmp_path):
    with browser.browser_page() as page:
        browser.run_all_cells(page, lab.notebook_url(browser.ROOT / "notebooks" / "03_compare.ipynb"),
                              ".ewb-compare .js-plotly-plot")
        panels = page.locator(".ewb-compare")
        assert panels.count() == 2
        assert "all 3 layers within" in panels.nth(0).inner_text()
        faulty = panels.nth(1).inner_text()
        assert "first divergence at embedding" in faulty
        assert page.locator(".ewb-compare .js-plotly-plot").count() >= 4
        page.screenshot(path=str(tmp_path / "compare.png"))


def test_convert_panel_renders_in_jupyterlab(lab, tmp_path):
    with browser.browser_page() as page:
        # the last heavy cell (both paths side by side) fills the paths table
        browser.run_all_cells(page, lab.notebook_url(browser.ROOT / "notebooks" / "04_convert.ipynb"),
                              ".ewb-convert .ewb-paths", timeout_ms=600_000)
        panel = page.locator(".ewb-convert").last  # the same panel, shown again near the end
        panel.scroll_into_view_if_needed()
        page.wait_for_function("() => [...document.querySelectorAll('.ewb-convert')].some("
                               "p => p.innerText.includes('Convert and quantize'))", timeout=60_000)
        text = panel.inner_text()
        assert "Convert and quantize" in text and "estimated size" in text
        assert "top-1 agreement" in text and "Where quantization hurts" in text
        assert "direct export (export_hf)" in text
        assert page.locator(".ewb-convert .js-plotly-plot").count() >= 1
        page.screenshot(path=str(tmp_path / "convert.png"))


def test_run_and_sweep_panels_render_in_jupyterlab(lab, tmp_path):
    with browser.browser_page() as page:
        browser.run_all_cells(page, lab.notebook_url(browser.ROOT / "notebooks" / "05_run.ipynb"),
                              ".ewb-sweep-panel tr.ewb-row", timeout_ms=600_000)
        page.wait_for_selector(".ewb-run .ewb-side-by-side", state="attached", timeout=60_000)
        run = page.locator(".ewb-run", has=page.locator(".ewb-side-by-side")).first  # generated, then compared
        run.scroll_into_view_if_needed()
        # a cell scrolled to is laid out a moment later: wait until its text shows, then read it
        page.wait_for_function("el => el.innerText.includes('same tokens')", arg=run.element_handle(),
                               timeout=60_000)
        text = run.inner_text()
        assert "tok/s" in text and "same tokens" in text and "transformers" in text
        assert run.locator("button", has_text="Side by side").is_enabled()  # the generation has ended
        run.screenshot(path=str(tmp_path / "run.png"))
        sweep = page.locator(".ewb-sweep-panel").first
        sweep.scroll_into_view_if_needed()
        text = sweep.inner_text()
        assert "Recipe sweep" in text and "int8_ff_int4" in text and "★" in text and "✓" in text
        assert page.locator(".ewb-sweep-panel tr.ewb-row").count() == 4
        assert page.locator(".ewb-sweep-panel .js-plotly-plot .scatterlayer .point").count() >= 4  # drawn points
        # a click in the browser reaches the kernel: Pick the dropdown's model
        page.locator(".ewb-sweep-panel .ewb-sweep-choice select").select_option("fp16")
        page.locator(".ewb-sweep-panel button", has_text="Pick").first.click()
        page.wait_for_selector(".ewb-sweep-panel :text('chose fp16')", timeout=60_000)
        page.locator(".ewb-sweep-panel .js-plotly-plot").first.scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "sweep.png"))
    assert (tmp_path / "sweep.png").stat().st_size > 10_000 and (tmp_path / "run.png").stat().st_size > 10_000


def test_the_app_in_the_tour_notebook(lab, tmp_path):
    """The tour runs in JupyterLab: the app's tab bar, a filled summary, plotly figures and
    the Model Explorer frame render; a click on a tab and a button reaches the kernel."""
    with browser.browser_page(height=1100) as page:
        browser.run_all_cells(page, lab.notebook_url(browser.ROOT / "notebooks" / "00_tour.ipynb"),
                              ".ewb-app .ewb-explore iframe", timeout_ms=600_000)
        app = page.locator(".ewb-app").first
        tabs = app.locator(".lm-TabBar-tab")
        assert [t.strip() for t in tabs.all_inner_texts()] == ["Build", "Map", "Compare", "Convert", "Run & Sweep",
                                                              "Explore"]
        steps = app.locator(".ewb-app-steps").inner_text()
        assert "blueprint: fresh" in steps and "comparisons: fresh" in steps and "conversions: fresh" in steps
        assert "sweeps: stale" in steps  # the tour leaves the sweep for the reader to re-run
        # the tour ends on the Explore tab: Model Explorer's frame, the three graphs
        frame = app.locator(".ewb-explore iframe").first
        frame.wait_for(state="visible", timeout=120_000)
        assert "original (transformers)" in app.inner_text() and "converted (.tflite)" in app.inner_text()
        app.locator(".lm-TabBar").scroll_into_view_if_needed()
        page.wait_for_timeout(8000)  # Model Explorer draws the graphs
        page.screenshot(path=str(tmp_path / "app-explore.png"))
        # plotly in a tab shown by a click
        tabs.nth(2).click()
        page.wait_for_selector(".ewb-app .ewb-compare .js-plotly-plot", timeout=60_000)
        # a click on the stale step's one-click re-run: the sweep runs again and the header turns fresh
        tabs.nth(4).click()
        app.locator("button", has_text="Sweep again").click()
        page.wait_for_selector(".ewb-app .ewb-sweep-panel :text('2 of 2 recipes converted')", timeout=300_000)
        steps = app.locator(".ewb-app-steps").inner_text()
        assert "sweeps: fresh" in steps and "conversions: fresh" in steps
        assert page.locator(".ewb-app .ewb-sweep-panel .js-plotly-plot .scatterlayer .point").count() == 2
        app.locator(".ewb-sweep-panel .js-plotly-plot").first.scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "app-sweep.png"))
        tabs.nth(2).click()
        app.locator(".lm-TabBar").scroll_into_view_if_needed()
        page.wait_for_timeout(1000)
        page.screenshot(path=str(tmp_path / "app-compare.png"))
    assert (tmp_path / "app-explore.png").stat().st_size > 10_000


def test_a_stuck_run_names_the_kernels_state(lab):
    """A notebook that never finishes says what the server's kernels are doing, and the kernel
    is one that reads every request (ipykernel 7.0-7.3 could leave one unread: cells stuck at [*])."""
    import ipykernel

    text = browser.kernel_states(lab.notebook_url(browser.ROOT / "notebooks" / "01_build.ipynb"))
    assert text.startswith("kernels: ") and f"ipykernel {ipykernel.__version__}" in text
    assert ipykernel.version_info >= (7, 4) or ipykernel.version_info < (7,), ipykernel.__version__
    bad = browser.kernel_states(lab.notebook_url(browser.ROOT / "notebooks" / "01_build.ipynb").replace(
        f":{lab.port}", f":{browser.free_port()}"))
    assert bad.startswith("the server's kernels could not be read")
