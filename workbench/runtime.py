"""The runtime wrapper: a converted decoder's signatures in ai-edge-litert, and a checkpoint's
tokenizer. The Runner, the check after conversion, bundles and sweeps all drive models
through `SignatureModel`."""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
import weakref
from pathlib import Path

import numpy as np

from workbench.checkpoint import VOCABULARY_FILES, has_tokenizer

_PROBE = "Once upon a time, a small robot lived in a quiet town."


def load_tokenizer(hf_dir: str | Path):
    """The folder's own tokenizer, or None when it has none that works.

    transformers 5 builds an *empty* tokenizer for a folder without tokenizer files
    (it encodes every text to []), so files are required and a probe must encode."""
    if not has_tokenizer(hf_dir):
        raise FileNotFoundError(f"no tokenizer files ({', '.join(VOCABULARY_FILES)}) in {hf_dir}")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    if not tok(_PROBE)["input_ids"]:
        raise ValueError(f"the tokenizer in {hf_dir} encodes text to no tokens")
    return tok



_ENV = None
_LIVE: "weakref.WeakSet[SignatureModel]" = weakref.WeakSet()
# ai-edge-litert's CompiledModel holds the GIL for a whole call (the Interpreter released it), so
# two models timed at once in two threads would each measure half speed: timings take turns.
_TIMING = threading.Lock()
RUN_INPUTS = {"tokens", "input_pos", "mask"}  # the inputs beside the caches that SignatureModel feeds


def _environment():
    """One LiteRT environment per process, made quietly: ai-edge-litert logs on fd 2 every
    accelerator it registers, every vendor plugin it cannot load, and every accelerator it
    destroys, and in a notebook that would land in whichever cell ran last. (The fd-2 mute's
    lock is the only lock here, so nothing can take the two in opposite orders.)"""
    global _ENV
    from workbench._quiet import muted_fd2

    with muted_fd2():
        if _ENV is None:
            from ai_edge_litert.environment import Environment

            _ENV = Environment.create()
            atexit.register(_release)
        return _ENV


def _release() -> None:
    """At exit: the models still open and the environment are freed quietly; then fd 2 is pointed
    at /dev/null for the rest of the exit, because the runtime's own environment (made inside the
    first compiled model) is destroyed by a C++ static destructor after Python has finished, and
    logs its accelerators on the way out (`edge-workbench run --json` would end on those lines).
    Python's own stderr moves to a copy of the real one first, so what Python still has to say
    (an atexit handler's error, an unraisable exception) is printed."""
    global _ENV
    from workbench._quiet import muted_fd2

    with muted_fd2():
        for sm in list(_LIVE):
            sm.close()
        _ENV = None
        gc.collect()
    try:
        sys.stderr.flush()
        real = os.dup(2)
        sys.stderr = open(real, "w", buffering=1, errors="backslashreplace")
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
    except (OSError, ValueError, AttributeError):
        pass


def _readable(path: Path) -> None:
    """Refuses a file that is not a whole LiteRT flatbuffer, with the runtime's reason. The
    CompiledModel parses a truncated file without checking it and crashes the process (a
    notebook's kernel with it); the Interpreter verifies the flatbuffer first and raises
    ValueError (a few ms: the file is mapped, no delegate is made)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)


class SignatureModel:
    """A converted decoder's prefill/decode signatures with the KV cache carried along.

    Two styles are run alike: the re-authoring converter's (`tokens`, `input_pos`; causal
    masking inside) and litert-torch's direct export (`export_hf`: an additive float `mask`
    [1, 1, T, kv] input; prefill outputs no logits). The KV cache comes in two layouts:
    `default` (K and V [1, kv, heads, dim], the re-authoring converter's default) and
    `transposed` (K [1, heads, kv, dim], V [1, heads, dim, kv]: export_hf's, and the
    re-authoring converter's with `kv_layout="transposed"`); `kv_layout` and `kv_len` say
    which.

    It runs on ai-edge-litert's CompiledModel (XNNPACK on `threads` CPU threads) with the KV
    cache held in one set of the runtime's own buffers, bound as both the input and the output
    of every call, as LiteRT-LM binds them: each layer's cache update is then a write of the
    new rows in place. The Interpreter's signature runners instead copy every cache into the
    model and back out on every call, and the model copies it once more from input to output;
    at kv 256 on a 111M model that was half of the time of a decode step. (litert-torch's
    graphs read a cache input only through the update that writes its output, so the aliasing
    is exact: logits are bit-identical to the signature runners'; a signature with other inputs
    beside the caches, such as export_hf's ring-buffer sliding window, is refused.) `kv` reads
    the caches out (a copy), for the few callers that want them as arrays. A call holds the GIL
    (a prefill chunk included); one SignatureModel is one cache, so one thread at a time.

    `weight_cache` (on by default) gives XNNPACK a weight-cache file, as LiteRT-LM does: without
    one XNNPACK packs the weights once per signature (a 1.1B int8 file took 5.15 GB to open, 2.31
    GB with it, and its prefill ran 6% faster). The file lives in a private folder of this
    process's (`tempdirs.make("xnn")`), never beside the model, and is removed on `close()`, when
    the object is collected, at exit, or (after a kill) by the next process's sweep; it is never
    reused by a later load, so a half-written one is never trusted.
    """

    def __init__(self, path: str | Path, threads: int = 2, weight_cache: bool = True) -> None:
        from workbench._quiet import muted_fd2
        from workbench.errors import WorkbenchError

        self.compiled = None
        self._cache_dir = None  # the folder of the XNNPACK weight cache, while the model is open
        path = Path(path)
        _readable(path)
        try:
            if weight_cache:
                from workbench import tempdirs

                self._cache_dir = tempdirs.make("xnn")
                self._remove_cache = weakref.finalize(self, tempdirs.remove, self._cache_dir)
            # It logs each vendor plugin it tries, each accelerator of the runtime environment it
            # makes on first use, and the XNNPACK delegate: all of it while the model is opened.
            with muted_fd2():
                problem = self._open(path, threads)
        except RuntimeError as e:  # ai-edge-litert's reasons run over lines ("└ ..."): the first
            self.close()
            raise RuntimeError(str(e).strip().splitlines()[0]) from None
        except BaseException:
            self.close()
            raise
        if problem:
            self.close()
            raise WorkbenchError(f"{path.name}: {problem}", hint="convert a decoder with edge-workbench convert "
                                 "(re-authored, or export_hf with its defaults)")
        _LIVE.add(self)

    @property
    def weight_cache(self) -> Path | None:
        """The XNNPACK weight-cache file while the model is open (None without one)."""
        return self._cache_dir / "weights.xnnpack_cache" if self._cache_dir else None

    def _open(self, path: str | Path, threads: int) -> str:
        """Opens the model and its cache buffers; returns why it cannot be run ("" when it can)."""
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import CpuOptions, Options

        cpu = CpuOptions(num_threads=threads, xnnpack_weight_cache_path=str(self.weight_cache or ""))
        self.compiled = CompiledModel.from_file(
            str(path), environment=_environment(),
            options=Options(hardware_accelerators=HardwareAccelerator.CPU, cpu_options=cpu))
        self.signatures = self.compiled.get_signature_list()
        self.prefills = sorted(int(n.rsplit("_", 1)[1]) for n in self.signatures if n.startswith("prefill_")
                               and n.rsplit("_", 1)[1].isdigit())
        problem = self._unsupported()
        if problem:
            return problem
        self.kv_names = [n for n in self.signatures["decode"]["inputs"] if n.startswith("kv_cache_")]
        details = self.input_details("decode")
        self.masked = "mask" in details  # export_hf style
        self.style = "export_hf" if self.masked else "reauthored"
        self.vocab = int(self.output_details("decode")["logits"]["shape"][-1])
        self._kv_details = {n: details[n] for n in self.kv_names}
        self._kv = {n: self.compiled.create_input_buffer_by_name("decode", n) for n in self.kv_names}
        self._io: dict[str, tuple[dict, dict, dict, dict]] = {}
        self.reset()
        self.kv_layout = self._kv_layout(details)
        self.kv_len = int(details["mask"]["shape"][-1] if self.masked
                          else details[self.kv_names[0]]["shape"][1 if self.kv_layout == "default" else 2])
        return ""

    def _unsupported(self) -> str:
        """Why this file's signatures cannot be run here ("" when they can): no prefill_N and
        decode, an input beside the caches that is not fed (a ring-buffer sliding-window cache's
        masks, say: its attention also reads the cache input after the update, so the in-place
        binding would be wrong for it), or cache outputs that are not the cache inputs."""
        if "decode" not in self.signatures or not self.prefills:
            return (f"no prefill_N and decode signatures (it has {', '.join(self.signatures) or 'none'})")
        for name in ["decode"] + [f"prefill_{n}" for n in self.prefills]:
            sig = self.signatures[name]
            ins = {n for n in sig["inputs"] if not n.startswith("kv_cache_")}
            caches_in = {n for n in sig["inputs"] if n.startswith("kv_cache_")}
            caches_out = {n for n in sig["outputs"] if n.startswith("kv_cache_")}
            if not {"tokens", "input_pos"} <= ins or ins - RUN_INPUTS:
                return (f"its {name} signature takes {', '.join(sorted(ins))}; the runner feeds tokens, input_pos "
                        f"and (export_hf) mask beside the KV cache")
            if caches_in != caches_out:
                return f"its {name} signature's KV cache outputs are not its cache inputs"
        return ""

    def input_details(self, signature: str) -> dict:
        """{name: {"shape": [...], "dtype": numpy dtype, "size": elements}} of a signature's inputs."""
        return self._details(self.compiled.get_input_tensor_details(signature))

    def output_details(self, signature: str) -> dict:
        return self._details(self.compiled.get_output_tensor_details(signature))

    @staticmethod
    def _details(raw: dict) -> dict:
        shapes = {n: [int(x) for x in d["shape"]] for n, d in raw.items()}
        return {n: {"shape": shapes[n], "dtype": np.dtype(d["dtype"]), "size": int(np.prod(shapes[n]))}
                for n, d in raw.items()}

    def _kv_layout(self, details: dict) -> str:
        """`default` (K = V = [1, kv, heads, dim]) or `transposed` (K [1, heads, kv, dim],
        V [1, heads, dim, kv]), read from the first layer's cache shapes. When the shapes
        alone cannot tell ([1, a, b, b]: default with heads == dim, or transposed with
        kv == dim), one decode step at position 1 on an empty cache shows the axis it wrote."""
        if self.masked:  # export_hf lays the cache out transposed, always
            return "transposed"
        k = next((n for n in self.kv_names if n.startswith("kv_cache_k")), None)
        v = k.replace("kv_cache_k", "kv_cache_v") if k else None  # the same layer's V
        if v not in details:
            return "default"
        ks, vs = details[k]["shape"], details[v]["shape"]
        if ks != vs:
            return "transposed"
        if len(ks) != 4 or ks[2] != ks[3]:
            return "default"
        if ks[1] < 2:  # default would mean a one-slot cache; transposed, one head
            return "transposed"
        self.decode(1, 1)
        written = np.abs(self.kv[k][0]) > 0  # [a, b, b]
        self.reset()
        return "default" if not written[np.arange(ks[1]) != 1].any() else "transposed"

    def buffers(self, signature: str) -> tuple[dict, dict, dict]:
        """(inputs, outputs, output details) of a signature: name -> the runtime's buffer, the
        caches' being the shared ones (an output cache is its input's buffer). Made on first use."""
        return self._signature_io(signature)[:3]

    def _signature_io(self, signature: str) -> tuple[dict, dict, dict, dict]:
        """`buffers(signature)` and the details of the inputs a call feeds (the caches aside)."""
        if signature not in self._io:
            sig = self.signatures[signature]
            ins = {n: self.compiled.create_input_buffer_by_name(signature, n) for n in sig["inputs"]
                   if n not in self._kv}
            outs = {n: self.compiled.create_output_buffer_by_name(signature, n) for n in sig["outputs"]
                    if n not in self._kv}
            self._io[signature] = ({**ins, **self._kv}, {**outs, **{n: self._kv[n] for n in sig["outputs"]
                                                                   if n in self._kv}},
                                   {n: d for n, d in self.output_details(signature).items() if n in outs},
                                   {n: d for n, d in self.input_details(signature).items() if n in ins})
        return self._io[signature]

    def run(self, signature: str, read: tuple[str, ...] = ("logits",), **inputs: np.ndarray) -> dict:
        """One call of a signature on the carried cache; returns the outputs named in `read`."""
        ins, outs, out_details, fed = self._signature_io(signature)
        if inputs.keys() != fed.keys():
            raise ValueError(f"{signature} takes {sorted(fed)}, given {sorted(inputs)}")
        for name, value in inputs.items():
            d = fed[name]
            if value.dtype != d["dtype"] or value.size != d["size"]:
                raise ValueError(f"{signature}'s {name} is {d['dtype']} {d['shape']}, given {value.dtype} "
                                 f"{list(value.shape)}")
            ins[name].write(value)
        self.compiled.run_by_name(signature, ins, outs)
        got = {}
        for name in read:
            if name in out_details:
                d = out_details[name]
                got[name] = outs[name].read(d["size"], d["dtype"]).reshape(d["shape"])
        return got

    @property
    def kv(self) -> dict[str, np.ndarray]:
        """The caches as arrays (a copy)."""
        d = self._kv_details
        return {n: b.read(d[n]["size"], d[n]["dtype"]).reshape(d[n]["shape"]) for n, b in self._kv.items()}

    def reset(self) -> None:
        d = self._kv_details
        for n, b in self._kv.items():
            b.write(np.zeros(d[n]["shape"], dtype=d[n]["dtype"]))

    def close(self) -> None:
        """Frees the runtime's model and buffers and removes its weight cache (the object is
        unusable after)."""
        self._io, self._kv = {}, {}
        if getattr(self, "compiled", None) is not None:
            self.compiled.close()
            self.compiled = None
        if getattr(self, "_cache_dir", None) is not None:
            self._remove_cache()
            self._cache_dir = None

    def _mask(self, positions) -> dict:
        """export_hf's additive mask: row r may attend to cache slots <= positions[r]. Padded
        prefill rows get a causal row too (an all -inf row would put NaN into the cache)."""
        if not self.masked:
            return {}
        m = np.full((1, 1, len(positions), self.kv_len), -np.inf, dtype=np.float32)
        for r, p in enumerate(positions):
            m[0, 0, r, : min(int(p), self.kv_len - 1) + 1] = 0.0
        return {"mask": m}

    def prefill(self, ids: list[int], start: int = 0) -> None:
        n = next((p for p in self.prefills if p >= len(ids)), None)
        if n is None:
            raise ValueError(f"{len(ids)} tokens exceed the largest prefill signature ({self.prefills[-1]})")
        tokens = np.zeros((1, n), dtype=np.int32)
        tokens[0, : len(ids)] = ids
        pos = np.arange(start, start + n, dtype=np.int32)
        self.run(f"prefill_{n}", read=(), tokens=tokens, input_pos=pos, **self._mask(pos))

    def decode(self, token: int, pos: int) -> np.ndarray:
        out = self.run("decode", tokens=np.array([[token]], dtype=np.int32), input_pos=np.array([pos], dtype=np.int32),
                       **self._mask([pos]))
        return out["logits"][0, -1]

    def speed(self, decode_steps: int = 32, repeats: int = 3) -> dict:
        """Prefill and decode tokens per second on this machine (median of `repeats` runs):
        the largest prefill signature that leaves room for the decode steps, then greedy
        decode steps. Resets the cache before and after. One model is timed at a time in this
        process (`_TIMING`): the runtime holds the GIL through each call."""
        import time

        fit = [p for p in self.prefills if p + decode_steps <= self.kv_len] or [self.prefills[0]]
        n = fit[-1]
        steps = max(1, min(decode_steps, self.kv_len - n))
        ids = [1 + (7 * i) % 100 for i in range(n)]
        pre, dec = [], []
        with _TIMING:
            for _ in range(repeats):
                self.reset()
                t = time.perf_counter()
                self.prefill(ids)
                pre.append(time.perf_counter() - t)
                tok = 1
                t = time.perf_counter()
                for s in range(steps):
                    tok = int(self.decode(tok, n + s).argmax())
                dec.append(time.perf_counter() - t)
        self.reset()
        return {"prefill_tokens": n, "prefill_tok_s": n / sorted(pre)[len(pre) // 2],
                "decode_steps": steps, "decode_tok_s": steps / sorted(dec)[len(dec) // 2]}


def trim_heap() -> None:
    """Hands freed heap back to the system (glibc keeps it otherwise, and the next model would
    be counted on top of it)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


__all__ = ["SignatureModel", "load_tokenizer", "trim_heap"]
