"""The Mapping panel, driven as a user drives it."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from workbench import Blueprint
from workbench_widgets import MappingPanel


@pytest.fixture
def panel(samples):
    bp = Blueprint.from_hf(samples["llama"])
    return MappingPanel.propose(bp, samples["llama"])


def test_clean_sample_shows_every_row_ok_and_can_load(panel):
    assert panel.counts == {"ok": 24} and panel.problems == []
    assert "ready to load" in panel.header.value
    assert panel.table_html.value.count("class='ewb-row'") == 24
    assert not panel.load_button.disabled
    panel.load_button.click()
    assert panel.loaded and panel.model is not None
    assert panel.progress.value == panel.progress.max == 24 and panel.progress.bar_style == "success"
    assert "Loaded 24 parameters" in panel.message.value


def test_pattern_edit_rechecks_marks_and_blocks_loading(panel):
    panel.patterns["ff_up_proj"].value = "model.layers.{}.mlp.fc1"  # typing + Enter
    assert panel.mapping.tensor_names["ff_up_proj"] == "model.layers.{}.mlp.fc1"
    assert panel.counts["missing"] == 3 and panel.counts["unused"] == 3
    assert panel.patterns["ff_up_proj"].layout.border.startswith("2px solid")
    assert "names no tensor" in panel.problems_html.value
    assert panel.load_button.disabled and "4 problem(s) and 3 unused" in panel.load_button.tooltip
    panel.filter.value = "problems"
    shown = panel.table_html.value
    assert shown.count("class='ewb-row'") == 6 and "data-status='missing'" in shown
    panel.patterns["ff_up_proj"].value = "model.layers.{}.mlp.up_proj"
    assert panel.problems == [] and panel.patterns["ff_up_proj"].layout.border == ""


def test_filter_and_sort(panel):
    panel.sort.value = "source"
    sources = [r.source for r in panel.visible_rows()]
    assert sources == sorted(sources)
    panel.filter.value = "tied"
    assert panel.visible_rows() == [] and "no rows match" in panel.table_html.value


def test_row_edit_fixes_a_renamed_tensor(samples, tmp_path):
    d = tmp_path / "llama"
    shutil.copytree(samples["llama"], d)
    state = load_file(d / "model.safetensors")
    state["model.layers.0.mlp.upproj.weight"] = state.pop("model.layers.0.mlp.up_proj.weight")
    save_file(state, str(d / "model.safetensors"))
    panel = MappingPanel.propose(Blueprint.from_hf(d), d)
    assert panel.counts.get("missing") == 1
    panel.load_button.click()  # disabled in the browser; the method still refuses clearly
    assert panel.model is None and "missing" in panel.message.value and panel.progress.bar_style == "danger"
    panel.row_target.value = "transformer_blocks.0.ff.w3.weight"
    panel.row_source.value = "model.layers.0.mlp.upproj.weight"
    panel.row_button.click()
    assert panel.problems == [] and panel.counts == {"ok": 24}
    assert panel.load() is not None
    panel.row_source.value = "no.such.tensor"
    panel.row_button.click()
    assert "has no tensor" in panel.message.value


def test_save_and_code(panel, tmp_path):
    panel.save_path.value = str(tmp_path / "m.json")
    panel.save_button.click()
    assert json.loads((tmp_path / "m.json").read_text())["kind"] == "edge-workbench/mapping"
    panel.save_path.value = str(tmp_path / "missing-dir" / "m.json")
    panel.save_button.click()
    assert "cannot write" in panel.message.value and "missing-dir" in panel.message.value
    panel.code_button.click()
    assert "TENSOR_NAMES = loading_utils.ModelLoader.TensorNames(" in panel.code_html.value
