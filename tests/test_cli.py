"""`edge-workbench` subcommands: JSON keys, human text, errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from workbench import cli


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    exe = os.path.join(os.path.dirname(sys.executable), "edge-workbench")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma"])
def test_blueprint_json_on_every_sample(name, samples, hf_models, capsys):
    assert cli.main(["blueprint", str(samples[name]), "--kv", "64", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1  # exactly one JSON object
    data = json.loads(out)
    assert {"family", "params", "problems", "config", "memory"} <= set(data)
    assert data["family"] == name
    assert data["params"] == hf_models(name).num_parameters()
    assert data["problems"] == []
    assert set(data["memory"]["weights_bytes"]) == {"fp32", "fp16", "int8", "int4"}
    assert data["memory"]["kv_cache_length"] == 64 and data["memory"]["kv_cache_bytes"] > 0
    assert data["config"]["embedding_dim"] == data["blueprint"]["model"]["hidden_size"]
    json.dumps(data, allow_nan=False)


def test_blueprint_human_text(samples, capsys):
    assert cli.main(["blueprint", str(samples["gemma"])]) == 0
    text = capsys.readouterr().out
    assert "parameters:" in text and "problems:   none" in text and "KV cache:" in text


def test_blueprint_lists_problems_of_an_impossible_config(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "num_attention_heads": 4,
                                                      "num_key_value_heads": 3, "hidden_size": 64}))
    assert cli.main(["blueprint", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert any("num_kv_heads=3" in p for p in data["problems"])


def test_errors_are_json_with_a_hint_and_a_nonzero_exit(tmp_path, capsys):
    assert cli.main(["blueprint", str(tmp_path / "nope"), "--json"]) == cli.EXIT_ERROR
    captured = capsys.readouterr()
    err = json.loads(captured.out)
    assert set(err) == {"error", "hint"} and "does not exist" in err["error"]
    assert "does not exist" in captured.err


def test_families_json(capsys):
    assert cli.main(["families", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {f["model_type"]: f for f in data["families"]}
    assert {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3"} <= set(rows)
    assert all(r["example"] and r["features"] for r in rows.values())
    assert "QK-norm (RMS, per head)" in rows["qwen3"]["features"]
    refused = {r["model_type"]: r["reason"] for r in data["unsupported"]}
    assert "openelm" in refused and "transformers" in refused["openelm"]


def test_console_script_prints_clean_json(samples):
    """The installed `edge-workbench` works and keeps library noise off stdout."""
    proc = run_cli("blueprint", str(samples["llama"]), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["family"] == "llama"
    bad = run_cli("blueprint", "/nonexistent/model", "--json")
    assert bad.returncode == cli.EXIT_ERROR and "error" in json.loads(bad.stdout)


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma"])
def test_map_json_on_every_sample_has_no_problems_and_no_unused(name, samples, capsys):
    assert cli.main(["map", str(samples[name]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"tensor_names", "entries", "problems", "unused"} <= set(data)
    assert data["problems"] == [] and data["unused"] == []
    assert data["tensor_names"]["embedding"] == "model.embed_tokens"
    assert all(e["status"] in ("ok", "tied") for e in data["entries"])
    assert {"target", "source", "expected", "found", "dtype", "status", "hint"} <= set(data["entries"][0])


def test_map_with_a_saved_mapping_file(samples, tmp_path, capsys):
    from workbench import Blueprint
    from workbench.mapping import Mapping

    m = Mapping.propose(Blueprint.from_hf(samples["llama"]), samples["llama"])
    m.set("ff_down_proj", "model.layers.{}.mlp.fc2")
    path = m.save(tmp_path / "m.json")
    assert cli.main(["map", str(samples["llama"]), "--mapping", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len([p for p in data["problems"] if "missing" in p]) == 3 and len(data["unused"]) == 3
    assert cli.main(["map", str(samples["llama"]), "--mapping", str(tmp_path / "none.json"), "--json"]) == 1
    assert "no mapping file" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma"])
def test_compare_json_passes_on_every_sample(name, samples, capsys):
    assert cli.main(["compare", str(samples[name]), "--prompt", "The robot", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"passed", "logits", "layers", "first_divergence"} <= set(data)
    assert data["passed"] is True and data["first_divergence"] is None
    assert data["logits"]["max_abs_diff"] <= 1e-4 and data["logits"]["top1_agreement"] == 1.0
    assert {"name", "layer", "point", "max_abs_diff", "mean_abs_diff", "rel_error", "cosine", "shape"} <= set(
        data["layers"][1])


def test_compare_that_does_not_pass_exits_nonzero(samples, tmp_path, capsys):
    from workbench import Blueprint
    from workbench.mapping import Mapping

    bp = Blueprint.from_hf(samples["llama"]).set("norm_eps", 0.5)
    path = Mapping.propose(bp, samples["llama"]).save(tmp_path / "m.json")
    code = cli.main(["compare", str(samples["llama"]), "--mapping", str(path), "--json"])
    assert code == cli.EXIT_NOT_PASSED
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is False
    assert data["first_divergence"]["name"] == "transformer_blocks.0.input_norm"
