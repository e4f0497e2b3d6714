"""Running converted models: greedy text equal to PyTorch's and transformers' on fp32, both
signature styles, chunked prompts, sampling, stops, bad inputs, the Run panel and the CLI."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from workbench import cli
from workbench.runner import Runner, RunnerError

LONG = "Once upon a time, a small robot lived"  # 20 tokens: three prefill_8 chunks
STYLES = ["reauthored", "reauthored_other_layout", "export_hf"]


@pytest.fixture(scope="session")
def converted(llama_project, tmp_path_factory):
    """The llama sample in fp32 three ways: the project's re-authored file (kv 32, the default
    KV cache layout), re-authored with the other layout (kv 64, checked) and a direct export
    (kv 64)."""
    from workbench.convert import convert
    from workbench.convert_settings import DEFAULT_KV_LAYOUT, KV_LAYOUTS

    out = tmp_path_factory.mktemp("runner")
    other = next(lay for lay in KV_LAYOUTS if lay != DEFAULT_KV_LAYOUT)
    relaid = convert(llama_project / "checkpoint", recipe="none", prefill=[8], kv=64, out=out, kv_layout=other)
    direct = convert(llama_project / "checkpoint", recipe="none", prefill=[8], kv=64, out=out, path="export_hf",
                     check_steps=0).result()
    relaid = relaid.result()
    return {"reauthored": llama_project / "conversions" / "fp32.tflite", "export_hf": direct.path,
            "reauthored_other_layout": relaid.path, "other_layout": other, "other_check": relaid.check,
            "hf": llama_project / "checkpoint"}


@pytest.fixture(scope="session")
def reauthored_model(converted):
    from workbench import Blueprint
    from workbench.mapping import Mapping

    return Mapping.propose(Blueprint.from_hf(converted["hf"]), converted["hf"]).load()


@pytest.mark.parametrize("style", STYLES)
def test_greedy_text_matches_pytorch_and_transformers(style, converted, reauthored_model):
    r = Runner(converted[style], tokenizer=converted["hf"])
    assert r.model.style == style.removesuffix("_other_layout")
    side = r.side_by_side("Once upon a time", converted["hf"], max_new_tokens=12, model=reauthored_model)
    assert side["first_diff"] == {"converted": None, "reauthored": None}, side
    assert len(side["ids"]["converted"]) == 12 and side["text"]["converted"] == side["text"]["transformers"]
    g = r.last
    assert g.stop_reason == "max_new_tokens" and g.ttft_s > 0 and g.decode_tok_s > 0 and g.prefill_tok_s > 0
    assert g.peak_rss_bytes > 50_000_000 and g.text == r.decode_text(g.ids)


def test_both_kv_layouts_run_alike(converted):
    """The re-authored file with the other KV cache layout: read right (layout, kv), and its
    check as close to transformers as the default layout's (fp32)."""
    from workbench.runtime import SignatureModel

    sm = SignatureModel(converted["reauthored_other_layout"])
    details = sm.input_details("decode")
    shapes = {n: details[n]["shape"] for n in ("kv_cache_k_0", "kv_cache_v_0")}
    assert (sm.kv_layout, sm.kv_len) == (converted["other_layout"], 64)
    if sm.kv_layout == "transposed":
        assert shapes == {"kv_cache_k_0": [1, 2, 64, 16], "kv_cache_v_0": [1, 2, 16, 64]}
    else:
        assert shapes == {"kv_cache_k_0": [1, 64, 2, 16], "kv_cache_v_0": [1, 64, 2, 16]}
    assert SignatureModel(converted["export_hf"]).kv_layout == "transposed"
    c = converted["other_check"]
    assert c["max_abs_diff"] <= 1e-5 and c["vs_reauthored"]["max_abs_diff"] <= 1e-5 and c["top1_agreement"] == 1.0


@pytest.mark.parametrize("style", STYLES)
def test_the_cache_updated_in_place_gives_the_interpreters_logits(style, converted):
    """SignatureModel binds each cache as both input and output of the compiled model (updated
    in place); ai-edge-litert's Interpreter signature runner copies it in and out of every call.
    Same file, same prompt, two prefill chunks, then decode steps: the same logits and caches."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from workbench.runtime import SignatureModel

    sm = SignatureModel(converted[style])
    it = Interpreter(model_path=str(converted[style]), num_threads=2)
    n = sm.prefills[-1]
    kv = {k: np.zeros(d["shape"], dtype=d["dtype"]) for k, d in sm.input_details("decode").items()
          if k in sm.kv_names}
    ids = [1 + (7 * i) % 50 for i in range(2 * n)]
    for start in (0, n):  # two chunks: the second reads what the first wrote
        pos = np.arange(start, start + n, dtype=np.int32)
        out = it.get_signature_runner(f"prefill_{n}")(tokens=np.array([ids[start:start + n]], dtype=np.int32),
                                                      input_pos=pos, **sm._mask(pos), **kv)
        kv = {k: out[k] for k in sm.kv_names}
        sm.prefill(ids[start:start + n], start=start)
    assert all(np.array_equal(kv[k], v) for k, v in sm.kv.items())
    decode = it.get_signature_runner("decode")
    tok = ids[-1]
    for p in range(2 * n, 2 * n + 6):
        out = decode(tokens=np.array([[tok]], dtype=np.int32), input_pos=np.array([p], dtype=np.int32),
                     **sm._mask([p]), **kv)
        kv = {k: out[k] for k in sm.kv_names}
        ours = sm.decode(tok, p)
        np.testing.assert_array_equal(ours, out["logits"][0, -1])
        tok = int(ours.argmax())
    assert all(np.array_equal(kv[k], v) for k, v in sm.kv.items())


@pytest.mark.parametrize("style", STYLES)
def test_a_prompt_longer_than_the_largest_prefill_is_chunked(style, converted, reauthored_model):
    r = Runner(converted[style], tokenizer=converted["hf"])
    n = len(r.encode(LONG))
    assert n > 2 * r.model.prefills[-1] and n + 4 <= r.model.kv_len
    side = r.side_by_side(LONG, converted["hf"], max_new_tokens=4, model=reauthored_model)
    assert side["first_diff"]["converted"] is None, side


def test_streamed_pieces_make_the_text(converted):
    """Pieces end at spaces and never split a character, so they join to the decoded text
    (checked on natural text with multi-byte characters, where a careless split would show)."""
    from workbench.runner import _Detokenizer

    r = Runner(converted["reauthored"], tokenizer=converted["hf"])
    for text in ("Once upon a time, a small robot lived in a quiet town.", "naïve café — 東京 🙂 done\nnext line"):
        ids = r.encode(text)[1:]  # without BOS
        d = _Detokenizer(r.decode_text)
        pieces = [d.add(ids[: i + 1]) for i in range(len(ids))]
        pieces.append(d.flush(r.decode_text(ids)))
        assert "".join(pieces) == r.decode_text(ids)
        assert all("\ufffd" not in p for p in pieces) and sum(1 for p in pieces if p) > 3
    list(r.stream("Once upon a time", max_new_tokens=10))
    assert len(r.last.ids) == 10


def test_sampling_is_reproducible_and_top_k_1_is_greedy(converted):
    r = Runner(converted["reauthored"], tokenizer=converted["hf"])
    greedy = r.generate("Once upon a time", 8).ids
    a = r.generate("Once upon a time", 8, sampling="top_p", top_p=0.95, temperature=1.5, seed=3).ids
    b = r.generate("Once upon a time", 8, sampling="top_p", top_p=0.95, temperature=1.5, seed=3).ids
    c = r.generate("Once upon a time", 8, sampling="top_p", top_p=0.95, temperature=1.5, seed=4).ids
    assert a == b and a != c
    assert r.generate("Once upon a time", 8, sampling="top_k", top_k=1, seed=9).ids == greedy


@pytest.mark.parametrize("style", ["reauthored", "export_hf"])
def test_the_xnnpack_weight_cache_gives_the_same_logits_and_is_removed_on_close(style, converted):
    """weight_cache=True (the default) gives XNNPACK a cache file in a private temp folder of
    this process's, not beside the model; the logits equal those without it, bit for bit; the
    folder is gone on close(), and when an unclosed model is collected."""
    import gc
    import tempfile

    import numpy as np

    from workbench.runtime import SignatureModel

    path = converted[style]
    beside = sorted(os.listdir(path.parent))
    plain, cached = SignatureModel(path, weight_cache=False), SignatureModel(path)
    assert plain.weight_cache is None
    folder = cached.weight_cache.parent
    assert cached.weight_cache.stat().st_size > 0 and folder.parent == Path(tempfile.gettempdir())
    assert folder.name.startswith(f"ewb-xnn-{os.getpid()}-") and (folder.stat().st_mode & 0o777) == 0o700
    ids = [1 + (7 * i) % 50 for i in range(plain.prefills[-1])]
    got = []
    for sm in (plain, cached):
        sm.prefill(ids)
        got.append([sm.decode(t, len(ids) + i) for i, t in enumerate([5, 9, 11])])
    assert all(np.array_equal(a, b) for a, b in zip(*got)) and np.abs(got[0][0]).max() > 0
    cached.close()
    plain.close()
    assert not folder.exists() and sorted(os.listdir(path.parent)) == beside
    dropped = SignatureModel(path).weight_cache.parent
    gc.collect()
    assert not dropped.exists()


def test_generation_stops_at_eos_and_on_request(converted):
    r = Runner(converted["reauthored"], tokenizer=converted["hf"])
    first = r.generate("Once upon a time", 3).ids
    r.eos = {first[1]}
    g = r.generate("Once upon a time", 8)
    assert g.stop_reason == "eos" and g.ids == first[:1]
    r.eos = set()
    seen = []
    for piece in r.stream("Once upon a time", max_new_tokens=20):
        seen.append(piece)
        if len(seen) == 2:
            threading.Thread(target=r.stop).start()
    assert r.last.stop_reason == "stopped" and len(r.last.ids) < 20


def test_bad_inputs_are_named(converted, tmp_path, samples):
    bogus = tmp_path / "not-a-model.tflite"
    bogus.write_bytes(b"\0" * 64)
    with pytest.raises(RunnerError, match="not a LiteRT model"):
        Runner(bogus)
    with pytest.raises(RunnerError, match="no model file"):
        Runner(tmp_path / "missing.tflite")
    # a file cut short (a copy interrupted): refused, where the runtime alone would crash the process
    data = converted["reauthored"].read_bytes()
    for cut in (0.1, 0.9, 0.99):
        (tmp_path / "cut.tflite").write_bytes(data[: int(len(data) * cut)])
        with pytest.raises(RunnerError, match="not a LiteRT model") as e:
            Runner(tmp_path / "cut.tflite")
        assert "\n" not in e.value.message
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(converted["reauthored"]))
    model.signatureDefs = [s for s in model.signatureDefs if s.signatureKey != b"decode"]
    flatbuffer_utils.write_model(model, str(tmp_path / "nodecode.tflite"))
    with pytest.raises(RunnerError, match="no prefill_N and decode signatures"):
        Runner(tmp_path / "nodecode.tflite")
    # a decode signature with an input the runner does not feed (as a ring-buffer cache's masks)
    import copy

    model = flatbuffer_utils.read_model(str(converted["reauthored"]))
    decode = next(s for s in model.signatureDefs if s.signatureKey == b"decode")
    graph = model.subgraphs[decode.subgraphIndex]
    pos = next(t for t in decode.inputs if t.name == b"input_pos")
    tensor = copy.deepcopy(graph.tensors[pos.tensorIndex])  # a new, unused graph input
    tensor.name, tensor.buffer = b"local_mask", 0
    graph.tensors.append(tensor)
    graph.inputs = list(graph.inputs) + [len(graph.tensors) - 1]
    extra = copy.deepcopy(pos)
    extra.name, extra.tensorIndex = b"local_mask", len(graph.tensors) - 1
    decode.inputs.append(extra)
    flatbuffer_utils.write_model(model, str(tmp_path / "extra.tflite"))
    with pytest.raises(RunnerError, match="decode signature takes input_pos, local_mask, tokens"):
        Runner(tmp_path / "extra.tflite")
    # a tokenizer with more tokens than the model's vocabulary
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(samples["qwen2"])
    tok.add_tokens([f"<extra_{i}>" for i in range(9)])
    tok.save_pretrained(tmp_path / "big-tokenizer")
    with pytest.raises(RunnerError, match="521 tokens but the model's vocabulary is 512"):
        Runner(converted["reauthored"], tokenizer=tmp_path / "big-tokenizer")
    r = Runner(converted["reauthored"], tokenizer=converted["hf"])  # kv 32
    with pytest.raises(RunnerError, match="KV cache holds 32"):
        r.generate(LONG + LONG, 4)
    with pytest.raises(RunnerError, match="exceed the model's KV cache of 32") as e:
        r.generate("Once upon a time", 40)
    assert "at most" in e.value.hint
    with pytest.raises(RunnerError, match="unknown sampling"):
        r.generate("Once", 4, sampling="beam")
    with pytest.raises(RunnerError, match="no chat template"):
        r.generate("Once", 4, chat=True)


def test_signature_inputs_are_checked(converted):
    """The runtime's buffers take any bytes: a missing input or a wrong dtype is refused instead."""
    import numpy as np

    from workbench.runtime import SignatureModel

    sm = SignatureModel(converted["reauthored"])
    with pytest.raises(ValueError, match="decode takes"):
        sm.run("decode", tokens=np.array([[1]], dtype=np.int32))
    with pytest.raises(ValueError, match="tokens is int32"):
        sm.run("decode", tokens=np.array([[1.0]], dtype=np.float32), input_pos=np.array([0], dtype=np.int32))
    assert sm.run("decode", tokens=np.array([[1]], dtype=np.int32), input_pos=np.array([0], dtype=np.int32))["logits"].shape[-1] == sm.vocab
    sm.close()


def test_one_generation_at_a_time(converted):
    """The model holds one KV cache: a second generation while one streams is refused, not mixed in."""
    r = Runner(converted["reauthored"], tokenizer=converted["hf"])
    first = r.stream("Once upon a time", max_new_tokens=8, ids=list(range(1, 5)))
    next(first)
    with pytest.raises(RunnerError, match="already generating"):
        r.generate("Once upon a time", 4)
    first.close()  # an abandoned stream lets go
    assert len(r.generate("Once upon a time", 4).ids) == 4


def test_run_panel_streams_and_compares(converted, reauthored_model):
    from workbench_widgets import RunPanel

    panel = RunPanel(Runner(converted["export_hf"], tokenizer=converted["hf"]), hf_dir=converted["hf"],
                     model=reauthored_model)
    assert panel.temperature.disabled and panel.top_p.disabled  # greedy
    panel.sampling.value = "top_p"
    assert not panel.top_p.disabled and panel.top_k.disabled and not panel.temperature.disabled
    panel.sampling.value = "greedy"
    panel.max_new.value = 10
    gate, real = threading.Event(), panel.runner.stream

    def held(*args, **kwargs):  # the generation waits for the gate: the panel is seen mid-run
        gate.wait(30)
        yield from real(*args, **kwargs)

    panel.runner.stream = held
    panel.generate_button.click()
    assert panel.state == "running" and panel.generate_button.disabled and not panel.stop_button.disabled
    assert panel.side_button.disabled  # one generation at a time: no side by side meanwhile
    gate.set()
    g = panel.wait(60)
    panel.runner.stream = real
    assert panel.state == "done" and g is not None and len(g.ids) == 10
    assert not panel.side_button.disabled and not panel.generate_button.disabled
    assert panel.text == g.text and "decode" in panel.speed.value and "Once upon a time" in panel.output.value
    panel.side_button.click()
    assert "same tokens" in panel.side_html.value and "transformers" in panel.side_html.value
    panel.max_new.value = 64  # prompt + 64 > kv 64: an error in the panel, the kernel fine
    panel.generate()
    panel.wait(60)
    assert panel.state == "failed" and "KV cache" in panel.output.value


def test_cli_run_json_and_project(converted, llama_project, capsys):
    args = ["run", str(converted["reauthored"]), "--tokenizer", str(converted["hf"]), "--prompt", "Once upon a time",
            "--max-new", "6", "--json"]
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"text", "prefill_tok_s", "decode_tok_s", "ttft_s", "peak_rss_bytes"} <= set(out) and len(out["ids"]) == 6
    assert cli.main(["run", "--project", str(llama_project), "--prompt", "Once upon a time", "--max-new", "6",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ids"] == out["ids"]
    assert cli.main(["run", str(converted["reauthored"]), "--tokenizer", str(converted["hf"]), "--prompt", "Once",
                     "--max-new", "100", "--json"]) == cli.EXIT_ERROR
    assert "KV cache" in json.loads(capsys.readouterr().out)["error"]


def test_a_default_layout_file_is_refused_for_litert_lm_before_anything_is_written(converted, tmp_path, monkeypatch):
    """LiteRT-LM reads K as [1, heads, kv, dim]: on litert-torch's default layout [1, kv, heads,
    dim] it takes the KV-head count (2) for the context and fails at prefill. bundle() refuses
    such a file up front; a bundle of one made anyway fails its check with LiteRT-LM's reason."""
    from workbench import bundle as bundle_mod
    from workbench.bundle import BundleError, bundle

    if converted["other_layout"] != "default":
        pytest.skip("the default KV layout is litert-torch's own here")
    tfl, hf = converted["reauthored_other_layout"], converted["hf"]
    with pytest.raises(BundleError, match="litert-torch's default layout") as e:
        bundle(tfl, tokenizer=hf, out=tmp_path / "default.litertlm")
    assert "[1, 64, 2, 16]" in e.value.message and "2 KV heads" in e.value.message
    assert "kv_layout='transposed'" in e.value.hint and "--kv-layout transposed" in e.value.cli_hint
    assert os.listdir(tmp_path) == []
    assert bundle(tfl, tokenizer=hf, format="task", out=tmp_path / "default.task").check["ok"]  # MediaPipe: not run

    real = bundle_mod._model_facts
    monkeypatch.setattr(bundle_mod, "_model_facts", lambda p: {**real(p), "kv_layout": "transposed"})
    with pytest.raises(BundleError, match="fails its check") as e:
        bundle(tfl, tokenizer=hf, out=tmp_path / "default.litertlm")
    assert "litert-torch's default layout" in e.value.message
    assert "Input token ids are too long" in e.value.message  # LiteRT-LM's own words, from its log
    assert os.listdir(tmp_path) == ["default.task"]


def test_engine_choice_is_checked(converted):
    with pytest.raises(RunnerError, match="unknown engine 'tflite'"):
        Runner(converted["reauthored"], engine="tflite")
    with pytest.raises(RunnerError, match="runs a .litertlm bundle") as e:
        Runner(converted["reauthored"], engine="litert-lm")
    assert "bundle" in e.value.hint and e.value.cli_hint.startswith("edge-workbench bundle")
