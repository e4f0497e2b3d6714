"""Checkpoints and weight mappings: proposal, the table, planted faults, strict loading,
saving, emitted code, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from workbench import Blueprint
from workbench.checkpoint import Checkpoint, CheckpointError
from workbench.errors import MappingError
from workbench.mapping import TENSOR_KEYS, Mapping, layer_template


def copy_sample(samples, name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(samples[name], dst)
    return dst


def rewrite(folder, fn):
    """Rewrites a sample's model.safetensors through fn(state) -> state."""
    path = folder / "model.safetensors"
    save_file(fn(load_file(path)), str(path))


def reference_logits(folder, tokens):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder).eval()(tokens).logits


def test_tensor_keys_are_litert_torchs():
    import dataclasses

    from litert_torch.generative.utilities.loader import ModelLoader

    assert TENSOR_KEYS == tuple(f.name for f in dataclasses.fields(ModelLoader.TensorNames))


def test_layer_template():
    assert layer_template("model.layers.3.mlp.up_proj.weight") == ("model.layers.{}.mlp.up_proj.weight", 3)
    assert layer_template("lm_head.weight") == ("lm_head.weight", None)


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma"])
def test_every_sample_maps_cleanly_and_loads_to_transformers_logits(name, samples, hf_models):
    from workbench import layers

    bp = Blueprint.from_hf(samples[name])
    m = Mapping.propose(bp, samples[name])
    assert m.problems() == [] and m.unused() == []
    rows = [e for e in m.table() if e.target]
    assert all(e.status in ("ok", "tied") for e in rows)
    assert {e.target for e in rows} == {n for n, _ in bp.build(8).named_parameters(remove_duplicate=False)}
    model = m.load(kv_cache_length=16)
    assert not any(p.is_meta for p in model.parameters())
    tokens = torch.tensor([[1, 7, 19, 33, 71, 100, 200]])
    with torch.no_grad():
        ref = hf_models(name)(tokens).logits
    assert (ref - layers.logits(model, tokens[0], 16)).abs().max().item() <= 1e-5


def test_table_rows_carry_shapes_dtypes_and_sources(samples):
    bp = Blueprint.from_hf(samples["qwen2"])
    m = Mapping.propose(bp, samples["qwen2"])
    qkv = next(e for e in m.table() if e.target == "transformer_blocks.1.atten_func.qkv_projection.bias")
    assert qkv.source.count(" + ") == 2 and "q_proj.bias" in qkv.source
    assert qkv.expected == qkv.found == ((4 + 2 * 2) * 16,)
    tied = next(e for e in m.table() if e.target == "lm_head.weight")
    assert tied.status == "tied" and tied.source == "model.embed_tokens.weight"


# ---- planted faults --------------------------------------------------------------
def test_renamed_tensor_is_missing_with_the_closest_name(samples, tmp_path):
    d = copy_sample(samples, "llama", tmp_path)
    rewrite(d, lambda s: {("model.layers.1.mlp.upproj.weight" if k == "model.layers.1.mlp.up_proj.weight" else k): v
                          for k, v in s.items()})
    m = Mapping.propose(Blueprint.from_hf(d), d)
    e = next(e for e in m.table() if e.target == "transformer_blocks.1.ff.w3.weight")
    assert e.status == "missing" and "closest: 'model.layers.1.mlp.upproj.weight'" in e.hint
    assert m.unused() == ["model.layers.1.mlp.upproj.weight"]
    with pytest.raises(MappingError, match="transformer_blocks.1.ff.w3.weight: missing"):
        m.load()
    # one row edit fixes it
    m.set("transformer_blocks.1.ff.w3.weight", "model.layers.1.mlp.upproj.weight")
    assert m.problems() == [] and m.unused() == []
    model = m.load(kv_cache_length=16)
    from workbench import layers

    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    ref = reference_logits(samples["llama"], tokens)  # the same weights under their usual names
    assert (ref - layers.logits(model, tokens[0], 16)).abs().max().item() <= 1e-5


def test_transposed_tensor_is_named_with_its_hint(samples, tmp_path):
    d = copy_sample(samples, "llama", tmp_path)
    rewrite(d, lambda s: {k: (v.T.contiguous() if k == "model.layers.2.mlp.down_proj.weight" else v)
                          for k, v in s.items()})
    m = Mapping.propose(Blueprint.from_hf(d), d)
    e = next(e for e in m.table() if e.target == "transformer_blocks.2.ff.w2.weight")
    assert e.status == "transposed"
    assert "source has shape (160, 64), target expects (64, 160): transposed?" in e.hint
    with pytest.raises(MappingError, match="transposed"):
        m.load()


def test_wrong_pattern_shows_missing_rows_and_a_pattern_problem(samples):
    bp = Blueprint.from_hf(samples["llama"])
    m = Mapping.propose(bp, samples["llama"])
    m.set("ff_up_proj", "model.layers.{}.mlp.fc1")
    rows = [e for e in m.table() if e.key == "ff_up_proj" and e.target]
    assert len(rows) == bp.num_layers and all(e.status == "missing" for e in rows)
    assert any("names no tensor" in str(p) and p.field == "ff_up_proj" for p in m.problems())
    assert set(m.unused()) == {f"model.layers.{i}.mlp.up_proj.weight" for i in range(bp.num_layers)}
    m.set("ff_up_proj", "model.layers.{}.mlp.up_proj")
    assert m.problems() == []


def test_pattern_without_layer_index_and_duplicate_targets(samples):
    m = Mapping.propose(Blueprint.from_hf(samples["llama"]), samples["llama"])
    m.set("ff_up_proj", "model.layers.0.mlp.up_proj")
    assert any("has no {}" in str(p) for p in m.problems())
    dup = [e for e in m.table() if e.status == "duplicate"]
    assert len(dup) == 3 and "one of their patterns is wrong" in dup[0].hint
    m.set("ff_up_proj", "model.layers.{}.mlp.gate_proj")  # up and gate read the same tensors
    assert [e.status for e in m.table() if e.key == "ff_gate_proj"] == ["duplicate"] * 3


def test_shape_mismatch_names_the_knob(samples):
    bp = Blueprint.from_hf(samples["llama"]).set("intermediate_size", 128)
    m = Mapping.propose(bp, samples["llama"])
    e = next(e for e in m.table() if e.target == "transformer_blocks.0.ff.w1.weight")
    assert e.status == "shape mismatch" and "intermediate_size" in e.hint
    bp2 = Blueprint.from_hf(samples["llama"]).set("num_kv_heads", 4)
    e2 = next(e for e in Mapping.propose(bp2, samples["llama"]).table() if "qkv_projection.weight" in e.target)
    assert e2.status == "shape mismatch" and "num_kv_heads" in e2.hint


def test_fused_qkv_checkpoint_is_proposed_with_the_fused_key(samples, tmp_path):
    d = copy_sample(samples, "llama", tmp_path)

    def fuse(s):
        out = {}
        for k, v in s.items():
            if ".self_attn.q_proj." in k:
                pre = k.replace(".q_proj.weight", "")
                out[pre + ".qkv_proj.weight"] = torch.cat([v, s[pre + ".k_proj.weight"], s[pre + ".v_proj.weight"]])
            elif ".k_proj." not in k and ".v_proj." not in k:
                out[k] = v
        return out

    rewrite(d, fuse)
    bp = Blueprint.from_hf(d)
    separate = Mapping(bp, d, bp.tensor_names())
    e = next(e for e in separate.table() if "qkv_projection" in e.target)
    assert e.status == "needs split" and "attn_fused_qkv_proj" in e.hint
    m = Mapping.propose(bp, d)
    assert m.tensor_names["attn_fused_qkv_proj"] == "model.layers.{}.self_attn.qkv_proj"
    assert m.problems() == [] and m.unused() == []
    from workbench import layers

    tokens = torch.tensor([[3, 1, 4, 1, 5, 9]])
    assert (reference_logits(samples["llama"], tokens) - layers.logits(m.load(kv_cache_length=16), tokens[0], 16)
            ).abs().max().item() <= 1e-5


def test_separate_checkpoint_with_fused_key_says_needs_fuse(samples):
    bp = Blueprint.from_hf(samples["llama"])
    m = Mapping.propose(bp, samples["llama"])
    m.set("attn_fused_qkv_proj", "model.layers.{}.self_attn.qkv_proj")
    e = next(e for e in m.table() if "qkv_projection" in e.target)
    assert e.status == "needs fuse" and "unset attn_fused_qkv_proj" in e.hint


def test_tied_blueprint_over_an_untied_checkpoint_flags_the_head(samples):
    bp = Blueprint.from_hf(samples["llama"]).set("tie_embeddings", True)
    m = Mapping.propose(bp, samples["llama"])
    [e] = [e for e in m.table() if e.status == "unused"]
    assert e.source == "lm_head.weight" and "tie_embeddings=False" in e.hint
    with pytest.raises(MappingError, match="unused"):
        m.load()
    assert m.load(allow_unused=True, kv_cache_length=8) is not None


def test_transposed_sources_can_be_declared_and_load(samples, tmp_path):
    d = copy_sample(samples, "llama", tmp_path)
    rewrite(d, lambda s: {k: (v.T.contiguous() if ".mlp.down_proj." in k else v) for k, v in s.items()})
    m = Mapping.propose(Blueprint.from_hf(d), d).set_transposed("ff_down_proj")
    assert m.problems() == []
    from workbench import layers

    tokens = torch.tensor([[9, 8, 7, 6]])
    model = m.load(kv_cache_length=8)
    assert (reference_logits(samples["llama"], tokens) - layers.logits(model, tokens[0], 8)).abs().max() <= 1e-5


def test_bf16_checkpoint_is_converted_with_a_note(samples, tmp_path):
    d = copy_sample(samples, "gemma", tmp_path)
    rewrite(d, lambda s: {k: v.to(torch.bfloat16) for k, v in s.items()})
    ck = Checkpoint.open(d)
    assert ck.dtypes() == {"bfloat16": len(ck.tensors)}
    m = Mapping.propose(Blueprint.from_hf(d), ck)
    assert m.problems() == []
    assert all("bfloat16: converted to float32" in e.hint for e in m.table() if e.status == "ok")
    model = m.load(kv_cache_length=8)
    assert model.tok_embedding.weight.dtype == torch.float32
    assert ck.notes == ["bfloat16 tensors converted to float32"]


def test_edit_errors(samples):
    m = Mapping.propose(Blueprint.from_hf(samples["llama"]), samples["llama"])
    with pytest.raises(MappingError, match="neither a TensorNames field nor a parameter"):
        m.set("ff_upp", "x")
    with pytest.raises(MappingError, match="did you mean 'model.layers.0.mlp.up_proj.weight'"):
        m.set("transformer_blocks.0.ff.w3.weight", "model.layers.0.mlp.up_proj.weigh")
    with pytest.raises(MappingError, match="not a litert-torch TensorNames field"):
        m.set_transposed("nope")


# ---- checkpoints: bad input --------------------------------------------------------
def test_checkpoint_bad_input(samples, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint.open(tmp_path / "nothing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no weight files"):
        Checkpoint.open(empty)
    trunc = copy_sample(samples, "llama", tmp_path)
    data = (trunc / "model.safetensors").read_bytes()
    (trunc / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        Checkpoint.open(trunc)
    (trunc / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        Checkpoint.open(trunc)
    (trunc / "model.safetensors").write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(CheckpointError, match="does not fit"):
        Checkpoint.open(trunc)


def test_sharded_checkpoint_and_a_missing_shard(samples, tmp_path):
    d = copy_sample(samples, "qwen2", tmp_path)
    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for f, ns in halves.items():
        save_file({n: state[n] for n in ns}, str(d / f))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {n: f for f, ns in halves.items() for n in ns}}))
    ck = Checkpoint.open(d)
    assert set(ck.tensors) == set(names)
    m = Mapping.propose(Blueprint.from_hf(d), ck)
    assert m.problems() == [] and m.load(kv_cache_length=8) is not None
    (d / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="names shard 'model-00002-of-00002.safetensors', which is missing"):
        Checkpoint.open(d)


def test_pytorch_bin_is_read_weights_only(samples, tmp_path):
    d = copy_sample(samples, "llama", tmp_path)
    state = load_file(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    torch.save(state, d / "pytorch_model.bin")
    ck = Checkpoint.open(d)
    assert ck.kind == "pytorch" and set(ck.tensors) == set(state)
    m = Mapping.propose(Blueprint.from_hf(d), ck)
    assert m.problems() == [] and m.load(kv_cache_length=8) is not None


def test_a_code_running_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    code = textwrap.dedent(f"""
        import os, torch
        class Evil:
            def __reduce__(self):
                return (os.system, ("touch {marker}",))
        torch.save({{"w": Evil()}}, "{tmp_path / 'pytorch_model.bin'}")
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(CheckpointError, match="refused, not executed"):
        Checkpoint.open(tmp_path)
    assert not marker.exists()


# ---- saving and code ----------------------------------------------------------------
def test_save_and_open_round_trip(samples, tmp_path):
    m = Mapping.propose(Blueprint.from_hf(samples["llama"]), samples["llama"])
    m.set("transformer_blocks.0.ff.w3.weight", "model.layers.0.mlp.up_proj.weight")
    path = m.save(tmp_path / "mapping.json")
    again = Mapping.open(path)
    assert again.tensor_names == m.tensor_names and again.rows == m.rows
    assert again.blueprint == m.blueprint and again.table() == m.table()
    assert not list(tmp_path.glob("*.tmp"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(MappingError, match="not valid JSON"):
        Mapping.open(tmp_path / "bad.json")
    with pytest.raises(MappingError, match="no mapping file"):
        Mapping.open(tmp_path / "none.json")


def _run_emitted_in_fresh_process(source: str, folder, code_dir, reference=None) -> float:
    """Writes the emitted module, builds and loads it from `folder` in a new Python, and
    returns its max abs logits difference from transformers on `reference` (default: folder)."""
    code_dir.mkdir(exist_ok=True)
    (code_dir / "reauthored.py").write_text(source)
    check = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(code_dir)!r})
        import reauthored
        from transformers import AutoModelForCausalLM
        from workbench import layers
        model = reauthored.build_model({str(folder)!r}, mask_cache_size=16)
        tokens = torch.tensor([[1, 5, 9, 13, 17]])
        with torch.no_grad():
            ref = AutoModelForCausalLM.from_pretrained({str(reference or folder)!r}).eval()(tokens).logits
        print((ref - layers.logits(model, tokens[0], 16)).abs().max().item())
    """)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return float(proc.stdout.strip().splitlines()[-1])


def test_emitted_module_with_the_mapping_loads_in_a_fresh_process(samples, tmp_path):
    m = Mapping.propose(Blueprint.from_hf(samples["qwen2"]), samples["qwen2"])
    assert m.to_python().startswith("TENSOR_NAMES = loading_utils.ModelLoader.TensorNames(")
    assert _run_emitted_in_fresh_process(m.module_source(), samples["qwen2"], tmp_path / "code") <= 1e-5


def test_emitted_module_carries_row_edits_and_transposes(samples, tmp_path):
    d = copy_sample(samples, "llama", tmp_path)

    def plant(s):
        s = dict(s)
        s["model.layers.1.mlp.upproj.weight"] = s.pop("model.layers.1.mlp.up_proj.weight")
        for k in [k for k in s if ".mlp.down_proj." in k]:
            s[k] = s[k].T.contiguous()
        return s

    rewrite(d, plant)
    m = Mapping.propose(Blueprint.from_hf(d), d)
    m.set("transformer_blocks.1.ff.w3.weight", "model.layers.1.mlp.upproj.weight").set_transposed("ff_down_proj")
    assert m.problems() == []
    source = m.module_source()
    assert "custom_loader=load_checkpoint" in source
    # the reference is the untouched sample: same weights, stored the usual way
    assert _run_emitted_in_fresh_process(source, d, tmp_path / "code", reference=samples["llama"]) <= 1e-5


def test_load_reports_progress(samples):
    seen = []
    m = Mapping.propose(Blueprint.from_hf(samples["gemma"]), samples["gemma"])
    m.load(progress=lambda stage, done, total, detail="": seen.append((stage, done, total)), kv_cache_length=8)
    assert seen[0] == ("load weights", 0, 23) and seen[-1] == ("load weights", 23, 23)
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen)
