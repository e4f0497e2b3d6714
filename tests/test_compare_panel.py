"""The Compare panel, driven as a user drives it."""

from __future__ import annotations

import pytest

from workbench import Blueprint
from workbench.mapping import Mapping
from workbench_widgets import ComparePanel


def test_compare_click_shows_verdict_plots_table_and_texts(samples):
    panel = ComparePanel(samples["qwen2"], Blueprint.from_hf(samples["qwen2"]))
    panel.prompt.value = "The robot walked home."
    panel.button.click()
    c = panel.comparison
    assert c is not None and panel.passed
    assert "all 3 layers within" in panel.verdict_html.value and "✔" in panel.verdict_html.value
    assert panel.progress.bar_style == "success"
    assert len(panel.per_layer.data) >= 5 and panel.per_layer.layout.yaxis.type == "log"
    assert len(panel.heatmap.data[0].z) == 3
    assert panel.table_html.value.count("<tr") == len(c.records) + 1
    assert "greedy, original" in panel.text_html.value and "first differing" not in panel.text_html.value


def test_a_planted_fault_is_pointed_at_and_tolerance_rejudges(samples):
    d = samples["llama"]
    m = Mapping.propose(Blueprint.from_hf(d).set("rope_base", 500.0), d)
    panel = ComparePanel(d, m.load(kv_cache_length=64), m)
    panel.run()
    assert not panel.passed
    assert "transformer_blocks.0.attention" in panel.verdict_html.value and "RoPE" in panel.verdict_html.value
    assert "background:#ffcdd2" in panel.table_html.value
    assert any(t.name == "first divergence" for t in panel.per_layer.data)
    runs = id(panel.comparison)
    panel.tol.value = 1.0  # everything within a tolerance of 1: judged again, not re-run
    assert id(panel.comparison) == runs
    assert panel.comparison.tol == 1.0


def test_errors_show_in_the_panel(samples):
    panel = ComparePanel(samples["llama"], Blueprint.from_hf(samples["llama"]))
    panel.prompt.value = "   "
    assert panel.run() is None
    assert "a prompt is empty" in panel.verdict_html.value and panel.progress.bar_style == "danger"
    assert not panel.button.disabled
