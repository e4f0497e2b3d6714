"""Run a converted model: tokenize, prefill, decode with the KV cache, sample, stream text.

    r = Runner("out/llama_dynamic_int8_kv1024.tflite", tokenizer="sample_models/llama-tiny", threads=2)
    for piece in r.stream("Once upon a time", max_new_tokens=64):
        print(piece, end="")
    r.last                   # the Generation: ids, text, stop reason, ttft_s, prefill/decode tok/s, peak RSS
    r.generate("Once upon a time", sampling="top_p", top_p=0.9, temperature=0.8, seed=1)

Both signature styles run (the re-authoring converter's, and litert-torch's direct export
with its `mask` input): `workbench.runtime.SignatureModel` drives them. A prompt longer than
the largest `prefill_N` is prefilled in chunks; its last token goes through `decode`, whose
logits give the first new token (prefill signatures output no logits).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from workbench.checkpoint import tokenizer_digest
from workbench.errors import WorkbenchError

SAMPLING = ("greedy", "top_k", "top_p")
# ai-edge-litert: a .tflite (or the model inside a .litertlm) on its CompiledModel, here;
# litert-lm: a .litertlm bundle in LiteRT-LM, the on-device runtime, in a child process
ENGINES = ("ai-edge-litert", "litert-lm")


class RunnerError(WorkbenchError):
    """A model, tokenizer, prompt or setting the runner cannot use."""


@dataclasses.dataclass
class Generation:
    """One generation: what went in, what came out, and how fast."""

    prompt: str
    prompt_ids: list[int]
    ids: list[int]  # the generated ids (EOS not included)
    text: str  # the continuation, without the prompt
    stop_reason: str  # eos | max_new_tokens | stopped | kv_full | invalid_utf8 (LiteRT-LM's detokenizer stopped)
    ttft_s: float  # time to first token: prefill of the prompt + its first decode
    prefill_tok_s: float  # prompt tokens / ttft
    decode_tok_s: float  # generated tokens after the first / their decode time
    peak_rss_bytes: int  # this process, sampled at every step
    sampling: dict

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=1)
def _process(pid: int):
    import psutil

    return psutil.Process(pid)


def _rss() -> int:
    return _process(os.getpid()).memory_info().rss  # by pid: a forked child reads its own


class Runner:
    """A converted .tflite with its tokenizer, ready to generate."""

    def __init__(self, model_path: str | Path, tokenizer: str | Path | None = None, threads: int = 2,
                 engine: str = "ai-edge-litert") -> None:
        from workbench.runtime import SignatureModel, load_tokenizer
        from workbench.hub import resolve as resolve_hub

        if engine not in ENGINES:
            raise RunnerError(f"unknown engine {engine!r}", hint=f"choose one of {', '.join(ENGINES)}")
        p = Path(model_path)
        if not p.is_file():
            raise RunnerError(f"no model file {str(p)!r}", hint="give the .tflite a conversion wrote")
        self.engine, self.bundle, self.lm = engine, None, None
        if tokenizer is not None:  # a folder, or a Hub id (org/name[@rev]): its snapshot's tokenizer
            tokenizer = resolve_hub(tokenizer, need="tokenizer")
        self.tokenizer_dir = Path(tokenizer) if tokenizer is not None else None
        if engine == "litert-lm" and p.suffix != ".litertlm":
            raise RunnerError(f"the litert-lm engine runs a .litertlm bundle, and {p.name} is not one",
                              hint=f"bundle it first (bundle({p.name!r}, tokenizer=HF_DIR)) and run the "
                                   ".litertlm it writes").with_cli(
                f"edge-workbench bundle {p} --tokenizer HF_DIR --format litertlm, then run the .litertlm")
        if p.suffix == ".litertlm":  # the model inside, for this engine and for the facts the views show
            self.bundle = p
            p = self._extract(p)
        try:
            self.model = SignatureModel(p, threads=threads)
        except WorkbenchError as e:
            raise RunnerError(e.message, e.hint) from None
        except (ValueError, RuntimeError) as e:
            raise RunnerError(f"{p.name} is not a LiteRT model ai-edge-litert can load ({e})",
                              hint="give a .tflite written by a conversion") from None
        self.path = self.bundle or p
        self.threads = threads
        self.vocab = self.model.vocab
        self.tokenizer = None
        self.eos: set[int] = set()
        self.bos: Optional[int] = None
        if tokenizer is not None:
            try:
                self.tokenizer = load_tokenizer(tokenizer)
            except Exception as e:  # noqa: BLE001 - every tokenizer failure is the same user problem
                raise RunnerError(f"cannot load a tokenizer from {tokenizer}: {e}",
                                  hint="give the Hugging Face folder that holds tokenizer.json or tokenizer.model")
            if len(self.tokenizer) > self.vocab:
                raise RunnerError(f"the tokenizer has {len(self.tokenizer)} tokens but the model's vocabulary is "
                                  f"{self.vocab}: ids past {self.vocab - 1} would index nothing",
                                  hint="use the tokenizer of the checkpoint this model was converted from")
            check_tokenizer(Path(model_path), Path(tokenizer))
            self.eos, self.bos = _special_ids(Path(tokenizer), self.tokenizer)
            if any(i >= self.vocab for i in self.eos):
                raise RunnerError(f"the tokenizer's end-of-text ids {sorted(self.eos)} are past the model's "
                                  f"vocabulary ({self.vocab}): it is another model's tokenizer",
                                  hint="use the tokenizer of the checkpoint this model was converted from")
        if engine == "litert-lm":
            from workbench.litert_lm import LiteRtLm, LiteRtLmError

            try:
                self.lm = LiteRtLm(self.bundle, threads=threads)
            except LiteRtLmError as e:
                raise RunnerError(e.message, e.hint) from None
        self.last: Optional[Generation] = None
        self._stop = threading.Event()
        self._busy = threading.Lock()  # one generation at a time: the model holds one KV cache

    def _extract(self, bundle: Path) -> Path:
        """The model inside a .litertlm, copied to a temporary file this runner owns."""
        import tempfile

        from workbench.bundle import BundleError, _open_litertlm

        self._tmp = tempfile.TemporaryDirectory(prefix="ewb-runner-")
        model = Path(self._tmp.name) / (bundle.stem + ".tflite")
        try:
            info = _open_litertlm(bundle, model)
        except BundleError as e:
            raise RunnerError(e.message, e.hint) from None
        if "model_sha256" not in info:
            raise RunnerError(f"{bundle.name} holds no TFLite model" + (f" ({'; '.join(info['problems'])})"
                                                                        if info["problems"] else ""),
                              hint="bundle the model again (edge-workbench bundle)")
        return model

    def with_engine(self, engine: str, bundle: str | Path | None = None) -> "Runner":
        """A runner of the same model and tokenizer on another engine (`bundle`: the .litertlm
        to run in LiteRT-LM when this runner has none)."""
        if engine == self.engine and bundle is None:
            return self
        return Runner(bundle or self.bundle or self.path, self.tokenizer_dir, self.threads, engine=engine)

    def close(self) -> None:
        """Ends the LiteRT-LM child (if any) and frees the model."""
        if self.lm is not None:
            self.lm.close()
        self.model.close()

    # ---- text <-> ids ---------------------------------------------------------------
    def encode(self, prompt: str, chat: bool = False) -> list[int]:
        if self.tokenizer is None:
            raise RunnerError("this runner has no tokenizer, so it cannot read text",
                              hint="Runner(model, tokenizer=HF_DIR), or pass token ids (ids=[...])").with_cli(
                "give --tokenizer HF_DIR")
        if chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise RunnerError("the tokenizer has no chat template", hint="generate without chat=True")
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                     tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return [int(i) for i in ids]
        return [int(i) for i in self.tokenizer(prompt)["input_ids"]]

    def decode_text(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            return " ".join(map(str, ids))
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---- generation -----------------------------------------------------------------
    def stop(self) -> None:
        """Asks a running generation to stop after its current token (from another thread)."""
        self._stop.set()
        if self.lm is not None:
            self.lm.cancel()

    def generate(self, prompt: str = "", max_new_tokens: int = 64, on_text: Optional[Callable[[str], None]] = None,
                 **kwargs) -> Generation:
        """Generates and returns the whole Generation; `on_text` receives each new piece."""
        for piece in self.stream(prompt, max_new_tokens, **kwargs):
            if on_text is not None:
                on_text(piece)
        return self.last

    def stream(self, prompt: str = "", max_new_tokens: int = 64, sampling: str = "greedy",
               temperature: float = 1.0, top_k: int = 40, top_p: float = 0.9, seed: Optional[int] = None,
               chat: bool = False, ids: Optional[list[int]] = None) -> Iterator[str]:
        """Yields the continuation piece by piece; `self.last` holds the Generation after."""
        if sampling not in SAMPLING:
            raise RunnerError(f"unknown sampling {sampling!r}", hint=f"choose one of {', '.join(SAMPLING)}")
        if sampling != "greedy" and not temperature > 0:
            raise RunnerError(f"temperature {temperature} must be positive", hint="e.g. 0.8; or sampling='greedy'")
        if sampling == "top_p" and not 0 < top_p <= 1:
            raise RunnerError(f"top_p {top_p} must be in (0, 1]", hint="e.g. 0.9")
        if sampling == "top_k" and top_k < 1:
            raise RunnerError(f"top_k {top_k} must be at least 1", hint="e.g. 40")
        if max_new_tokens < 1:
            raise RunnerError(f"max_new_tokens {max_new_tokens} must be at least 1", hint="e.g. 64")
        if self.lm is not None and (chat or ids is not None):
            raise RunnerError("the litert-lm engine takes the prompt as text, without a chat template (LiteRT-LM "
                              "tokenizes it itself)", hint="give the prompt as text, without chat; or use the "
                                                            "ai-edge-litert engine")
        prompt_ids = ([int(i) for i in ids] if ids is not None else self.lm.prompt_ids(prompt) if self.lm is not None
                      else self.encode(prompt, chat))
        if self.bos is not None and ids is None and not chat and (not prompt_ids or prompt_ids[0] != self.bos) \
                and getattr(self.tokenizer, "add_bos_token", False):
            prompt_ids = [self.bos] + prompt_ids
        if not prompt_ids:
            raise RunnerError("the prompt has no tokens", hint="give some text")
        if max(prompt_ids) >= self.vocab or min(prompt_ids) < 0:
            raise RunnerError(f"token id {max(prompt_ids)} is outside the model's vocabulary of {self.vocab}",
                              hint="use the tokenizer of the checkpoint this model was converted from")
        kv = self.model.kv_len
        if len(prompt_ids) > kv:
            raise RunnerError(f"the prompt has {len(prompt_ids)} tokens but the model's KV cache holds {kv}",
                              hint=f"shorten the prompt below {kv} tokens, or convert with a larger kv")
        if len(prompt_ids) + max_new_tokens > kv:
            raise RunnerError(f"{len(prompt_ids)} prompt tokens + max_new_tokens {max_new_tokens} exceed the model's "
                              f"KV cache of {kv}", hint=f"ask for at most {kv - len(prompt_ids)} new tokens, or "
                                                          "convert with a larger kv")
        if not self._busy.acquire(blocking=False):
            raise RunnerError("this runner is already generating (its model holds one KV cache)",
                              hint="wait for that generation, or stop it (runner.stop()), then try again")
        try:
            if self.lm is not None:
                yield from self._generate_lm(prompt, prompt_ids, max_new_tokens, sampling, temperature, top_k, top_p,
                                             seed)
            else:
                yield from self._generate(prompt, prompt_ids, max_new_tokens, sampling, temperature, top_k, top_p,
                                          seed, chat)
        finally:
            self._busy.release()

    def _generate(self, prompt: str, prompt_ids: list[int], max_new_tokens: int, sampling: str, temperature: float,
                  top_k: int, top_p: float, seed: Optional[int], chat: bool) -> Iterator[str]:
        rng = np.random.default_rng(seed)
        settings = {"sampling": sampling, "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed,
                    "chat": chat}
        self._stop.clear()
        sm = self.model
        sm.reset()
        peak = _rss()
        t0 = time.perf_counter()
        self._prefill(prompt_ids[:-1])
        logits = sm.decode(prompt_ids[-1], len(prompt_ids) - 1)
        out: list[int] = []
        detok = _Detokenizer(self.decode_text)
        reason = "max_new_tokens"
        ttft = 0.0
        t_first = t0
        for step in range(max_new_tokens):
            nxt = _sample(logits, sampling, temperature, top_k, top_p, rng)
            if step == 0:
                t_first = time.perf_counter()
                ttft = t_first - t0
            if step % 8 == 0:  # a /proc read per token would show in a tiny model's tok/s
                peak = max(peak, _rss())
            if nxt in self.eos:
                reason = "eos"
                break
            out.append(nxt)
            piece = detok.add(out)
            if piece:
                yield piece
            if self._stop.is_set():
                reason = "stopped"
                break
            if step == max_new_tokens - 1:
                break
            logits = sm.decode(nxt, len(prompt_ids) + step)
        t_end = time.perf_counter()
        peak = max(peak, _rss())
        final = self.decode_text(out)
        piece = detok.flush(final)
        if piece:
            yield piece
        n_after = max(len(out) - 1, 0)
        self.last = Generation(
            prompt=prompt, prompt_ids=prompt_ids, ids=out, text=final, stop_reason=reason, ttft_s=ttft,
            prefill_tok_s=len(prompt_ids) / ttft if ttft > 0 else 0.0,
            decode_tok_s=n_after / (t_end - t_first) if n_after and t_end > t_first else 0.0,
            peak_rss_bytes=peak, sampling=settings)

    def _generate_lm(self, prompt: str, prompt_ids: list[int], max_new_tokens: int, sampling: str,
                     temperature: float, top_k: int, top_p: float, seed: Optional[int]) -> Iterator[str]:
        """The same generation in LiteRT-LM: its sampler (greedy is top_k 1), its streamed text,
        its own timings (BenchmarkInfo); the ids are its tokenizer's reading of the text (it
        returns text, not ids)."""
        from workbench.litert_lm import UTF8_STOP, LiteRtLmError

        settings = {"sampling": sampling, "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed,
                    "chat": False, "engine": "litert-lm"}
        sampler = {"greedy": dict(top_k=1, top_p=1.0, temperature=1.0),
                   "top_k": dict(top_k=top_k, top_p=1.0, temperature=temperature),
                   "top_p": dict(top_k=self.vocab, top_p=top_p, temperature=temperature)}[sampling]
        self._stop.clear()
        text, done, asked = "", {}, False
        try:
            for item in self.lm.stream(prompt, max_new_tokens, seed=seed or 0, **sampler):
                if isinstance(item, dict):
                    done = item
                elif item:
                    text += item
                    yield item
                if self._stop.is_set() and not asked:  # a stop() just before the request left found nothing to cancel
                    asked = True
                    self.lm.cancel()
            out = self._lm_ids(prompt, text)
        except LiteRtLmError as e:
            raise RunnerError(e.message, e.hint) from None
        err, bench = done.get("error"), done.get("bench") or {}
        if err and UTF8_STOP not in err:
            raise RunnerError(f"LiteRT-LM stopped generating with {self.path.name}: {err}",
                              hint="the reason is LiteRT-LM's own; check the bundle (edge-workbench bundle runs it "
                                   "in LiteRT-LM)")
        n = int(bench.get("decode_tokens") or 0)
        reason = ("stopped" if done.get("cancelled") else "invalid_utf8" if err
                  else "max_new_tokens" if n >= max_new_tokens else "eos")
        self.last = Generation(
            prompt=prompt, prompt_ids=prompt_ids, ids=out, text=text, stop_reason=reason,
            ttft_s=float(bench.get("ttft_s") or 0.0), prefill_tok_s=float(bench.get("prefill_tok_s") or 0.0),
            decode_tok_s=float(bench.get("decode_tok_s") or 0.0), peak_rss_bytes=int(done.get("peak_rss_bytes", 0)),
            sampling=settings)

    def _lm_ids(self, prompt: str, text: str) -> list[int]:
        """LiteRT-LM's tokenizer's reading of a continuation: the ids of prompt + text past the
        prompt's (so a SentencePiece dummy prefix stays with the prompt). Equal to the sampled
        ids when the text re-tokenizes to them (not for bytes that are not valid UTF-8)."""
        if not text:
            return []
        head, whole = self.lm.tokenize(prompt), self.lm.tokenize(prompt + text)
        return whole[len(head):] if whole[:len(head)] == head else self.lm.tokenize(text)

    def _prefill(self, ids: list[int]) -> None:
        """Prefills in chunks of the largest signature; a tail that would run past the cache
        (padding included) goes through decode one token at a time."""
        sm = self.model
        largest = sm.prefills[-1]
        start = 0
        while start < len(ids):
            chunk = ids[start:start + largest]
            n = next(p for p in sm.prefills if p >= len(chunk))
            if start + n > sm.kv_len:
                for j, t in enumerate(ids[start:]):
                    sm.decode(t, start + j)
                return
            sm.prefill(chunk, start=start)
            start += len(chunk)

    # ---- side by side ---------------------------------------------------------------
    def side_by_side(self, prompt: str, hf_dir: str | Path, max_new_tokens: int = 16, model=None,
                     chat: bool = False) -> dict:
        """Greedy continuations of the same prompt ids: this converted model, transformers, and
        (when given) the re-authored PyTorch model; with the first token where each differs."""
        import torch
        from transformers import AutoModelForCausalLM

        from workbench import layers

        gen = self.generate(prompt, max_new_tokens, chat=chat)
        ids = gen.prompt_ids
        engines = {"converted": gen.ids}
        if self.lm is not None:  # both engines: LiteRT-LM's tokens and ai-edge-litert's on the same ids
            last = self.last
            with self._busy:
                list(self._generate(prompt, ids, max_new_tokens, "greedy", 1.0, 1, 1.0, None, False))
            engines = {"litert-lm": gen.ids, "ai-edge-litert": self.last.ids}
            self.last = last
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        ref: list[int] = []
        seq = list(ids)
        with torch.no_grad():
            for _ in range(max_new_tokens):
                nxt = int(hf(torch.tensor([seq])).logits[0, -1].argmax())
                if nxt in self.eos:
                    break
                ref.append(nxt)
                seq.append(nxt)
        rows = {**engines, "transformers": ref}
        if model is not None:
            ours = layers.generate_greedy(model, ids, max_new_tokens, len(ids) + max_new_tokens, stop=self.eos)
            rows["reauthored"] = [t for t in ours if t not in self.eos]
        first = {k: next((i for i, (a, b) in enumerate(zip(v, ref)) if a != b),
                         None if len(v) == len(ref) else min(len(v), len(ref)))
                 for k, v in rows.items() if k != "transformers"}
        texts = {k: self.decode_text(v) for k, v in rows.items()}
        if self.lm is not None:
            # LiteRT-LM returns text: its row differs where transformers' tokens, read by its own
            # detokenizer, stop being a prefix of that text
            texts["litert-lm"] = gen.text
            prefixes = self.lm.detokenize(ref, prefixes=True) if ref else []
            first["litert-lm"] = next((k for k, p in enumerate(prefixes) if not gen.text.startswith(p)),
                                      None if gen.text == (prefixes[-1] if prefixes else "") else len(prefixes))
        return {"prompt_ids": ids, "ids": rows, "text": texts, "first_diff": first}


class _Detokenizer:
    """Turns a growing list of ids into text pieces that never need taking back.

    Decoding is not always prefix-stable (SentencePiece drops a leading space, byte tokens
    combine into one character), so, as transformers' TextStreamer does, a piece ends at
    the last space, and an incomplete character ("\ufffd" at the end) waits for more bytes.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.sent = ""

    def add(self, ids: list[int]) -> str:
        text = self.decode(ids)
        if not text.startswith(self.sent) or text.endswith("\ufffd"):
            return ""
        cut = text.rfind(" ") + 1 if not text.endswith("\n") else len(text)
        if cut <= len(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):cut], text[:cut]
        return piece

    def flush(self, final: str) -> str:
        if not final.startswith(self.sent):
            return ""  # the text changed under what was sent: the Generation holds the truth
        piece, self.sent = final[len(self.sent):], final
        return piece


def _sample(logits: np.ndarray, sampling: str, temperature: float, top_k: int, top_p: float, rng) -> int:
    if sampling == "greedy":
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    if sampling == "top_k":
        k = min(top_k, z.size)
        cut = np.partition(z, -k)[-k]
        z = np.where(z >= cut, z, -np.inf)
    p = np.exp(z - z.max())
    p /= p.sum()
    if sampling == "top_p":
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < top_p  # the smallest set whose mass reaches top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return int(rng.choice(p.size, p=p))


def _special_ids(folder: Path, tok) -> tuple[set[int], Optional[int]]:
    """EOS ids (generation_config.json first, then the tokenizer) and the BOS id."""
    import json

    eos: set[int] = set()
    bos = None
    gc = folder / "generation_config.json"
    if gc.is_file():
        try:
            d = json.loads(gc.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            d = {}
        e = d.get("eos_token_id")
        eos |= set(e if isinstance(e, list) else [e] if e is not None else [])
        bos = d.get("bos_token_id")
    if getattr(tok, "eos_token_id", None) is not None:
        eos.add(int(tok.eos_token_id))
    if bos is None:
        bos = getattr(tok, "bos_token_id", None)
    return {int(x) for x in eos}, (int(bos) if bos is not None else None)


__all__ = ["Runner", "RunnerError", "Generation", "SAMPLING", "ENGINES"]


def check_tokenizer(model_path: Path, tokenizer: Path) -> None:
    """Refuses another model's tokenizer: the conversion's manifest (beside the model) records
    its checkpoint and that checkpoint's tokenizer digest; a tokenizer that differs would
    turn the model's ids into the wrong words, silently. Models without a manifest pass."""
    import json

    try:
        man = json.loads(Path(model_path).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return
    if not isinstance(man, dict) or man.get("kind") != "edge-workbench/conversion":
        return
    ck = man.get("checkpoint")
    recorded = man.get("tokenizer_digest") or (tokenizer_digest(Path(ck)) if ck and Path(ck).is_dir() else None)
    given = tokenizer_digest(tokenizer)
    if recorded and given and given != recorded:
        raise RunnerError(f"the tokenizer in {tokenizer} is not the one of the checkpoint {Path(model_path).name} "
                          f"was converted from ({ck})",
                          hint=f"use tokenizer={ck!r}").with_cli(f"give --tokenizer {ck}")
