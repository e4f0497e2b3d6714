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
    assert cli.main(["blueprint", str(tmp_path), "--json"]) == cli.EXIT_PROBLEMS  # a script can tell
    data = json.loads(capsys.readouterr().out)
    assert any("num_kv_heads=3" in p for p in data["problems"])
    assert cli.main(["blueprint", str(tmp_path), "--json", "--allow-problems"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == data["problems"]


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
    assert cli.main(["map", str(samples["llama"]), "--mapping", str(path), "--json"]) == cli.EXIT_PROBLEMS
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


# ---- paths and sweep: the text tables read as the notebook's HTML tables ------------
MEASURES = {"size_bytes": 123_456_789, "seconds": 12.345, "peak_rss_bytes": 1.5e9, "prefill_tok_s": 1234.56,
            "decode_tok_s": 56.78, "max_abs_diff": 3.14159e-5, "top1_agreement": 0.97, "err_fp32": 0.0,
            "top1_fp32": 1.0, "err_hf": float("nan"), "top1_hf": None, "perplexity": 12345.678}


def _html_cells(html: str) -> list[str]:
    import re

    return re.findall(r"<td>([^<]*)</td>", html)  # the measures' cells (the name cell has a style)


@pytest.mark.parametrize("v", [None, 0, 0.0, 1e-12, 0.97, 1.0, 12.345, 2.5e9, float("nan"), float("inf"),
                               -float("inf")])
def test_text_and_html_cells_agree(v):
    from workbench.conversion_paths import COLUMNS as PATH_COLUMNS
    from workbench.conversion_paths import cell_html, cell_text
    from workbench.sweep import COLUMNS as SWEEP_COLUMNS

    for key, _, _, scale in PATH_COLUMNS + SWEEP_COLUMNS:
        assert scale >= 1, key  # a value is divided by its scale
        assert cell_html(v, key, scale) == f"<td>{cell_text(v, key, scale)}</td>"
    assert cell_text(0.97, "top1_agreement", 1) == cell_text(0.97, "top1_hf", 1) == "97%"
    assert cell_text(3.14159e-5, "err_fp32", 1) == cell_text(3.14159e-5, "max_abs_diff", 1) == "3.1e-05"
    assert cell_text(None, "size_bytes", 2**20) == "—"


def test_paths_text_table_matches_its_html_and_json_keeps_raw_numbers(samples, monkeypatch, capsys):
    """No conversion: compare_paths returns a made-up table."""
    import workbench.conversion_paths
    from workbench.mapping import Mapping
    from workbench.conversion_paths import COLUMNS, PathComparison

    measured = {"path": "reauthored", **{key: MEASURES[key] for key, _, _, _ in COLUMNS}}
    table = PathComparison(rows=[measured, {"path": "export_hf", "size_bytes": 2**20}],
                           recipe="dynamic_int8", prefill=[8], kv=64, threads=2)
    monkeypatch.setattr(Mapping, "propose", lambda *a, **k: None)
    monkeypatch.setattr(workbench.conversion_paths, "compare_paths", lambda m, **kw: table)
    assert cli.main(["paths", str(samples["llama"])]) == 0
    text = capsys.readouterr().out.splitlines()
    head, text = text[:-2], text[-2:]
    assert head[-1].split()[0] == "path" and all(not line[:26].strip() for line in head[:-1])
    # every label whole (wrapped over the header's lines), each unit under its label
    columns = ["".join(line[26 + 16 * i: 26 + 16 * (i + 1)].strip() + " " for line in head).split()
               for i in range(len(COLUMNS))]
    assert [" ".join(c) for c in columns] == [label + (f" ({unit})" if unit else "")
                                              for _, label, unit, _ in COLUMNS]
    assert columns[-1] == ["decode", "(tok/s)"] and columns[0] == ["size", "(MiB)"]
    shown = [line[26:].split() for line in text]
    assert shown == [_html_cells(row) for row in table.table_html().split("</tr>")[1:-1]]
    assert shown[0] == ["117.74", "12.3", "1.50", "3.1e-05", "97%", "1,234.6", "56.8"]
    assert shown[1] == ["1.00"] + ["—"] * 6
    assert cli.main(["paths", str(samples["llama"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(table.to_json()))


def test_json_output_is_strict_json_when_a_figure_is_nan(samples, monkeypatch, capsys):
    """A diverged conversion's error is NaN: --json prints null for it (strict JSON), not a traceback."""
    import workbench.conversion_paths
    from workbench.mapping import Mapping
    from workbench.conversion_paths import PathComparison

    table = PathComparison(rows=[{"path": "reauthored", "size_bytes": 2**20, "max_abs_diff": float("nan")}],
                           recipe="dynamic_int8", prefill=[8], kv=64, threads=2)
    monkeypatch.setattr(Mapping, "propose", lambda *a, **k: None)
    monkeypatch.setattr(workbench.conversion_paths, "compare_paths", lambda m, **kw: table)
    assert cli.main(["paths", str(samples["llama"]), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert row["max_abs_diff"] is None and row["size_bytes"] == 2**20


def test_sweep_text_table_matches_its_html_and_json_keeps_raw_numbers(samples, tmp_path, monkeypatch, capsys):
    """No conversion: sweep() returns a made-up sweep, one row measured, one failed."""
    import workbench.sweep
    from workbench.sweep import Item, Sweep

    s = Sweep([Item("fp16", "fp16"), Item("bad", "bad")], {"prefill": [8], "kv": 32, "threads": 2, "eval_tokens": 9},
              tmp_path / "sweep.json", tmp_path,
              rows={"fp16": {"label": "fp16", "status": "ok", **MEASURES},
                    "bad": {"label": "bad", "status": "error", "error": "no such recipe"}})
    monkeypatch.setattr(workbench.sweep, "sweep", lambda *a, **k: s)
    assert cli.main(["sweep", str(samples["llama"]), "--recipes", "fp16,bad", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out.splitlines()
    first = next(i for i, line in enumerate(text) if line.startswith("fp16"))
    assert text[first - 1].startswith("recipe") and text[first + 1].split()[:3] == ["bad", "failed:", "no"]
    assert "transformers" in "".join(text[:first]) and "(MiB)" in text[first - 1]  # labels whole, units shown
    shown = text[first][28:].split()
    assert shown == _html_cells(s.table_html())
    assert shown == ["117.74", "12.3", "1.50", "1,234.6", "56.8", "0", "100%", "nan", "—", "12,345.7"]
    assert cli.main(["sweep", str(samples["llama"]), "--recipes", "fp16,bad", "--out", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["top1_fp32"] == 1.0 and rows[0]["err_fp32"] == 0.0 and rows[0]["size_bytes"] == 123_456_789
    assert rows[0]["err_hf"] is None and rows[1]["status"] == "error"  # NaN -> null, as before
