"""The Builder panel, driven as a user drives it: values set, buttons clicked."""

from __future__ import annotations

import importlib.util
import json

import pytest

from workbench import Blueprint
from workbench_widgets import BuilderPanel
from workbench_widgets.builder import GROUPS, PROBLEM_BORDER


@pytest.fixture
def panel(samples):
    return BuilderPanel.from_hf(samples["llama"])


def test_form_shows_every_group_and_the_blueprint_values(panel):
    bp = panel.blueprint
    assert panel.fields["num_heads"].value == bp.layer.num_heads
    assert panel.fields["norm_eps"].value == pytest.approx(bp.layer.norm_eps)
    assert panel.fields["sliding_window"].value == ""  # None shows as empty text
    assert panel.fields["vocab_size"].value == bp.vocab_size
    accordion = panel.children[1].children[0]
    assert tuple(accordion.titles) == tuple(GROUPS)
    assert {"Attention", "Feed-forward", "Norms", "Positions", "KV cache", "Head", "Embedding"} <= set(GROUPS)


def test_summary_chart_and_problems_follow_every_edit(panel):
    bp = panel.blueprint
    assert panel.params == bp.summary().params and f"{panel.params:,}" in panel.summary_html.value
    assert list(panel.figure.data[0].y) == list(bp.summary().params_by_block.values())
    ff_before = panel.figure.data[0].y[2]

    panel.fields["intermediate_size"].value = 320  # typing in the field
    assert bp.layer.intermediate_size == 320
    assert panel.figure.data[0].y[2] > ff_before
    assert panel.params == bp.summary().params

    panel.fields["kv_cache_length"].value = 128
    assert "128 tokens" in panel.summary_html.value


def test_a_problem_marks_its_field_and_disables_build(panel):
    panel.fields["num_kv_heads"].value = 3
    assert panel.blueprint.layer.num_kv_heads == 3
    assert not panel.can_build and panel.build_button.disabled
    assert "not a multiple of num_kv_heads" in panel.problems_html.value
    assert panel.fields["num_kv_heads"].layout.border == PROBLEM_BORDER
    assert "ewb-problem" in panel.fields["num_kv_heads"]._dom_classes
    assert panel.fields["num_heads"].layout.border == ""
    assert "num_kv_heads" in panel.build_button.tooltip
    assert panel.build() is None and "Fix 1 problem" in panel.message.value

    panel.fields["num_kv_heads"].value = 1
    assert panel.can_build and not panel.build_button.disabled
    assert panel.fields["num_kv_heads"].layout.border == ""
    assert "No problems" in panel.problems_html.value


@pytest.mark.parametrize("field,text", [("sliding_window", "abc"), ("attn_scale", "1/8"),
                                        ("rope_scaling", "{not json")])
def test_unparseable_text_is_a_problem_not_an_exception(panel, field, text):
    before = panel.blueprint.to_json()
    panel.fields[field].value = text
    assert any(field in p for p in panel.problems) and not panel.can_build
    assert panel.fields[field].layout.border == PROBLEM_BORDER
    assert panel.blueprint.to_json() == before  # nothing half-applied
    panel.fields[field].value = ""
    assert panel.can_build


def test_zero_layers_and_negative_eps_show_as_problems(panel):
    panel.fields["num_layers"].value = 0
    panel.fields["norm_eps"].value = -1.0
    text = panel.problems_html.value
    assert "at least one layer" in text and "epsilon must be positive" in text
    assert panel.layer_picker.options == ()


def test_optional_fields_take_numbers_and_none(panel):
    panel.fields["sliding_window"].value = "64"
    assert panel.blueprint.layer.sliding_window == 64
    panel.fields["attn_logit_softcap"].value = "50"
    assert panel.blueprint.layer.attn_logit_softcap == 50.0
    panel.fields["sliding_window"].value = " "
    assert panel.blueprint.layer.sliding_window is None


def test_per_layer_override_marks_cells_and_can_be_removed(panel):
    panel.layer_picker.value = (1, 2)
    panel.override_field.value = "sliding_window"
    panel.override_value.value = "8"
    panel.override_button.click()
    assert panel.blueprint.overrides == {1: {"sliding_window": 8}, 2: {"sliding_window": 8}}
    table = panel.overrides_html.value
    assert table.count("ewb-overridden") == 2 and "transformer_blocks[0]" in table

    panel.override_field.value = "num_kv_heads"
    panel.override_value.value = "3"
    panel.layer_picker.value = (2,)
    panel.override_button.click()
    assert "#ffcdd2" in panel.overrides_html.value  # the bad cell is red
    assert any(p.startswith("layer 2: num_kv_heads=3") for p in panel.problems)

    panel.remove_button.click()
    assert panel.blueprint.overrides == {1: {"sliding_window": 8}, 2: {"sliding_window": 8}}
    panel.layer_picker.value = (1, 2)
    panel.override_field.value = "sliding_window"
    panel.remove_button.click()
    assert panel.blueprint.overrides == {}
    assert "No per-layer overrides" in panel.overrides_html.value


def test_override_errors_are_shown_not_raised(panel):
    panel.layer_picker.value = ()
    panel.override_button.click()
    assert "Pick one or more layers" in panel.message.value
    panel.layer_picker.value = (0,)
    panel.override_field.value = "qk_norm"
    panel.override_value.value = "maybe"
    panel.override_button.click()
    assert "not true/false" in panel.message.value and panel.blueprint.overrides == {}
    panel.override_value.value = "yes"
    panel.override_button.click()
    assert panel.blueprint.layer_spec(0).qk_norm is True


def test_build_click_builds_and_reports_the_module_tree(panel):
    from workbench import layers

    panel.build_button.click()
    assert panel.model is not None
    assert layers.count_params(panel.model) == panel.params
    assert "matches the summary" in panel.report.value
    assert "transformer_blocks" in panel.report.value and "tok_embedding" in panel.report.value


def test_export_writes_the_module_shows_it_and_links_it(panel, tmp_path, samples):
    target = tmp_path / "out" / "llama_tiny.py"
    panel.export_path.value = str(target)
    panel.export_button.click()
    assert target.is_file()
    assert f"href='{target}'" in panel.report.value and "TENSOR_NAMES" in panel.report.value
    assert "<span" in panel.report.value  # syntax highlighted
    spec = importlib.util.spec_from_file_location("exported_llama", target)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.get_model_config().num_layers == panel.blueprint.num_layers


def test_export_to_a_bad_place_says_so(panel, tmp_path):
    (tmp_path / "file").write_text("x")
    panel.export_path.value = str(tmp_path / "file" / "sub" / "m.py")
    panel.export_button.click()
    assert "cannot write" in panel.message.value and "sub" in panel.message.value
    panel.export_path.value = str(tmp_path / "m.txt")
    panel.export_button.click()
    assert "not a .py file" in panel.message.value
    assert not list(tmp_path.glob("*.tmp"))


def test_panel_on_a_saved_blueprint_restores_the_form(samples, tmp_path):
    bp = Blueprint.from_hf(samples["gemma"]).set("sliding_window", 16, layer=0).set("norm_eps", 1e-5)
    saved = tmp_path / "bp.json"
    saved.write_text(json.dumps(bp.to_json()))
    panel = BuilderPanel(Blueprint.from_json(saved.read_text()))
    assert panel.blueprint == bp
    assert panel.fields["norm_eps"].value == pytest.approx(1e-5)
    assert panel.fields["norm_offset"].value == 1.0 and panel.fields["scale_embeddings"].value is True
    assert panel.fields["head_dim"].value == "32"
    assert "ewb-overridden" in panel.overrides_html.value


def test_preset_picker_replaces_the_blueprint_and_the_form(panel):
    panel.preset.value = "gemma"
    panel.load_preset_button.click()
    assert panel.blueprint.family == "gemma" and panel.blueprint.num_layers == 18
    assert panel.fields["num_layers"].value == 18 and panel.fields["hidden_size"].value == 2048
    assert panel.params == panel.blueprint.summary().params > 2_000_000_000
    assert list(panel.layer_picker.options) == list(range(18))
    panel.preset.value = ""
    panel.load_preset_button.click()
    assert "Pick a preset" in panel.message.value


def test_edits_debounce_inside_a_running_event_loop(samples):
    import asyncio

    async def scenario():
        panel = BuilderPanel.from_hf(samples["llama"], debounce_s=0.05)
        before = panel.params
        panel.fields["intermediate_size"].value = 200
        panel.fields["intermediate_size"].value = 240  # typed quickly: one refresh
        assert panel.blueprint.layer.intermediate_size == 240
        assert panel.params == before  # not yet refreshed
        await asyncio.sleep(0.2)
        assert panel.params == panel.blueprint.summary().params != before

    asyncio.run(scenario())
