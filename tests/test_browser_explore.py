"""Model Explorer in a real browser: the guarded server's URL in headless Chromium renders
the graphs, and notebook 06 in JupyterLab shows them in its frames (secret → cookie →
Model Explorer's own reload, on the notebook page's host name). Screenshots land in the
test's tmp folder."""

from __future__ import annotations

import time
import urllib.parse

import pytest

import browser  # tests/browser.py: the headless JupyterLab + Chromium driver
from workbench.explore import overlays as ovl
from workbench.explore.server import SECRET_PARAM

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(browser.chromium_path() is None, reason="Debian's chromium is not installed")]

RENDERED = "() => document.querySelectorAll('canvas').length >= {n} && !/\\bError\\b/.test(document.body.innerText)"


def _me_frame(frame_el, timeout_ms: int = 180_000):
    """Model Explorer's page inside one of our frames (it opens in a frame of the frame's
    own document once the frame is on screen)."""
    frame_el.scroll_into_view_if_needed()
    outer = frame_el.element_handle().content_frame()
    outer.wait_for_selector("#w iframe", state="attached", timeout=timeout_ms)
    return outer.locator("#w iframe").element_handle().content_frame()


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
        assert f"{graphs['original'].nodes} nodes" in text  # the graph picker (the side panel opens on a node)
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


# Model Explorer's setting, as a user would switch it in its settings: the side panel always shown
SIDE_PANEL_ON = ("localStorage.setItem('model_explorer_settings', "
                 "JSON.stringify({show_side_panel_on_node_selection: false}))")


def _colour_pixels(png, color: str, box=None, tol: int = 12) -> int:
    """Pixels of `png` within `tol` of a #rrggbb colour (inside `box`: x0, y0, x1, y1)."""
    import numpy as np
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    if box:
        img = img[box[1]:box[3], box[0]:box[2]]
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(img - rgb).max(axis=2) <= tol).sum())


def _select_in_left_pane(page, graph, node_id: str) -> None:
    """Selects an op of the left pane the way a user does: locate it from the node-data
    table (Model Explorer zooms to it, without syncing), then click it on the canvas."""
    import json

    index = [n["id"] for n in json.loads(graph.nodes_file.read_text())["nodes"]].index(node_id)
    page.locator("input[placeholder='regex to filter nodes']").nth(1).fill("linear")
    time.sleep(1.0)
    row = page.locator("tr", has_text=f"{index}\taten.linear").first
    row.locator("td").nth(1).click()
    time.sleep(2.5)  # the zoom animation
    box = page.locator("canvas").first.bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    time.sleep(3.0)


def _select_until(page, graph, node_id: str, expected: str, timeout: float = 60.0) -> str:
    """Selects `node_id` in the left pane until the page shows `expected` (the twin selected
    on the right): on a busy machine the zoom animation outlasts any fixed wait, and a click
    on the canvas before it ends selects nothing. Returns the page's text."""
    deadline = time.time() + timeout
    _select_in_left_pane(page, graph, node_id)
    while True:
        text = page.locator("body").inner_text()
        if expected in text or time.time() > deadline:
            return text
        time.sleep(2.0)  # the zoom may still have been moving: click the node again, where it rests
        box = page.locator("canvas").first.bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        time.sleep(2.0)


def test_overlay_colours_the_planted_fault_and_sync_follows_in_chromium(explored, faulty, tmp_path):
    """#14 in the real page: the per-layer error of a comparison with a planted fault (layer
    1's o_proj transposed) colours layer 1 red on both graphs; selecting an op that reads a
    weight on the left selects its twin on the right with no file loaded ("match node id"
    from the URL); after "Upload mapping", k_proj selects the fused q|k|v projection."""
    _, ex, graphs = explored
    ex._ensure_server()
    view = ex.show(["original", "reauthored"], overlay="compare", comparison=faulty)
    assert "first divergence: layer 1 (attention)" in view.legend_html()
    with browser.browser_page(1800, 1000) as page:
        page.goto(view.urls[0])
        page.wait_for_selector("text=reauthored.pt2 | graph (2)", timeout=120_000)
        page.wait_for_function(RENDERED.format(n=2), timeout=60_000)
        page.wait_for_function("() => document.body.textContent.split('per layer (comparison given)').length > 2",
                               timeout=60_000)  # the node data reached both panes
        time.sleep(3.0)  # the red layer opens in each pane (uiState); the layout settles
        shot = tmp_path / "explore-overlay.png"
        page.screenshot(path=str(shot))
        width = page.viewport_size["width"]
        # red (the first divergent layer) and orange (after it) in each pane's graph area
        for x0, x1 in ((0, width // 2), (width // 2, width)):
            assert _colour_pixels(shot, ovl.RED, (x0, 80, x1, 1000)) > 150, (x0, x1)
            assert _colour_pixels(shot, ovl.ORANGE, (x0, 80, x1, 1000)) > 50, (x0, x1)
        assert page.get_by_text("Sync", exact=True).count() >= 1  # the sync mode from the URL is on
        # our page default: Model Explorer's side panel opens only on a selected node
        assert not page.get_by_text("GRAPH INFO").first.is_visible()
    with browser.browser_page(1800, 1000) as page:
        page.add_init_script(SIDE_PANEL_ON)  # the node-data table in the side panel locates nodes
        page.goto(view.urls[0])
        page.wait_for_selector("text=reauthored.pt2 | graph (2)", timeout=120_000)
        page.wait_for_function(RENDERED.format(n=2), timeout=60_000)
        time.sleep(2.0)
        # match node id: the o_proj op of layer 1 on the left selects output_projection on the right
        twin = ("litert_torch.generative.layers.attention.TransformerBlock_1/litert_torch.generative.layers."
                "attention.CausalSelfAttention_atten_func/torch.nn.modules.linear.Linear_output_projection")
        text = _select_until(page, graphs["original"], "model_layers_1_self_attn_o_proj", twin)
        assert twin in text
        page.screenshot(path=str(tmp_path / "explore-sync.png"))
    with browser.browser_page(1800, 1000) as page:
        # the uploaded mapping: k_proj (no twin by id) selects the fused q|k|v projection
        page.add_init_script(SIDE_PANEL_ON)
        page.goto(view.urls[0])
        page.wait_for_selector("text=reauthored.pt2 | graph (2)", timeout=120_000)
        page.wait_for_function(RENDERED.format(n=2), timeout=60_000)
        time.sleep(2.0)
        page.get_by_text("Sync", exact=True).first.click()
        time.sleep(0.5)
        with page.expect_file_chooser() as chooser:
            page.get_by_role("button", name="Upload").click()
        chooser.value.set_files(str(view.sync["file"]))
        page.wait_for_selector(f"text={view.sync['file'].name}", timeout=10_000)
        page.keyboard.press("Escape")
        time.sleep(0.5)
        fused = ("TransformerBlock_1/litert_torch.generative.layers.attention.CausalSelfAttention_atten_func/"
                 "torch.nn.modules.linear.Linear_qkv_projection")
        text = _select_until(page, graphs["original"], "model_layers_1_self_attn_k_proj", fused)
        assert fused in text
        page.screenshot(path=str(tmp_path / "explore-sync-upload.png"))
    assert shot.stat().st_size > 20_000


def test_notebook_frames_render_in_jupyterlab_on_localhost(tmp_path):
    """06_explore in a real JupyterLab opened at localhost: the frames' addresses are built
    on the page's host name, so the cookie the guard sets is for localhost too."""
    with browser.JupyterLab() as lab, browser.browser_page(1400, 1100) as page:
        nb_url = lab.notebook_url(browser.ROOT / "notebooks" / "06_explore.ipynb").replace("127.0.0.1", "localhost")
        browser.run_all_cells(page, nb_url, ".ewb-explore-frame", timeout_ms=600_000)
        frame_el = page.locator("iframe.ewb-explore-frame").first
        frame = _me_frame(frame_el)
        frame.wait_for_selector("text=reauthored.pt2 | graph (2)", timeout=180_000)
        frame.wait_for_function(RENDERED.format(n=2), timeout=60_000)
        me = next(f for f in page.frames if f.url.startswith("http://localhost:") and "/?data=" in f.url)
        assert urllib.parse.urlparse(me.url).hostname == "localhost" and SECRET_PARAM not in me.url
        assert "original.pt2 | graph" in _pane_titles(frame)
        # the third frame: the converted model on its own
        third = page.locator("iframe.ewb-explore-frame").nth(1)
        _me_frame(third).wait_for_selector("text=prefill_8", timeout=120_000)
        frame_el.scroll_into_view_if_needed()
        time.sleep(1.0)
        page.screenshot(path=str(tmp_path / "explore-jupyterlab.png"))
        assert page.locator(".ewb-explore").count() >= 1  # the panel rendered too
        # the planted fault's overlay: its legend beside the frame, the node data in both panes
        legend = page.locator(".ewb-explore-legend", has_text="first divergence: layer 1 (attention)").first
        legend.scroll_into_view_if_needed()
        assert "Upload" in legend.inner_text() and "match node id" in legend.inner_text()
        view = page.locator(".ewb-explore-view", has=legend).first
        frame = _me_frame(view.locator("iframe.ewb-explore-frame").first)
        frame.wait_for_function("() => document.body.textContent.split('per layer (comparison given)').length > 2",
                                timeout=120_000)
        frame.wait_for_function(RENDERED.format(n=2), timeout=60_000)
        time.sleep(3.0)
        view.scroll_into_view_if_needed()
        page.screenshot(path=str(tmp_path / "explore-jupyterlab-overlay.png"))
        fb = view.locator("iframe.ewb-explore-frame").first.bounding_box()
        frame_box = (int(fb["x"]), int(fb["y"]), int(fb["x"] + fb["width"]), int(fb["y"] + fb["height"]))
        # the panel's overlay menu, set to the comparison by the notebook
        assert page.locator(".ewb-explore .ewb-explore-legend-overlay").count() >= 1
    assert (tmp_path / "explore-jupyterlab.png").stat().st_size > 20_000
    assert _colour_pixels(tmp_path / "explore-jupyterlab-overlay.png", ovl.RED, frame_box) > 150  # in the graphs
