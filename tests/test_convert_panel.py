"""The Convert panel, driven as a user drives it (conversions are real, and small)."""

from __future__ import annotations

import pytest

from workbench import Blueprint
from workbench.mapping import Mapping
from workbench_widgets import ConvertPanel
from workbench_widgets.convert import PER_LAYER


@pytest.fixture
def panel(samples, tmp_path):
    m = Mapping.propose(Blueprint.from_hf(samples["llama"]), samples["llama"])
    p = ConvertPanel(m, out=tmp_path)
    p.kv.value = 64
    return p


def test_estimate_follows_the_recipe_and_the_grid(panel):
    int8 = panel.estimate_bytes
    panel.recipe.value = "none"
    assert panel.estimate_bytes > 2 * int8
    panel.set_layer(1, "feedforward", "fp16")
    assert panel.recipe.value == PER_LAYER and panel.per_layer_box.layout.display == ""
    assert panel.recipe_spec() == {"default": "dynamic_int8", "feedforward": {"1": "fp16"}}
    assert int8 < panel.estimate_bytes and "L1=fp16" in panel.estimate_html.value


def test_convert_click_runs_a_job_and_shows_the_result_card(panel, tmp_path):
    panel.recipe.value = "none"
    panel.convert_button.click()
    assert panel.state == "running" and panel.cancel_button.disabled is False
    res = panel.wait(600)
    assert panel.state == "done", panel.card.value
    assert res.path.is_file() and res.check["max_abs_diff"] <= 1e-4
    card = panel.card.value
    assert res.path.name in card and "prefill_8, decode" in card and "top-1 agreement <b>100%</b>" in card
    assert panel.progress.bar_style == "success" and not panel.convert_button.disabled


def test_refusals_and_failures_keep_the_form(panel):
    panel.prefill.value = "8,128"
    panel.convert_button.click()
    assert panel.state == "failed" and "longer than the KV cache" in panel.card.value
    assert panel.prefill.value == "8,128" and panel.kv.value == 64  # nothing lost
    panel.prefill.value = "eight"
    panel.convert_button.click()
    assert "not a list of lengths" in panel.card.value


def test_cancel_click(panel, tmp_path):
    panel.convert_button.click()
    panel.cancel_button.click()
    panel.wait(60)
    assert panel.state == "cancelled" and "cancelled during" in panel.card.value
    assert not list(tmp_path.glob("*.tflite"))


def test_quantized_result_shows_the_error_view_and_its_proposal(panel):
    panel.recipe.value = "dynamic_int8"
    panel.convert()
    res = panel.wait(600)
    assert panel.state == "done" and res.quant_error is not None
    assert "Where quantization hurts" in panel.error_table.value
    assert len(panel.error_figure.data) == 2 and not panel.use_proposal_button.disabled
    panel.use_proposal_button.click()
    assert panel.recipe.value == PER_LAYER
    assert panel.recipe_spec() == res.quant_error["proposal"]


def test_compare_paths_click_shows_both_paths_side_by_side_and_the_project_keeps_it(samples, tmp_path):
    """Re-authored and litert-torch's direct export, converted with the form's settings,
    checked and timed: the table and the chart show both, and the project records it."""
    from workbench.project import Workbench
    from workbench_widgets import ConvertPanel

    wb = Workbench.new(tmp_path / "p", from_hf=samples["gemma"])
    wb.save_mapping()
    panel = ConvertPanel.for_project(wb)
    panel.recipe.value, panel.kv.value = "dynamic_int8", 32
    panel.compare_paths()
    table = panel.wait(600)
    assert panel.state == "done", panel.card.value
    assert [r["path"] for r in table.rows] == ["reauthored", "export_hf"]
    for r in table.rows:
        assert r["size_bytes"] > 0 and r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0
        assert r["top1_agreement"] >= 0.5 and r["peak_rss_bytes"] > 100_000_000
        assert set(r["signatures"]) == {"prefill_8", "decode"}
    assert "direct export (export_hf)" in panel.paths_html.value and "decode" in panel.paths_html.value
    assert len(panel.paths_figure.data) == 12  # 6 measures x 2 paths
    conv = wb.root / "conversions"
    assert sorted(p.name for p in conv.glob("*.tflite")) == [
        "gemma_dynamic_int8_kv32.tflite", "gemma_dynamic_int8_kv32_export_hf.tflite"]
    s = wb.status(detail=True)
    assert s["steps"]["paths"] == "fresh" and s["conversions"] == {
        "gemma_dynamic_int8_kv32": "fresh", "gemma_dynamic_int8_kv32_export_hf": "fresh"}
    wb.close()
    with Workbench.open(wb.root, readonly=True) as again:
        assert again.paths_table("dynamic_int8-kv32").rows == table.rows
