"""Bundling: a converted .tflite and its tokenizer in one file an on-device runtime loads.

    res = bundle("out/model.tflite", tokenizer="sample_models/llama-tiny", format="litertlm",
                 out="out/model.litertlm")
    res.check           # the bundle reopened: its model decodes, its tokenizer round-trips,
                        # and (litertlm) LiteRT-LM runs it to the Runner's greedy text
    check_bundle("out/model.litertlm")   # the same check on any bundle

Two formats, each written by its own library:
- `litertlm`: LiteRT-LM, through litert-torch's `build_litertlm` (a tokenizer.json, or a
  SentencePiece tokenizer.model when there is no tokenizer.json; start/stop token ids;
  the context length).
- `task`: MediaPipe LLM Inference, through `mediapipe.tasks.python.genai.bundler` (a zip
  of the model, a SentencePiece tokenizer.model and a metadata proto; start/stop tokens as
  strings). MediaPipe takes no other tokenizer.

Start and stop tokens come from the tokenizer folder: generation_config.json's
`bos_token_id` / `eos_token_id` (an int or a list), then config.json's, then
tokenizer_config.json's `bos_token` / `eos_token`.

A `.litertlm` is also run in LiteRT-LM, the on-device runtime (`workbench.litert_lm`, a child
process): it must load, prefill `CHECK_TEXT` and decode greedily to the text the Runner's
tokens give on the model inside; a failure is a problem carrying LiteRT-LM's own reason. A
model whose KV cache is in litert-torch's default layout is refused before anything is built
(LiteRT-LM reads that cache's head axis as the context length).

The output is atomic: the bundle is built and checked in a hidden `.NAME.partial-XXXXXXXX`
folder beside `out` and renamed onto `out` only when its check passes; on any failure the
folder is removed and an existing `out` is left as it was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from workbench.errors import WorkbenchError
from workbench.hub import resolve as resolve_hub

FORMATS = ("litertlm", "task")
SUFFIXES = {"litertlm": ".litertlm", "task": ".task"}
CHECK_TEXT = "Once upon a time"
CHECK_TOKENS = 6  # token ids run through the model: prefill all but the last, decode the last
LM_CHECK_TOKENS = 8  # greedy tokens LiteRT-LM decodes in the check, compared with the Runner's
LITERTLM_MAGIC = b"LITERTLM"
# MediaPipe's .task zip entries (mediapipe/tasks/python/genai/bundler/llm_bundler.py)
TASK_MODEL, TASK_TOKENIZER, TASK_METADATA = "TF_LITE_PREFILL_DECODE", "TOKENIZER_MODEL", "METADATA"
# field numbers of MediaPipe's LlmParameters proto that its bundler fills (its Python
# package ships no _pb2 for it): repeated string stop_tokens = 5, string start_token = 6
_TASK_STOP_FIELD, _TASK_START_FIELD = 5, 6
_KIND_LIB = {"sentencepiece": "sentencepiece", "hf_tokenizer_json": "tokenizers"}  # who loads each tokenizer


class BundleError(WorkbenchError):
    """A bundle that was refused, failed to build, or does not pass its check."""


@dataclasses.dataclass(frozen=True)
class BundleResult:
    """A written bundle: where, how big, which format, and its check (see `check_bundle`)."""

    path: Path
    size_bytes: int
    format: str
    check: dict

    def to_json(self) -> dict:
        return {"path": str(self.path), "size_bytes": self.size_bytes, "format": self.format, "check": self.check}

    def __repr__(self) -> str:
        c = self.check
        lm = c.get("litert_lm")
        ran = f", LiteRT-LM same greedy text {lm.get('same')}" if lm else ""
        return (f"BundleResult({self.format}: {self.path}, {self.size_bytes:,} bytes, decode finite "
                f"{c.get('decode_finite')}, tokenizer round-trip {c.get('tokenizer_roundtrip')}{ran})")

    def _repr_html_(self) -> str:
        import html

        c = self.check
        model = f"loads {c.get('model_loads')}, decode finite {c.get('decode_finite')}, vocab {c.get('vocab')}"
        rows = [("path", self.path), ("format", self.format), ("size", f"{self.size_bytes:,} bytes"),
                ("entries", ", ".join(c.get("entries", []))), ("model", model),
                ("tokenizer", f"{c.get('tokenizer_kind')}, round-trip {c.get('tokenizer_roundtrip')}"),
                ("LiteRT-LM", _lm_summary(c.get("litert_lm"))),
                ("problems", "; ".join(c.get("problems", [])) or "none")]
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        return f"<table>{body}</table>"


def _lm_summary(lm: Optional[dict]) -> str:
    if not lm:
        return "not run (a .task bundle: MediaPipe's runtime is not installable here)"
    if not lm.get("loads"):
        return f"does not load: {lm.get('error')}"
    if lm.get("same"):
        return f"greedy text equals the Runner's ({len(lm.get('runner_ids') or [])} tokens)"
    return "; ".join([lm.get("error") or "", *lm.get("notes", [])]).strip("; ") or "differs from the Runner"


# ---------------------------------------------------------------------------------------
# bundle


def bundle(tflite: Union[str, Path], tokenizer: Union[str, Path], format: str = "litertlm",
           out: Union[str, Path, None] = None, context_length: Optional[int] = None) -> BundleResult:
    """Bundles a converted decoder with its tokenizer, checks the bundle, and writes it.

    `tflite`: a .tflite with `prefill_N` and `decode` signatures (`convert`'s output).
    `tokenizer`: the Hugging Face folder holding the tokenizer files and
    generation_config.json. `out`: the bundle's path (default: beside the .tflite, with the
    format's suffix; an existing folder: the bundle goes inside it). `context_length`:
    the most tokens a LiteRT-LM session may hold (default and maximum: the model's KV
    cache length); MediaPipe takes it at load time instead, so `task` refuses it.
    """
    if format not in FORMATS:
        raise BundleError(f"unknown bundle format {format!r}", hint=f"choose one of {', '.join(FORMATS)}")
    tflite = Path(tflite)
    model = _model_facts(tflite)
    folder = resolve_hub(tokenizer, need="tokenizer")  # a folder, or a Hub id (org/name[@rev])
    tok = _tokenizer_files(folder, format)
    lookup, tok_vocab = _token_lookup(tok)
    start, stops = _special_ids(folder, lookup)
    ctx = _context_length(context_length, format, model["kv"])
    if format == "litertlm" and model["kv_layout"] != "transposed":
        raise BundleError(f"LiteRT-LM cannot run {tflite.name}: {_layout_reason(model['kv_shape'])}",
                          hint=LAYOUT_HINT).with_cli(LAYOUT_CLI_HINT)
    _check_ids(start, stops, folder, tok_vocab, model["vocab"])
    if format == "task" and start is None:
        raise BundleError(f"a MediaPipe .task bundle needs a start token, and the model in {folder} is not "
                          "given one (no bos_token_id, or its tokenizer does not prepend it)",
                          hint="bundle with format='litertlm', which may leave the start token out")
    out = _out_path(out, tflite, format)

    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        partial.mkdir()
    except OSError as e:
        raise BundleError(f"cannot write to the output folder {str(out.parent)!r}: {e.strerror or e}",
                          hint="choose a folder you can write to") from None
    try:
        if format == "litertlm":
            built = _build_litertlm(tflite, tok, start, stops, ctx, partial)
        else:
            built = _build_task(tflite, tok, lookup, start, stops, partial)
        if not built.is_file():
            raise BundleError(f"the {format} bundler finished without writing {built.name}",
                              hint="report this with the command that produced it")
        check = check_bundle(built, format)
        if check["model_sha256"] != model["sha256"]:
            check["problems"].append(f"the model inside the bundle differs from {tflite.name}")
            check["ok"] = False
        if not check["ok"]:
            raise BundleError(f"the {format} bundle of {tflite.name} fails its check: " + "; ".join(check["problems"]),
                              hint="fix the model or the tokenizer folder named above, then bundle again")
        size = built.stat().st_size
        os.replace(built, out)
    except BundleError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise BundleError(f"writing the {format} bundle {out.name} failed: {e.strerror or e}",
                          hint="check the free space and permissions of the output folder") from e
    except Exception as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise BundleError(f"the {format} bundler failed on {tflite.name}: {type(e).__name__}: {e}",
                          hint="the message above is the bundler's own; fix its input and bundle again") from e
    except BaseException:  # Ctrl-C in a notebook: nothing half-written stays behind
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(partial, ignore_errors=True)
    return BundleResult(path=out, size_bytes=size, format=format, check=check)


def _model_facts(tflite: Path) -> dict:
    """The .tflite's KV length, vocabulary and hash; refuses a file that is not a decoder."""
    from workbench.runtime import SignatureModel

    if not tflite.is_file():
        raise BundleError(f"no model file at {str(tflite)!r}", hint="convert the model first (edge-workbench "
                                                                   "convert), then pass the .tflite it wrote")
    try:
        sm = SignatureModel(tflite, threads=1)
    except WorkbenchError as e:
        raise BundleError(f"{tflite.name} cannot be bundled: {e.message}",
                          hint="a bundle needs a decoder converted with prefill_N and decode signatures; "
                               "convert it with edge-workbench convert") from None
    except (ValueError, RuntimeError) as e:
        raise BundleError(f"{tflite.name} is not a TFLite model ai-edge-litert can load: {e}",
                          hint="pass the .tflite that edge-workbench convert wrote") from None
    vocab = sm.vocab
    facts = {"kv": sm.kv_len, "vocab": vocab, "kv_layout": sm.kv_layout,
             "kv_shape": sm.input_details("decode")[sm.kv_names[0]]["shape"], "sha256": _sha256_file(tflite)}
    sm.close()
    return facts


LAYOUT_HINT = "convert it again with kv_layout='transposed' (the default), then bundle that .tflite"
LAYOUT_CLI_HINT = "edge-workbench convert ... --kv-layout transposed (the default), then bundle the .tflite it writes"


def _layout_reason(shape: list[int]) -> str:
    """Why a cache in litert-torch's default layout does not run in LiteRT-LM."""
    return (f"its KV cache is in litert-torch's default layout [1, kv, heads, dim] ({shape}), and LiteRT-LM "
            f"reads K as [1, heads, kv, dim] and V as [1, heads, dim, kv]: it would take the {shape[2]} KV heads for "
            f"the context length and refuse any prompt of {shape[2]} tokens or more")


def _tokenizer_files(folder: Path, format: str) -> dict:
    """The tokenizer file the format takes: {"kind": ..., "path": ...}."""
    if not folder.is_dir():
        raise BundleError(f"the tokenizer folder {str(folder)!r} does not exist",
                          hint="pass the Hugging Face model folder that holds tokenizer.json / tokenizer.model")
    sp, hf = folder / "tokenizer.model", folder / "tokenizer.json"
    if format == "task":
        if not sp.is_file():
            found = ", ".join(sorted(p.name for p in folder.glob("tokenizer*"))) or "no tokenizer files"
            raise BundleError(f"a MediaPipe .task bundle needs a SentencePiece tokenizer.model, and {folder} has "
                              f"none (it has {found})",
                              hint="bundle with format='litertlm', which takes tokenizer.json; or add the model's "
                                   "SentencePiece tokenizer.model to the folder")
        return {"kind": "sentencepiece", "path": sp}
    if hf.is_file():
        return {"kind": "hf_tokenizer_json", "path": hf}
    if sp.is_file():
        return {"kind": "sentencepiece", "path": sp}
    raise BundleError(f"a LiteRT-LM bundle needs tokenizer.json or tokenizer.model, and {folder} has neither",
                      hint="pass the Hugging Face model folder that holds the tokenizer files")


def _token_lookup(tok: dict) -> tuple[Callable, int]:
    """A lookup both ways over the tokenizer file (token -> id, id -> token; None when absent),
    and its vocabulary size."""
    try:
        if tok["kind"] == "sentencepiece":
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor(model_file=str(tok["path"]))
            n = sp.get_piece_size()

            def lookup(x):
                if isinstance(x, int):
                    return sp.id_to_piece(x) if 0 <= x < n else None
                i = sp.piece_to_id(x)
                return i if sp.id_to_piece(i) == x else None

            return lookup, n
        from tokenizers import Tokenizer

        t = Tokenizer.from_file(str(tok["path"]))
        return (lambda x: t.id_to_token(x) if isinstance(x, int) else t.token_to_id(x)), \
            t.get_vocab_size(with_added_tokens=True)
    except Exception as e:  # noqa: BLE001 - any library's complaint about the file
        raise BundleError(f"{tok['path']} is not a tokenizer {_KIND_LIB[tok['kind']]} can load: {e}",
                          hint="pass the model's own tokenizer files") from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"{path} is not readable JSON: {e}", hint="restore the file from the model's "
                                                                    "repository") from None
    return data if isinstance(data, dict) else {}


def _special_ids(folder: Path, lookup: Callable) -> tuple[Optional[int], list[int]]:
    """The start token id (or None) and the stop token ids, first found in
    generation_config.json, config.json, then tokenizer_config.json's token strings.

    As litert-torch's own LiteRT-LM metadata (export_hf) does, a declared BOS is the start
    token only when the model's input really begins with it: Qwen declares its
    end-of-text as BOS but never prepends it, and a prompt that starts with the stop token
    reads to the model as a finished document."""
    sources = [_read_json(folder / "generation_config.json"), _read_json(folder / "config.json")]
    tcfg = _read_json(folder / "tokenizer_config.json")

    def ids_of(key: str) -> list[int]:
        for src in sources:
            v = src.get(f"{key}_token_id")
            if v is not None:
                vals = v if isinstance(v, list) else [v]
                if all(isinstance(i, int) and not isinstance(i, bool) for i in vals):
                    return list(dict.fromkeys(vals))
        name = tcfg.get(f"{key}_token")
        name = name.get("content") if isinstance(name, dict) else name
        i = lookup(name) if isinstance(name, str) else None
        return [i] if i is not None else []

    start = ids_of("bos")
    start_id = start[0] if start and _input_starts_with(folder, tcfg, start[0]) else None
    return start_id, ids_of("eos")


def _input_starts_with(folder: Path, tcfg: dict, bos: int) -> bool:
    """Whether the model's input begins with `bos`: a chat template that writes it, else
    tokenizer.json's own encoding of a text, else tokenizer_config.json's add_bos_token
    (True when absent, as in transformers' Llama and Gemma SentencePiece tokenizers)."""
    template = tcfg.get("chat_template")
    if isinstance(template, str) and "bos_token" in template:
        return True
    if (folder / "tokenizer.json").is_file():
        try:
            from tokenizers import Tokenizer

            ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode("x").ids
        except Exception:  # noqa: BLE001 - cannot probe: trust the declared BOS, as litert-torch does
            return True
        return bool(ids) and ids[0] == bos
    add = tcfg.get("add_bos_token")
    return True if add is None else bool(add)


def _check_ids(start: Optional[int], stops: list[int], folder: Path, tok_vocab: int, vocab: int) -> None:
    if not stops:
        raise BundleError(f"no stop token in {folder}: generation_config.json has no eos_token_id and "
                          "tokenizer_config.json no eos_token",
                          hint="set eos_token_id in generation_config.json (an id, or a list of ids)")
    for what, i in [("start token", start)] + [("stop token", s) for s in stops]:
        if i is not None and not (0 <= i < min(tok_vocab, vocab)):
            raise BundleError(f"the {what} id {i} (from {folder}) is outside the vocabulary (tokenizer "
                              f"{tok_vocab}, model {vocab})",
                              hint="fix bos_token_id / eos_token_id in generation_config.json, or pass the "
                                   "tokenizer folder of this model")


def _context_length(context_length: Optional[int], format: str, kv: int) -> Optional[int]:
    if format == "task":
        if context_length is not None:
            raise BundleError("a MediaPipe .task bundle has no context length to store",
                              hint="leave context_length unset for format='task' and set max_tokens in "
                                   "LlmInference's options when loading it")
        return None
    if context_length is None:
        return kv
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 1:
        raise BundleError(f"context_length {context_length!r} must be a positive number of tokens",
                          hint=f"e.g. context_length={kv}, the model's KV cache length")
    if context_length > kv:
        raise BundleError(f"context_length {context_length} exceeds the model's KV cache ({kv} tokens)",
                          hint=f"use context_length <= {kv}, or convert with a larger kv")
    return context_length


def _out_path(out: Union[str, Path, None], tflite: Path, format: str) -> Path:
    suffix = SUFFIXES[format]
    out = tflite.with_suffix(suffix) if out is None else Path(out)
    if out.is_dir():
        out = out / (tflite.stem + suffix)
    if out.resolve() == tflite.resolve():
        raise BundleError(f"out {str(out)!r} is the model file itself", hint=f"use a path ending in {suffix}")
    other = {s for f, s in SUFFIXES.items() if f != format}
    if out.suffix in other:
        raise BundleError(f"{out.name} names a {out.suffix} file but format is {format!r}",
                          hint=f"use format={out.suffix[1:]!r}, or an out path ending in {suffix}")
    parent = out.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise BundleError(f"the output folder {str(parent)!r} {what}",
                          hint="create the folder first, or choose an existing one you can write to")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BundleError(f"cannot write to the output folder {str(parent)!r}",
                          hint="choose a folder you can write to")
    return out


def _build_litertlm(tflite: Path, tok: dict, start: Optional[int], stops: list[int], ctx: int,
                    partial: Path) -> Path:
    from workbench._quiet import quiet

    with quiet():
        from litert_torch.generative.utilities import litertlm_builder
        from litert_lm_builder.runtime.proto import llm_metadata_pb2

    if not litertlm_builder.is_litertlm_builder_available():
        raise BundleError("litert-torch cannot build LiteRT-LM files here: the litert-lm-builder package is "
                          "missing", hint="pip install litert-lm-builder (the workbench's environment has it)")
    work = partial / "work"
    work.mkdir()
    # litert-lm-builder's own validation makes these two mandatory for an LLM; build_litertlm
    # leaves them out, so they come in through its base metadata.
    base = llm_metadata_pb2.LlmMetadata(supports_thinking=False, supports_function_calling=False)
    (work / "base_llm_metadata.pb").write_bytes(base.SerializeToString())
    tokenizer_arg = ({"hf_tokenizer_model_path": str(tok["path"])} if tok["kind"] == "hf_tokenizer_json"
                     else {"tokenizer_model_path": str(tok["path"])})
    litertlm_builder.build_litertlm(
        tflite_model_path=str(tflite), workdir=str(work), output_path=str(partial), context_length=ctx,
        start_token_id=start, stop_token_ids=stops, base_llm_metadata_path=str(work / "base_llm_metadata.pb"),
        **tokenizer_arg)
    return partial / (tflite.stem + ".litertlm")  # build_litertlm's output_path is a folder


def _build_task(tflite: Path, tok: dict, lookup: Callable, start: int, stops: list[int],
                partial: Path) -> Path:
    from workbench._quiet import quiet

    with quiet():
        from mediapipe.tasks.python.genai import bundler

    built = partial / "bundle.task"  # create_bundle appends ".task" to a name without it
    bundler.create_bundle(bundler.BundleConfig(
        tflite_model=str(tflite), tokenizer_model=str(tok["path"]), start_token=lookup(start),
        stop_tokens=[lookup(s) for s in stops], output_filename=str(built)))
    return built


# ---------------------------------------------------------------------------------------
# check_bundle


def check_bundle(path: Union[str, Path], format: Optional[str] = None) -> dict:
    """Reopens a bundle: the model inside loads and decodes, the tokenizer inside round-trips.

    The model is extracted and run through its signatures (`CHECK_TOKENS` ids of
    `CHECK_TEXT` from the bundled tokenizer, start token first: all but the last
    prefilled, the last decoded); the tokenizer encodes and decodes `CHECK_TEXT`; the
    start/stop tokens are resolved in it. Raises BundleError for a file that is not a
    bundle of `format` (default: told by its first bytes); otherwise returns the figures,
    with `ok` and the `problems` found.
    """
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"no bundle at {str(path)!r}", hint="pass the path bundle() returned")
    with open(path, "rb") as f:
        head = f.read(8)
    # a .task zip need not start with "PK": MediaPipe pads its entries to 4 bytes, the first too
    found = "litertlm" if head == LITERTLM_MAGIC else "task" if zipfile.is_zipfile(path) else None
    if format is not None and format not in FORMATS:
        raise BundleError(f"unknown bundle format {format!r}", hint=f"choose one of {', '.join(FORMATS)}")
    if found is None or (format is not None and found != format):
        expect = format or " or ".join(FORMATS)
        raise BundleError(f"{path.name} is not a {expect} bundle (it starts with {head[:8]!r})",
                          hint="pass a file written by bundle(), with its format")
    with tempfile.TemporaryDirectory(prefix="ewb-bundle-check-") as tmp:
        model_file = Path(tmp) / "model.tflite"
        if found == "litertlm":
            info = _open_litertlm(path, model_file)
        else:
            info = _open_task(path, model_file)
        res = _run_checks(found, info, model_file)
        if found == "litertlm":
            _litert_lm_check(path, model_file, res)
        return res


def _open_litertlm(path: Path, model_file: Path) -> dict:
    """Reads a .litertlm's sections (litert-lm-builder's header reader): the model goes to
    `model_file`, the tokenizer and metadata are returned."""
    import zlib

    from litert_lm_builder import litertlm_core, litertlm_peek
    from litert_lm_builder.runtime.proto import llm_metadata_pb2

    try:
        header = litertlm_peek.read_litertlm_header(str(path), io.StringIO())
        sections = header.SectionMetadata()
        objs = [sections.Objects(i) for i in range(sections.ObjectsLength())] if sections else []
        spans = [(litertlm_core.any_section_data_type_to_string(o.DataType()), o.BeginOffset(), o.EndOffset())
                 for o in objs]
    except Exception as e:  # noqa: BLE001 - a damaged header, whatever the flatbuffer reader says
        raise BundleError(f"{path.name}'s LiteRT-LM header cannot be read: {e}",
                          hint="bundle the model again") from None
    info: dict[str, Any] = {"entries": [s[0] for s in spans], "problems": []}
    size = path.stat().st_size
    with open(path, "rb") as f:
        def read(begin: int, end: int) -> bytes:
            f.seek(begin)
            return f.read(end - begin)

        for name, begin, end in spans:
            if not 0 <= begin <= end <= size:
                info["problems"].append(f"section {name} [{begin}, {end}) lies outside the file ({size} bytes)")
                continue
            if name == "TFLiteModel" and "model_sha256" not in info:
                info["model_sha256"] = _copy_range(f, begin, end, model_file)
            elif name == "HF_Tokenizer_Zlib" and "tokenizer" not in info:
                data = read(begin, end)
                try:
                    raw = zlib.decompress(data[8:])
                    if len(raw) != struct.unpack("<Q", data[:8])[0]:
                        raise ValueError("its stored size does not match")
                    info["tokenizer"] = ("hf_tokenizer_json", raw)
                except (zlib.error, ValueError, struct.error) as e:
                    info["problems"].append(f"the HF tokenizer section cannot be unpacked: {e}")
            elif name == "SP_Tokenizer" and "tokenizer" not in info:
                info["tokenizer"] = ("sentencepiece", read(begin, end))
            elif name == "LlmMetadataProto":
                meta = llm_metadata_pb2.LlmMetadata()
                try:
                    meta.ParseFromString(read(begin, end))
                except Exception as e:  # noqa: BLE001 - protobuf's DecodeError
                    info["problems"].append(f"the LlmMetadata section cannot be parsed: {e}")
                    continue
                info["start_token_ids"] = list(meta.start_token.token_ids.ids)
                info["stop_token_ids"] = [i for t in meta.stop_tokens for i in t.token_ids.ids]
                info["token_strings"] = [t.token_str for t in [meta.start_token, *meta.stop_tokens] if t.token_str]
                info["context_length"] = int(meta.max_num_tokens)
    return info


def _open_task(path: Path, model_file: Path) -> dict:
    """Reads a MediaPipe .task zip: the model goes to `model_file`, the rest is returned."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise BundleError(f"{path.name} is not a readable .task zip: {e}", hint="bundle the model again") from None
    with zf:
        names = zf.namelist()
        info: dict[str, Any] = {"entries": names, "problems": []}
        try:
            if TASK_MODEL in names:
                with zf.open(TASK_MODEL) as src:
                    info["model_sha256"] = _copy_stream(src, model_file)
            if TASK_TOKENIZER in names:
                info["tokenizer"] = ("sentencepiece", zf.read(TASK_TOKENIZER))
            if TASK_METADATA in names:
                fields = _proto_strings(zf.read(TASK_METADATA))
                starts = fields.get(_TASK_START_FIELD, [])
                info["start_token"] = starts[0] if starts else None
                info["stop_tokens"] = fields.get(_TASK_STOP_FIELD, [])
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            info["problems"].append(f"an entry of the zip cannot be read: {e}")
    return info


def _run_checks(fmt: str, info: dict, model_file: Path) -> dict:
    problems = list(info["problems"])
    res: dict[str, Any] = {"format": fmt, "entries": info["entries"], "model_loads": False, "decode_finite": False,
                           "vocab": None, "tokenizer_roundtrip": False, "tokenizer_kind": None}
    required = ((["LlmMetadataProto", "TFLiteModel"], ["HF_Tokenizer_Zlib", "SP_Tokenizer"]) if fmt == "litertlm"
                else ([TASK_MODEL, TASK_METADATA], [TASK_TOKENIZER]))
    for name in required[0]:
        if name not in info["entries"]:
            problems.append(f"no {name} {'section' if fmt == 'litertlm' else 'entry'}")
    if not any(n in info["entries"] for n in required[1]):
        problems.append(f"no tokenizer ({' or '.join(required[1])})")

    # the tokenizer: load, round-trip the text, resolve the start/stop tokens
    tok = None
    if "tokenizer" in info:
        kind, data = info["tokenizer"]
        res["tokenizer_kind"] = kind
        try:
            tok = _Tokenizer(kind, data)
        except Exception as e:  # noqa: BLE001 - any library's complaint about the bytes
            problems.append(f"the bundled {kind} tokenizer does not load: {e}")
    if tok is not None:
        ids = tok.encode(CHECK_TEXT)
        text = tok.decode(ids)
        res.update(tokenizer_vocab=tok.vocab, tokenizer_ids=ids, tokenizer_text=text,
                   tokenizer_roundtrip=text.strip() == CHECK_TEXT)
        if not res["tokenizer_roundtrip"]:
            problems.append(f"the tokenizer does not round-trip {CHECK_TEXT!r}: it came back as {text!r}")
    if fmt == "litertlm":
        res.update(start_token_ids=info.get("start_token_ids", []), stop_token_ids=info.get("stop_token_ids", []),
                   context_length=info.get("context_length"))
        special = res["start_token_ids"] + res["stop_token_ids"]
        if not info.get("stop_token_ids") and not info.get("token_strings"):
            problems.append("the metadata names no stop token")
    else:
        res.update(start_token=info.get("start_token"), stop_tokens=info.get("stop_tokens", []))
        if not res["stop_tokens"] and TASK_METADATA in info["entries"]:
            problems.append("the metadata names no stop token")
        # MediaPipe stores the tokens as strings and does not look them up: we do
        names = [res["start_token"]] if res["start_token"] else []
        found = {s: tok.token_id(s) for s in names + res["stop_tokens"]} if tok is not None else {}
        problems += [f"the token {s!r} named in the metadata is not in the bundled tokenizer"
                     for s, i in found.items() if i is None]
        res["start_token_ids"] = [found[s] for s in names if found.get(s) is not None]
        res["stop_token_ids"] = [found[s] for s in res["stop_tokens"] if found.get(s) is not None]
        special = res["start_token_ids"] + res["stop_token_ids"]
    if tok is not None:
        bad = [i for i in special if not 0 <= i < tok.vocab]
        if bad:
            problems.append(f"start/stop token ids {bad} are outside the tokenizer's vocabulary ({tok.vocab})")

    # the model: load, prefill all but the last id, decode the last
    res["model_sha256"] = info.get("model_sha256")
    if "model_sha256" in info:
        problems += _decode_check(model_file, res, tok)
    res["problems"], res["ok"] = problems, not problems
    return res


def _decode_check(model_file: Path, res: dict, tok) -> list[str]:
    from workbench.runtime import SignatureModel

    try:
        sm = SignatureModel(model_file, threads=2)
    except WorkbenchError as e:
        return [f"the bundled model {e.message}"]
    except (ValueError, RuntimeError) as e:
        return [f"the bundled model does not load in ai-edge-litert: {e}"]
    res["model_loads"] = True
    res["signatures"] = list(sm.signatures)
    res["kv_cache"] = sm.kv_len
    res["kv_layout"] = sm.kv_layout
    res["kv_shape"] = sm.input_details("decode")[sm.kv_names[0]]["shape"]
    start = res.get("start_token_ids") or []
    ids = list(res.get("tokenizer_ids") or [])
    if ids[:1] != start[:1]:
        ids = start[:1] + ids
    if len(ids) < 2:
        ids = [1, 2, 3, 4]  # no tokenizer to take them from: fixed ids still exercise both signatures
    ids = ids[: min(CHECK_TOKENS, sm.prefills[-1] + 1, sm.kv_len)]
    problems = []
    vocab = sm.vocab
    res["vocab"] = vocab
    if max(ids) >= vocab:
        return [f"token ids {ids} exceed the model's vocabulary ({vocab})"]
    try:
        sm.prefill(ids[:-1])
        logits = sm.decode(ids[-1], len(ids) - 1)
    except Exception as e:  # noqa: BLE001 - the interpreter's own error
        return [f"the bundled model fails to run prefill/decode: {type(e).__name__}: {e}"]
    res["checked_ids"] = [int(i) for i in ids]
    res["logits_shape"] = [int(n) for n in logits.shape]
    res["decode_finite"] = bool(np.isfinite(logits).all())
    if not res["decode_finite"]:
        problems.append("the decode logits are not finite (NaN or inf)")
    special = [i for i in res.get("start_token_ids", []) + res.get("stop_token_ids", []) if i >= vocab]
    if special:
        problems.append(f"start/stop token ids {special} are outside the model's vocabulary ({vocab})")
    if tok is not None and tok.vocab > vocab:
        problems.append(f"the tokenizer's vocabulary ({tok.vocab}) is larger than the model's ({vocab})")
    return problems


def _litert_lm_check(path: Path, model_file: Path, res: dict) -> None:
    """The bundle in LiteRT-LM itself (a child process, `workbench.litert_lm`): it loads,
    prefills `CHECK_TEXT` and decodes `LM_CHECK_TOKENS` greedily; the Runner decodes the same
    prompt ids on the model inside, and its tokens, through LiteRT-LM's detokenizer, must give
    LiteRT-LM's text. Adds `res["litert_lm"]` and any problems (with LiteRT-LM's own reason)."""
    from workbench.litert_lm import UTF8_STOP, LiteRtLm, LiteRtLmError, available

    lm_res: dict[str, Any] = {"ran": False, "loads": False, "prompt_ids": None, "text": None, "runner_ids": None,
                              "runner_text": None, "same": False, "first_diff": None, "error": None,
                              "refused_tokens": [], "notes": []}
    res["litert_lm"] = lm_res
    problems = res["problems"]
    if res.get("kv_layout") not in (None, "transposed"):
        problems.append(f"LiteRT-LM cannot run the bundled model: {_layout_reason(res['kv_shape'])}")
    if not available():
        lm_res["notes"].append("litert-lm-api is not installed: the bundle was not run in LiteRT-LM")
        return
    try:
        lm = LiteRtLm(path, threads=2)
    except LiteRtLmError as e:
        lm_res["error"] = e.message
        problems.append(f"LiteRT-LM does not load the bundle: {e.message}")
        res["ok"] = False
        return
    with lm:
        lm_res["ran"] = lm_res["loads"] = True
        try:
            ids = lm.prompt_ids(CHECK_TEXT)
            lm_res["prompt_ids"] = ids
            n = min(LM_CHECK_TOKENS, (res.get("context_length") or res.get("kv_cache") or 0) - len(ids),
                    (res.get("kv_cache") or 0) - len(ids))
            if n < 1:
                lm_res["notes"].append(f"the context ({res.get('context_length')}) has no room to decode after the "
                                       f"{len(ids)}-token prompt")
                res["ok"] = not problems
                return
            out = lm.generate(CHECK_TEXT, n)
            lm_res["text"], lm_res["error"] = out["text"], out["error"]
            runner_ids = _runner_greedy(model_file, ids, n, set(res.get("stop_token_ids") or []))
            lm_res["runner_ids"] = runner_ids
            lm_res["runner_text"] = lm.detokenize(runner_ids) if runner_ids else ""
            prefixes = lm.detokenize(runner_ids, prefixes=True) if runner_ids else []
        except LiteRtLmError as e:
            lm_res["error"] = e.message
            problems.append(f"LiteRT-LM fails on the bundle: {e.message}")
            res["ok"] = False
            return
        text, runner_text = lm_res["text"], lm_res["runner_text"]
        lm_res["same"] = text == runner_text and not out["error"]
        agree = next((k for k, p in enumerate(prefixes) if not text.startswith(p.rstrip("\ufffd"))), None)
        if out["error"] and UTF8_STOP in out["error"]:
            # its streaming detokenizer stops where the text of the tokens so far is not a prefix of
            # the text before (invalid UTF-8 bytes that a later byte turns into other characters)
            shrunk = [k for k in range(1, len(prefixes)) if not prefixes[k].startswith(prefixes[k - 1])]
            lm_res["refused_tokens"] = [runner_ids[k] for k in shrunk]
            streamed = next((k + 1 for k, p in enumerate(prefixes) if p == text), 0 if not text else None)
            where = (f"token #{shrunk[0]} (id {runner_ids[shrunk[0]]}) turns {prefixes[shrunk[0] - 1]!r} into "
                     f"{prefixes[shrunk[0]]!r}" if shrunk else "the text")
            lm_res["notes"].append(
                f"LiteRT-LM stopped after {streamed if streamed is not None else '?'} of the Runner's tokens: its "
                f"streaming detokenizer refused tokens {lm_res['refused_tokens']} ({out['error']}): {where}, "
                "bytes that are not valid UTF-8 text on their own. That is the model's text, not the bundle")
            if streamed is None:
                problems.append(f"LiteRT-LM's greedy text {text!r} is not the text of any prefix of the Runner's "
                                f"tokens {runner_ids}")
        elif out["error"]:
            problems.append(f"LiteRT-LM fails to generate with the bundle: {out['error']}")
        elif not lm_res["same"]:
            k = agree if agree is not None else len(runner_ids)
            lm_res["first_diff"] = k
            problems.append(f"LiteRT-LM's greedy text {text!r} differs from the Runner's {runner_text!r} from token "
                            f"#{k} on (the Runner's ids {runner_ids})")
    res["ok"] = not problems


def _runner_greedy(model_file: Path, ids: list[int], n: int, stops: set[int]) -> list[int]:
    """The Runner's greedy continuation of `ids` on the bundled model (ai-edge-litert)."""
    from workbench.runner import Runner

    r = Runner(model_file, threads=2)
    try:
        r.eos = stops
        return list(r.generate(ids=ids, max_new_tokens=n).ids)
    finally:
        r.model.close()


class _Tokenizer:
    """The bundled tokenizer, from its bytes: SentencePiece or a Hugging Face tokenizer.json."""

    def __init__(self, kind: str, data: bytes) -> None:
        self.kind = kind
        if kind == "sentencepiece":
            import sentencepiece as spm

            self.sp = spm.SentencePieceProcessor(model_proto=data)
            self.vocab = self.sp.get_piece_size()
        else:
            from tokenizers import Tokenizer

            self.hf = Tokenizer.from_str(data.decode("utf-8"))
            self.vocab = self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text)) if self.kind == "sentencepiece" else list(self.hf.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids) if self.kind == "sentencepiece" else self.hf.decode(ids, skip_special_tokens=True)

    def token_id(self, token: str) -> Optional[int]:
        if self.kind == "sentencepiece":
            i = self.sp.piece_to_id(token)
            return i if self.sp.id_to_piece(i) == token else None
        return self.hf.token_to_id(token)


def _proto_strings(data: bytes) -> dict[int, list[str]]:
    """The top-level length-delimited fields of a protobuf message, as UTF-8 strings by field
    number (enough to read MediaPipe's LlmParameters without its generated module)."""
    out: dict[int, list[str]] = {}
    pos = 0

    def varint() -> int:
        nonlocal pos
        shift = value = 0
        while True:
            if pos >= len(data):
                raise ValueError("the metadata proto ends inside a varint")
            b = data[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value

    while pos < len(data):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            n = varint()
            if pos + n > len(data):
                raise ValueError("the metadata proto ends inside a field")
            out.setdefault(field, []).append(data[pos:pos + n].decode("utf-8", errors="replace"))
            pos += n
        else:
            raise ValueError(f"the metadata proto has an unknown wire type {wire}")
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _copy_stream(src, dst: Path, limit: Optional[int] = None) -> str:
    """Copies `src` (at most `limit` bytes) to `dst` in chunks; returns the bytes' sha256."""
    h = hashlib.sha256()
    left = limit
    with open(dst, "wb") as out:
        while left is None or left > 0:
            chunk = src.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            out.write(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


def _copy_range(f, begin: int, end: int, dst: Path) -> str:
    f.seek(begin)
    return _copy_stream(f, dst, end - begin)


__all__ = ["BundleError", "BundleResult", "bundle", "check_bundle", "FORMATS"]
