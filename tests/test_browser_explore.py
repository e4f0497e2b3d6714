"""Model Explorer in a real browser: the guarded server's URL in headless Chromium renders
the graphs, and notebook 06 in JupyterLab shows them in its frames (secret → cookie →
Model Explorer's own reload, on the notebook page's host name). Screenshots land in the
test's tmp folder."""

from __future__ import annotations

import time
import urllib.parse

import pytest

from explore_fixtures import explored  # noqa: F401 - the shared fixture
from workbench import browser
from workbench.explore_server import SECRET_PARAM

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(browser.chromium_path() is None, reason="Debian's chromium is not installed")]

RENDERED = "() => document.querySelectorAll('canvas').length >= {n} && !/\\bError\\b/.test(document.body.innerText)"


def _pane_titles(page_or_frame) -> list[str]:
    text = page_or_frame.locator("body").inner_text()
    return sorted({line.strip() for line in text.splitlines() if " | graph" in line or " | prefill" in line})


def test_url_renders_the_graphs_in_chromium(explored, tmp_path):
    _, ex, graphs = explored
    ex._ensure_server()
    url = ex.url(["original", "reauthored", "tflite"])
    with browser.browser_page(1400, 900) as page:
        page.goto(url)
        page.wait_for_selector("text=reauthored.pt2 | graph (2)", timeout=120_000)
        page.wait_for_function(RENDERED.format(n=2), timeout=60_000)
        time.sleep(1.0)  # the layout animation settles
        assert SECRET_PARAM not in page.url  # the guard redirected it away; the cookie carries it
        assert "original.pt2 | graph" in _pane_titles(page)
        assert "reauthored.pt2 | graph (2)" in _pane_titles(page)
        text = page.locator("body").inner_text()
        assert "op node count" in text and str(graphs["original"].nodes) in text
        time.sleep(2.0)  # each pane opens at its decoder layers (uiState); let the layout settle
        page.screenshot(path=str(tmp_path / "explore.png"))
        # every model of the page is loaded, the converted one too (in the graph picker)
        page.locator(f"text={graphs['original'].nodes} nodes").first.click()
        page.wait_for_function("() => document.body.innerText.includes('prefill_8')", timeout=30_000)
        picker = page.locator("body").inner_text()
        assert graphs["tflite"].label in picker and "prefill_8" in picker and "decode" in picker
        # a request from the page without the cookie (a new context) gets nothing
        bare = url.split(f"&{SECRET_PARAM}=")[0]
    with browser.browser_page(900, 600) as page:
        resp = page.goto(bare)
        assert resp.status == 403 and "secret" in page.locator("body").inner_text()
    assert (tmp_path / "explore.png").stat().st_size > 20_000


def test_notebook_frames_render_in_jupyterlab_on_localhost(tmp_path):
    """06_explore in a real JupyterLab opened at localhost: the frames' addresses are built
    on the page's host name, so the cookie the guard sets is for localhost too."""
    with browser.JupyterLab() as lab, browser.browser_page(1400, 1100) as page:
        nb_url = lab.notebook_url(browser.ROOT / "notebooks" / "06_explore.ipynb").replace("127.0.0.1", "localhost")
        browser.run_all_cells(page, nb_url, ".ewb-explore-frame", timeout_ms=600_000)
        frame_el = page.locator("iframe.ewb-explore-frame").first
        frame_el.scroll_into_view_if_needed()
        frame = frame_el.element_handle().content_frame()
        frame.wait_for_selector("text=reauthored.pt2 | graph (2)", timeout=180_000)
        frame.wait_for_function(RENDERED.format(n=2), timeout=60_000)
        me = next(f for f in page.frames if f.url.startswith("http://localhost:") and "/?data=" in f.url)
        assert urllib.parse.urlparse(me.url).hostname == "localhost" and SECRET_PARAM not in me.url
        assert "original.pt2 | graph" in _pane_titles(frame)
        # the third frame: the converted model on its own
        third = page.locator("iframe.ewb-explore-frame").nth(1)
        third.scroll_into_view_if_needed()
        third.element_handle().content_frame().wait_for_selector("text=prefill_8", timeout=120_000)
        frame_el.scroll_into_view_if_needed()
        time.sleep(1.0)
        page.screenshot(path=str(tmp_path / "explore-jupyterlab.png"))
        assert page.locator(".ewb-explore").count() >= 1  # the panel rendered too
    assert (tmp_path / "explore-jupyterlab.png").stat().st_size > 20_000
