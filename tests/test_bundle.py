"""Bundles: a converted model and its tokenizer in a LiteRT-LM (.litertlm) or MediaPipe (.task)
file, reopened and checked; refusals; atomic output (nothing finished-looking after a failure)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from workbench.bundle import BundleError, bundle, check_bundle
from workbench.errors import WorkbenchError


@pytest.fixture(scope="session")
def tflites(samples, tmp_path_factory):
    """One int8 conversion per sample (prefill 8, kv 64), made on first use and shared."""
    cache: dict = {}

    def get(name: str) -> Path:
        if name not in cache:
            from workbench import Blueprint
            from workbench.convert import convert
            from workbench.mapping import Mapping

            d = samples[name]
            m = Mapping.propose(Blueprint.from_hf(d), d)
            out = tmp_path_factory.mktemp(f"bundle-{name}")
            cache[name] = convert(m, recipe="dynamic_int8", prefill=[8], kv=64, out=out).result().path
        return cache[name]

    return get


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_litertlm_bundle_of_llama_reopens_decodes_and_round_trips(tflites, samples, tmp_path):
    tfl = tflites("llama")
    res = bundle(tfl, tokenizer=samples["llama"], format="litertlm", out=tmp_path / "llama.litertlm")
    assert res.path == tmp_path / "llama.litertlm" and res.format == "litertlm"
    assert res.size_bytes == res.path.stat().st_size > tfl.stat().st_size
    assert os.listdir(tmp_path) == ["llama.litertlm"]  # no partial folder, no builder workdir

    c = res.check
    assert c["ok"] and c["problems"] == []
    assert c["entries"] == ["LlmMetadataProto", "HF_Tokenizer_Zlib", "TFLiteModel"]
    assert c["model_loads"] and c["decode_finite"] and c["vocab"] == 512 and c["logits_shape"] == [512]
    assert c["model_sha256"] == _sha256(tfl)  # the very model, byte for byte
    assert c["signatures"] == ["prefill_8", "decode"] and c["kv_cache"] == 64
    assert c["tokenizer_kind"] == "hf_tokenizer_json" and c["tokenizer_vocab"] == 512
    assert c["tokenizer_roundtrip"] and c["tokenizer_text"] == "Once upon a time"
    assert c["tokenizer_ids"][0] == 1 and len(c["tokenizer_ids"]) > 2  # <s> from tokenizer.json, then the text
    assert c["start_token_ids"] == [1] and c["stop_token_ids"] == [2] and c["context_length"] == 64
    assert c["checked_ids"] == c["tokenizer_ids"][:6]

    # LiteRT-LM itself (a child process) loads it, prefills the same ids, and its greedy text is
    # the Runner's 8 tokens on the model inside, read by LiteRT-LM's own detokenizer
    lm = c["litert_lm"]
    assert lm["ran"] and lm["loads"] and lm["error"] is None and lm["notes"] == []
    assert lm["prompt_ids"] == c["tokenizer_ids"] and len(lm["runner_ids"]) == 8
    assert lm["same"] and lm["text"] == lm["runner_text"] and lm["first_diff"] is None and lm["text"]
    assert c["kv_layout"] == "transposed" and c["kv_shape"] == [1, 2, 64, 16]

    # reopened from disk it checks the same; the result serializes as documented
    assert check_bundle(res.path) == c
    assert check_bundle(res.path, format="litertlm") == c
    assert os.listdir(tmp_path) == ["llama.litertlm"]  # LiteRT-LM's weight cache went elsewhere
    data = json.loads(json.dumps(res.to_json()))
    assert set(data) == {"path", "size_bytes", "format", "check"} and data["path"] == str(res.path)

    # litert-lm-builder's own reader sees the metadata we meant
    from litert_lm_builder import litertlm_peek

    text = io.StringIO()
    litertlm_peek.peek_litertlm_file(str(res.path), None, text)
    meta = text.getvalue()
    assert "max_num_tokens: 64" in meta and "supports_thinking: false" in meta
    assert "supports_function_calling: false" in meta


def test_task_bundle_of_llama_is_a_zip_mediapipe_reads(tflites, samples, tmp_path):
    tfl = tflites("llama")
    res = bundle(tfl, tokenizer=samples["llama"], format="task", out=tmp_path / "llama.task")
    assert os.listdir(tmp_path) == ["llama.task"] and res.size_bytes == res.path.stat().st_size
    with zipfile.ZipFile(res.path) as zf:
        assert zf.namelist() == ["TF_LITE_PREFILL_DECODE", "TOKENIZER_MODEL", "METADATA"]
        assert zf.read("TF_LITE_PREFILL_DECODE") == tfl.read_bytes()
        assert zf.read("TOKENIZER_MODEL") == (samples["llama"] / "tokenizer.model").read_bytes()

    c = res.check
    assert c["ok"] and c["entries"] == ["TF_LITE_PREFILL_DECODE", "TOKENIZER_MODEL", "METADATA"]
    assert c["model_loads"] and c["decode_finite"] and c["vocab"] == 512 and c["logits_shape"] == [512]
    assert c["tokenizer_kind"] == "sentencepiece" and c["tokenizer_roundtrip"]
    assert c["start_token"] == "<s>" and c["stop_tokens"] == ["</s>"]
    assert c["start_token_ids"] == [1] and c["stop_token_ids"] == [2]
    assert c["checked_ids"][0] == 1  # the start token first, as the runtime feeds it
    assert check_bundle(res.path) == c == check_bundle(res.path, format="task")


def test_qwen2_has_no_tokenizer_model_so_task_is_refused_but_litertlm_works(tflites, samples, tmp_path):
    tfl = tflites("qwen2")
    with pytest.raises(BundleError) as e:
        bundle(tfl, tokenizer=samples["qwen2"], format="task", out=tmp_path / "qwen2.task")
    assert "tokenizer.model" in e.value.message and "tokenizer.json" in e.value.message
    assert "litertlm" in e.value.hint and isinstance(e.value, WorkbenchError)
    assert os.listdir(tmp_path) == []

    res = bundle(tfl, tokenizer=samples["qwen2"], format="litertlm", out=tmp_path / "qwen2.litertlm")
    c = res.check
    assert c["ok"] and c["tokenizer_kind"] == "hf_tokenizer_json" and c["tokenizer_roundtrip"]
    assert c["decode_finite"] and c["model_sha256"] == _sha256(tfl)
    assert c["litert_lm"]["same"] and c["litert_lm"]["prompt_ids"][0] != 509  # no start token prefilled
    # Qwen declares <|endoftext|> (509) as BOS but never prepends it: a stop token, no start token
    assert c["stop_token_ids"] == [509] and c["start_token_ids"] == []
    assert 509 not in c["checked_ids"]
    assert os.listdir(tmp_path) == ["qwen2.litertlm"]


def test_stop_token_list_context_length_and_default_out(tflites, samples, tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(samples["llama"] / f, tok / f)
    (tok / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 0, 2]}))
    tfl = tmp_path / "m.tflite"
    shutil.copy(tflites("llama"), tfl)

    res = bundle(tfl, tokenizer=tok, context_length=32)  # format and out by default
    assert res.path == tmp_path / "m.litertlm" and res.format == "litertlm"
    assert res.check["stop_token_ids"] == [2, 0] and res.check["context_length"] == 32
    out_dir = tmp_path / "bundles"
    out_dir.mkdir()
    assert bundle(tfl, tokenizer=tok, out=out_dir).path == out_dir / "m.litertlm"  # a folder: named after the model

    with pytest.raises(BundleError, match="exceeds the model's KV cache"):
        bundle(tfl, tokenizer=tok, context_length=65, out=tmp_path / "x.litertlm")
    with pytest.raises(BundleError, match="no context length"):
        bundle(tfl, tokenizer=samples["llama"], format="task", context_length=32, out=tmp_path / "x.task")
    (tok / "generation_config.json").write_text(json.dumps({"bos_token_id": 1}))
    (tok / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    with pytest.raises(BundleError, match="no stop token") as e:
        bundle(tfl, tokenizer=tok, out=tmp_path / "x.litertlm")
    assert "eos_token_id" in e.value.hint
    assert sorted(os.listdir(tmp_path)) == ["bundles", "m.litertlm", "m.tflite", "tok"]


@pytest.mark.parametrize("fmt,module,function", [
    ("litertlm", "litert_torch.generative.utilities.litertlm_builder", "build_litertlm"),
    ("task", "mediapipe.tasks.python.genai.bundler", "create_bundle"),
])
def test_a_failing_bundler_leaves_nothing_and_keeps_the_old_bundle(fmt, module, function, tflites, samples,
                                                                   tmp_path, monkeypatch):
    import importlib

    from workbench._quiet import quiet

    out = tmp_path / f"llama.{fmt}"
    out.write_bytes(b"the previous, finished bundle")
    seen = {}

    def half_written_then_fail(*args, **kwargs):
        seen["args"] = (args, kwargs)
        folder = Path(kwargs.get("output_path") or Path(args[0].output_filename).parent)
        (folder / f"llama.{fmt}").write_bytes(b"half a bundle")
        raise RuntimeError("disk on fire")

    with quiet():
        target = importlib.import_module(module)
    monkeypatch.setattr(target, function, half_written_then_fail)
    with pytest.raises(BundleError, match="disk on fire"):
        bundle(tflites("llama"), tokenizer=samples["llama"], format=fmt, out=out)
    assert seen and os.listdir(tmp_path) == [out.name]
    assert out.read_bytes() == b"the previous, finished bundle"


def test_a_bundle_that_fails_its_check_is_not_written(tflites, samples, tmp_path, monkeypatch):
    from workbench import bundle as bundle_mod

    monkeypatch.setattr(bundle_mod._Tokenizer, "decode", lambda self, ids: "Once upon a tim")
    with pytest.raises(BundleError, match="does not round-trip") as e:
        bundle(tflites("llama"), tokenizer=samples["llama"], out=tmp_path / "llama.litertlm")
    assert "fails its check" in e.value.message and os.listdir(tmp_path) == []


def test_bad_inputs_are_refused_before_anything_is_written(tflites, samples, tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils

    tfl, llama = tflites("llama"), samples["llama"]
    work = tmp_path / "work"
    work.mkdir()

    def refused(match: str, *args, **kwargs) -> BundleError:
        with pytest.raises(BundleError, match=match) as e:
            bundle(*args, **kwargs)
        assert e.value.hint
        return e.value

    refused("no model file", work / "missing.tflite", llama, out=work / "a.litertlm")
    (work / "junk.tflite").write_bytes(b"not a flatbuffer at all")
    refused("not a TFLite model", work / "junk.tflite", llama, out=work / "a.litertlm")
    # the converted model with its signatures stripped: none at all, and prefill without decode
    model = flatbuffer_utils.read_model(str(tfl))
    model.signatureDefs = [s for s in model.signatureDefs if s.signatureKey != b"decode"]
    flatbuffer_utils.write_model(model, str(work / "nodecode.tflite"))
    model.signatureDefs = []
    flatbuffer_utils.write_model(model, str(work / "nosig.tflite"))
    for name in ("nodecode.tflite", "nosig.tflite"):
        e = refused("no prefill_N and decode signatures", work / name, llama, out=work / "a.litertlm")
        assert "convert" in e.hint

    refused("does not exist", tfl, work / "no-such-folder", out=work / "a.litertlm")
    refused("needs tokenizer.json or tokenizer.model", tfl, work, out=work / "a.litertlm")
    refused("unknown bundle format", tfl, llama, format="gguf", out=work / "a.gguf")
    refused("output folder .* does not exist", tfl, llama, out=work / "missing" / "a.litertlm")
    (work / "a-file").write_text("x")
    refused("output folder .* is not a folder", tfl, llama, out=work / "a-file" / "a.litertlm")
    refused("names a .task file", tfl, llama, format="litertlm", out=work / "a.task")
    refused("is the model file itself", tfl, llama, out=tfl)
    assert sorted(os.listdir(work)) == ["a-file", "junk.tflite", "nodecode.tflite", "nosig.tflite"]


def test_check_bundle_refuses_what_is_not_a_bundle_and_reports_what_is_missing(tflites, samples, tmp_path):
    with pytest.raises(BundleError, match="no bundle at"):
        check_bundle(tmp_path / "missing.litertlm")
    (tmp_path / "junk.litertlm").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="not a litertlm or task bundle"):
        check_bundle(tmp_path / "junk.litertlm")
    res = bundle(tflites("llama"), tokenizer=samples["llama"], out=tmp_path / "llama.litertlm")
    with pytest.raises(BundleError, match="not a task bundle"):
        check_bundle(res.path, format="task")

    # a zip with the tokenizer but no model: reported, not raised
    with zipfile.ZipFile(tmp_path / "partial.task", "w") as zf:
        zf.writestr("TOKENIZER_MODEL", (samples["llama"] / "tokenizer.model").read_bytes())
    c = check_bundle(tmp_path / "partial.task")
    assert not c["ok"] and not c["model_loads"] and c["tokenizer_roundtrip"]
    assert any("TF_LITE_PREFILL_DECODE" in p for p in c["problems"])
    assert any("METADATA" in p for p in c["problems"])


def test_a_sentencepiece_only_folder_bundles_as_litertlm_with_its_tokenizer_model(tflites, samples, tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    for f in ("tokenizer.model", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(samples["llama"] / f, tok / f)
    res = bundle(tflites("llama"), tokenizer=tok, out=tmp_path / "sp.litertlm")
    c = res.check
    assert c["ok"] and c["entries"] == ["LlmMetadataProto", "SP_Tokenizer", "TFLiteModel"]
    assert c["tokenizer_kind"] == "sentencepiece" and c["tokenizer_roundtrip"]
    assert c["start_token_ids"] == [1] and c["stop_token_ids"] == [2]  # Llama's SentencePiece adds BOS by default


def test_cli_bundle_json_and_project(tflites, samples, llama_project, tmp_path, capsys):
    import json

    from tests.conftest import copy_project
    from workbench import cli

    out = tmp_path / "llama.task"
    assert cli.main(["bundle", str(tflites("llama")), "--tokenizer", str(samples["llama"]), "--format", "task",
                     "--out", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) >= {"path", "size_bytes", "format", "check"} and got["format"] == "task"
    assert got["check"]["decode_finite"] and got["check"]["tokenizer_roundtrip"] and out.is_file()
    project = copy_project(llama_project, tmp_path)
    run = ["run", "--project", str(project), "--engine", "litert-lm", "--prompt", "Once upon a time", "--max-new", "6",
           "--json"]
    assert cli.main(run) == cli.EXIT_ERROR  # not bundled yet: the bundle command is the fix
    err = json.loads(capsys.readouterr().out)
    assert "no LiteRT-LM bundle" in err["error"] and "edge-workbench bundle --project" in err["hint"]
    assert cli.main(["bundle", "--project", str(project), "--format", "litertlm", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["path"] == str(project / "bundles" / "fp32.litertlm")
    # the fp32 sample (trained briefly on corpus.txt) writes words: LiteRT-LM streams all 8 of
    # the Runner's tokens (text that is not valid UTF-8: test_text_that_is_not_utf8_...)
    lm = got["check"]["litert_lm"]
    assert got["check"]["ok"] and lm["loads"] and lm["same"] and lm["error"] is None and lm["notes"] == []
    assert lm["text"] == lm["runner_text"] == ".\nThe Every " and lm["refused_tokens"] == []
    # run in LiteRT-LM: the same text, 6 tokens of it
    assert cli.main(run) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["engine"] == "litert-lm" and got["model"].endswith("fp32.litertlm")
    assert got["text"] == ".\nThe E" and got["stop_reason"] == "max_new_tokens"
    record = json.loads((project / "bundles" / "fp32.litertlm.json").read_text())
    assert record["conversion"] == "fp32" and record["inputs"]["mapping"]
    assert cli.main(["bundle", str(tflites("qwen2")), "--tokenizer", str(samples["qwen2"]), "--format", "task",
                     "--json"]) == cli.EXIT_ERROR
    assert "tokenizer.model" in json.loads(capsys.readouterr().out)["error"]


def test_text_that_is_not_utf8_is_named_by_the_check_and_stops_a_litert_lm_run(tflites, samples, tmp_path,
                                                                                capsys):
    """LiteRT-LM's streaming detokenizer stops ("Stable text shrunk") on a run of byte tokens
    that is not valid UTF-8 (the ByteFallback decoder turns the whole run into U+FFFD, so the
    text shrinks): the check names the refused token and passes (the bundle runs), and a run
    stops with `invalid_utf8`. The sample writes words, so a tokenizer is made that reads its
    greedy tokens as such bytes: the pieces of its 2nd to 4th tokens trade ids with <0x41>
    ("A"), <0x42> ("B") and <0x8A> (a continuation byte with no lead byte). LiteRT-LM holds the
    last token's text back, so it has streamed ".AB" minus one token when the run shrinks."""
    from workbench import cli
    from workbench.runner import Runner

    tfl, src = tflites("llama"), samples["llama"]
    ref = Runner(tfl, tokenizer=src).generate("Once upon a time", 8)
    first, second, third, fourth = ref.ids[:4]
    tok = tmp_path / "tok"
    tok.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(src / f, tok / f)
    data = json.loads((tok / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    piece = {i: p for p, i in vocab.items()}
    swaps = {second: "<0x41>", third: "<0x42>", fourth: "<0x8A>"}
    byte_ids = [vocab[b] for b in swaps.values()]
    # seven different ids, none of the swapped ones in the prompt (its ids stay the same)
    assert len({first, *swaps, *byte_ids}) == 7 and not {*swaps, *byte_ids} & set(ref.prompt_ids)
    for i, byte in swaps.items():
        vocab[piece[i]], vocab[byte] = vocab[byte], i
    (tok / "tokenizer.json").write_text(json.dumps(data))

    res = bundle(tfl, tokenizer=tok, out=tmp_path / "bytes.litertlm")
    lm = res.check["litert_lm"]
    assert res.check["ok"] and lm["loads"] and lm["prompt_ids"] == ref.prompt_ids and lm["runner_ids"] == ref.ids
    assert not lm["same"] and "Stable text shrunk" in lm["error"] and lm["refused_tokens"] == [fourth]
    assert lm["notes"][0].startswith("LiteRT-LM stopped after 2 of the Runner's tokens")
    assert "not valid UTF-8" in lm["notes"][0] and f"(id {fourth})" in lm["notes"][0]
    # "A", "B" and the byte after them: U+FFFD each, once the byte comes
    assert lm["text"].endswith("A") and lm["runner_text"].startswith(lm["text"][:-1] + "\ufffd" * 3)
    # run in LiteRT-LM: the two tokens it streamed, then the detokenizer's stop, as a stop reason
    assert cli.main(["run", str(res.path), "--engine", "litert-lm", "--prompt", "Once upon a time", "--max-new", "8",
                     "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["text"] == lm["text"] and got["stop_reason"] == "invalid_utf8" and got["ids"][0] == first


def _corrupt_model_section(path: Path) -> None:
    """Overwrites the first bytes of the bundle's TFLite model (its flatbuffer header)."""
    from litert_lm_builder import litertlm_core, litertlm_peek

    header = litertlm_peek.read_litertlm_header(str(path), io.StringIO())
    sections = header.SectionMetadata()
    begin = next(sections.Objects(i).BeginOffset() for i in range(sections.ObjectsLength())
                 if litertlm_core.any_section_data_type_to_string(sections.Objects(i).DataType()) == "TFLiteModel")
    with open(path, "r+b") as f:
        f.seek(begin)
        f.write(b"\xff" * 64)


def test_a_corrupted_bundle_is_refused_with_litert_lms_own_reason(tflites, samples, tmp_path, monkeypatch):
    from workbench import bundle as bundle_mod

    res = bundle(tflites("llama"), tokenizer=samples["llama"], out=tmp_path / "good.litertlm")
    bad = tmp_path / "bad.litertlm"
    shutil.copy(res.path, bad)
    _corrupt_model_section(bad)
    c = check_bundle(bad)
    assert not c["ok"] and not c["litert_lm"]["loads"]
    assert any(p.startswith("LiteRT-LM does not load the bundle") and "Invalid flatbuffer" in p
               for p in c["problems"]), c["problems"]

    # bundle() that builds such a file: refused with LiteRT-LM's reason, nothing renamed into place
    real = bundle_mod._build_litertlm

    def build_then_corrupt(*args, **kwargs):
        built = real(*args, **kwargs)
        _corrupt_model_section(built)
        return built

    monkeypatch.setattr(bundle_mod, "_build_litertlm", build_then_corrupt)
    out = tmp_path / "out"
    out.mkdir()
    (out / "llama.litertlm").write_bytes(b"the previous, finished bundle")
    with pytest.raises(BundleError, match="fails its check") as e:
        bundle(tflites("llama"), tokenizer=samples["llama"], out=out / "llama.litertlm")
    assert "LiteRT-LM does not load the bundle" in e.value.message and "Invalid flatbuffer" in e.value.message
    assert os.listdir(out) == ["llama.litertlm"]
    assert (out / "llama.litertlm").read_bytes() == b"the previous, finished bundle"


def test_run_engine_litert_lm_generates_the_runners_greedy_text(tflites, samples, tmp_path, capsys):
    """`run --engine litert-lm` on the int8 sample's bundle: LiteRT-LM's greedy text is the
    Runner's tokens (ai-edge-litert, on the same .tflite) read by LiteRT-LM's detokenizer;
    the same speed fields; a .tflite is refused with the bundle command."""
    from workbench import cli
    from workbench.runner import Runner, RunnerError

    tfl, tok = tflites("llama"), samples["llama"]
    res = bundle(tfl, tokenizer=tok, out=tmp_path / "llama.litertlm")
    ref = Runner(tfl, tokenizer=tok).generate("Once upon a time", 12)
    assert cli.main(["run", str(res.path), "--engine", "litert-lm", "--prompt", "Once upon a time", "--max-new", "12",
                     "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["engine"] == "litert-lm" and got["prompt_ids"] == ref.prompt_ids
    assert got["text"] == ref.text and got["stop_reason"] == "max_new_tokens"
    assert got["ttft_s"] > 0 and got["prefill_tok_s"] > 0 and got["decode_tok_s"] > 0 and got["peak_rss_bytes"] > 0
    r = Runner(res.path, tokenizer=tok, engine="litert-lm")
    try:
        pieces = list(r.stream("Once upon a time", max_new_tokens=12))
        assert "".join(pieces) == r.last.text == r.lm.detokenize(ref.ids)  # the very tokens, as LiteRT-LM reads them
        assert r.last.ids[:5] == ref.ids[:5] and r.last.sampling["engine"] == "litert-lm"
        with pytest.raises(RunnerError, match="takes the prompt as text"):
            r.generate("Once", 4, chat=True)
    finally:
        r.close()
    assert os.listdir(tmp_path) == ["llama.litertlm"]

    assert cli.main(["run", str(tfl), "--tokenizer", str(tok), "--engine", "litert-lm", "--prompt", "x",
                     "--json"]) == cli.EXIT_ERROR
    err = json.loads(capsys.readouterr().out)
    assert "not one" in err["error"] and err["hint"].startswith("edge-workbench bundle")


def test_run_panel_switches_engine_and_shows_both_side_by_side(tflites, samples, tmp_path):
    from widgets.run import RunPanel
    from workbench.runner import Runner

    tfl, tok = tflites("llama"), samples["llama"]
    res = bundle(tfl, tokenizer=tok, out=tmp_path / "llama.litertlm")
    panel = RunPanel(Runner(tfl, tokenizer=tok), hf_dir=tok, bundle=res.path)
    assert panel.engine.options == ("ai-edge-litert", "litert-lm")
    panel.max_new.value = 8
    panel.generate()
    first = panel.wait(60)
    panel.engine.value = "litert-lm"
    assert panel.runner.engine == "litert-lm" and "LiteRT-LM" in panel.header.value
    assert panel.chat.disabled
    panel.generate()
    second = panel.wait(60)
    assert panel.state == "done" and second.text == first.text and panel.text == second.text
    assert "decode" in panel.speed.value and "max_new_tokens" in panel.speed.value
    side = panel.compare()
    assert set(side["ids"]) == {"litert-lm", "ai-edge-litert", "transformers"}
    assert side["ids"]["ai-edge-litert"] == first.ids and side["text"]["litert-lm"] == first.text
    assert "litert-lm" in panel.side_html.value and "ai-edge-litert" in panel.side_html.value
    panel.runner.close()
    # a runner without a bundle offers its own engine only
    assert RunPanel(Runner(tfl, tokenizer=tok)).engine.options == ("ai-edge-litert",)


def test_sweep_rows_can_be_timed_in_litert_lm(tflites, samples, tmp_path):
    """sweep(..., engine="litert-lm"): a row's file is bundled beside it (checked in LiteRT-LM)
    and timed in a LiteRT-LM session; an unknown engine is refused before anything runs."""
    from workbench.sweep import SweepError, _litert_lm_speed, prepare

    tfl = tmp_path / "row.tflite"
    shutil.copy(tflites("llama"), tfl)
    got = _litert_lm_speed(tfl, {"checkpoint": str(samples["llama"]), "threads": 2, "decode_steps": 16, "kv": 64})
    assert got["engine"] == "litert-lm" and got["bundle"] == "row.litertlm" and (tmp_path / "row.litertlm").is_file()
    assert got["decode_tok_s"] > 0 and got["prefill_tok_s"] > 0
    with pytest.raises(SweepError, match="unknown engine 'tflite'"):
        prepare(samples["llama"], ["none"], out=tmp_path / "sweep", engine="tflite")
    assert not (tmp_path / "sweep").exists()


def test_a_crash_in_litert_lm_is_an_error_not_a_dead_kernel(tflites, samples, tmp_path):
    """LiteRT-LM runs in a child process: if the native runtime dies (here: killed with SIGSEGV,
    as a crash would), the caller gets a LiteRtLmError naming the signal, and stays alive."""
    import signal

    from workbench.litert_lm import LiteRtLm, LiteRtLmError

    res = bundle(tflites("llama"), tokenizer=samples["llama"], out=tmp_path / "llama.litertlm")
    lm = LiteRtLm(res.path)
    assert lm.bos == 1 and lm.eos == [2] and lm.generate("Once upon a time", 4)["bench"]["decode_tokens"] == 4
    os.kill(lm.proc.pid, signal.SIGSEGV)
    with pytest.raises(LiteRtLmError, match="was killed by SIGSEGV while") as e:
        lm.generate("Once upon a time", 4)
    assert "llama.litertlm" in e.value.message and e.value.hint
    lm.close()
    assert not lm._tmp.exists()  # its temporary folder (log, weight cache) is gone


def test_stop_ends_a_litert_lm_generation_early_and_the_engine_runs_on(tflites, samples, tmp_path):
    """The Run panel's Stop (Runner.stop()) on engine litert-lm: a generation of as many tokens
    as the cache holds ends with stop reason "stopped" and (nearly) no tokens, the child is not
    left busy, and the next generations give the same greedy text as before the stop. The tiny
    sample decodes ~10,000 tok/s, faster than a stop can travel, so the child is paused
    (SIGSTOP) while the request and the stop are sent: the stop must not be lost though it
    reaches LiteRT-LM before its session exists, or during its prefill (where LiteRT-LM's
    cancel leaves a later decode without an answer: the hang this test once had, #22)."""
    import signal
    import threading

    from widgets.run import RunPanel
    from workbench.runner import Runner

    res = bundle(tflites("llama"), tokenizer=samples["llama"], out=tmp_path / "llama.litertlm")
    r = Runner(res.path, tokenizer=samples["llama"], engine="litert-lm")
    try:
        max_new = r.model.kv_len - len(r.lm.prompt_ids("Once upon a time"))
        before = r.generate("Once upon a time", max_new)
        assert before.stop_reason == "max_new_tokens" and len(before.text) > 20
        sent, send = threading.Event(), r.lm._send

        def pause_then_send(msg: dict) -> None:  # the child is paused just as a generation is asked for
            if msg["op"] == "generate":
                os.kill(r.lm.proc.pid, signal.SIGSTOP)
            send(msg)
            if msg["op"] == "generate":
                sent.set()

        r.lm._send = pause_then_send
        try:
            pieces: list = []
            worker = threading.Thread(target=lambda: pieces.extend(r.stream("Once upon a time", max_new)))
            worker.start()
            assert sent.wait(30)
            r.stop()
        finally:
            os.kill(r.lm.proc.pid, signal.SIGCONT)
        worker.join(30)
        assert not worker.is_alive()
        g = r.last
        assert g.stop_reason == "stopped" and len(g.ids) < max_new // 4, (g.stop_reason, len(g.ids))
        assert g.text == "".join(pieces) and before.text.startswith(g.text)
        assert not r.lm._busy and r.lm.proc.poll() is None
        r.lm._send = send
        after = r.generate("Once upon a time", max_new)
        assert after.stop_reason == "max_new_tokens" and after.text == before.text
        # the same through the panel's Stop button
        panel = RunPanel(r, hf_dir=samples["llama"], bundle=res.path)
        assert panel.runner.engine == "litert-lm"
        panel.max_new.value = max_new
        r.lm._send = pause_then_send
        sent.clear()
        try:
            panel.generate()
            assert sent.wait(30)
            panel.stop_button.click()
        finally:
            os.kill(r.lm.proc.pid, signal.SIGCONT)
        g = panel.wait(30)
        r.lm._send = send
        assert panel.state == "done" and g.stop_reason == "stopped" and "stopped" in panel.speed.value
        panel.generate()
        assert panel.wait(30).text == before.text
    finally:
        r.close()
