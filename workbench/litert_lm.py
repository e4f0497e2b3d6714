"""LiteRT-LM, the on-device runtime, driven from here: a `.litertlm` bundle loaded, prefilled,
decoded and timed by `litert-lm-api` (`litert_lm.Engine`, its sessions and `Benchmark`).

    with LiteRtLm("out/model.litertlm", threads=2) as lm:
        g = lm.generate("Once upon a time", max_new_tokens=16)     # {"text", "bench", "error", ...}
        lm.detokenize([451, 13, 460])                               # ".\nT"

The runtime is native code: a bundle it cannot read may crash it. So it runs in a child
process (`python -m workbench.litert_lm`), one per LiteRtLm, spoken to in JSON lines over its
stdin/stdout; its log (stderr) goes to a file, and LiteRT-LM's own reason for a failure is
read from it (its Python API only says "run_prefill failed"). A crash is a LiteRtLmError
naming the signal and that reason, never a dead kernel. The XNNPACK weight cache LiteRT-LM
writes on first load (about the model's size) goes to a temporary folder, removed on close,
never beside the bundle.

Stop (`cancel`, from another thread) is LiteRT-LM's `Session.cancel_process`, with two of its
ways handled here (0.18.1): a cancel during prefill ends the prefill task, yet `run_prefill`
returns as if it had finished, and a decode started after it never answers, not even with a
final chunk (the decode task inherits the cancelled state, which its C API's stream callback
does not report); and a cancel before the decode task is queued does nothing. So the child
decodes only if no stop has come, and repeats a stop once decoding. Should the child still not
end a stopped generation within STOP_TIMEOUT_S, it is replaced: a Stop always returns.

LiteRT-LM returns text, not token ids: the ids of a generation are read back through its
own tokenizer, and the bundle check compares the Runner's ids by detokenizing them in
LiteRT-LM (see `workbench.bundle.check_bundle`).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from workbench.errors import WorkbenchError

START_TIMEOUT_S = 120.0  # loading a 1.1B bundle and writing its weight cache takes ~10 s here
# after a stop, the child must end the generation within this; if not, it is replaced by a new
# one (the generation ends "stopped"), so a Stop always returns. It ends within a token here.
STOP_TIMEOUT_S = 15.0
# LiteRT-LM's streaming detokenizer stops on text that is not valid UTF-8
UTF8_STOP = "Stable text shrunk"


_LIVE: "weakref.WeakSet[LiteRtLm]" = weakref.WeakSet()  # closed at exit: no child, log or cache left


def _close_all() -> None:
    for lm in list(_LIVE):
        lm.close()


class LiteRtLmError(WorkbenchError):
    """LiteRT-LM refused a bundle, failed on it, or crashed; the message carries its reason."""


def available() -> bool:
    """Whether litert-lm-api is installed (the `bundle` extra)."""
    import importlib.util

    return importlib.util.find_spec("litert_lm") is not None


def _reason(log: str) -> str:
    """LiteRT-LM's own reason from its log: the last error line's text after the source location
    ("E0000 ... engine.cc:1004] Failed to run prefill: INVALID_ARGUMENT: ..."), or ""."""
    import re

    lines = log.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith(("E0000", "F0000"))]
    if not starts:
        return ""
    first = lines[starts[-1]]
    parts = [first.split("] ", 1)[1] if "] " in first else first]
    for ln in lines[starts[-1] + 1:]:  # its status's trace: "└ ERROR: [file:line]" and "└ the reason"
        if not ln.startswith("└"):
            break
        parts.append(ln.lstrip("└ "))
    where = re.compile(r"\s*ERROR: \[[^\]]*\]\s*")
    return ": ".join(p for p in (where.sub(" ", p).strip(" :") for p in parts) if p)


class LiteRtLm:
    """One `.litertlm` bundle loaded in a LiteRT-LM child process, ready to generate."""

    def __init__(self, path: Union[str, Path], threads: int = 2, cache_dir: Union[str, Path, None] = None,
                 timeout: float = START_TIMEOUT_S) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise LiteRtLmError(f"no bundle at {str(self.path)!r}",
                                hint="bundle the model first (edge-workbench bundle ... --format litertlm)")
        if not available():
            raise LiteRtLmError("LiteRT-LM's Python API (litert-lm-api) is not installed",
                                hint="pip install 'edge-workbench[bundle]' (it brings litert-lm-api)")
        self.threads = threads
        if not _LIVE:
            import atexit

            atexit.unregister(_close_all)
            atexit.register(_close_all)
        _LIVE.add(self)
        self._tmp = Path(tempfile.mkdtemp(prefix="ewb-litert-lm-"))
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self._tmp / "cache"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._log_path = self._tmp / "litert_lm.log"
        self._log = open(self._log_path, "w+b")
        self._lock = threading.RLock()  # one request at a time (RLock: a restart loads under it)
        self._write = threading.Lock()  # a cancel (from another thread) and a request never interleave
        self._busy = False
        self._generation = 0  # numbers each generate request, so a cancel names the one it stops
        self._stop_at: Optional[float] = None  # when a cancel was sent for the running generation
        self.proc: Optional[subprocess.Popen] = None
        try:
            self._start(timeout)
        except BaseException:
            self.close()
            raise
        self.bos: Optional[int] = self.info.get("bos")
        self.eos: list[int] = [i for ids in self.info.get("eos", []) for i in ids]

    def _start(self, timeout: float) -> None:
        """Starts the child and loads the bundle in it."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workbench.litert_lm"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, env=env, cwd=str(Path(__file__).resolve().parent.parent), text=True, bufsize=1)
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()  # this child's replies only
        threading.Thread(target=self._pump, args=(self.proc, self._lines), daemon=True).start()
        self.info = self._request({"op": "load", "model": str(self.path.resolve()), "threads": self.threads,
                                   "cache_dir": str(self.cache_dir)}, timeout=timeout)

    def _restart(self) -> None:
        """Replaces a child that did not end a stopped generation in time (its weight cache is
        kept, so the new one loads fast)."""
        self.proc.kill()
        self.proc.wait()
        self._start(START_TIMEOUT_S)

    # ---- the child's pipe --------------------------------------------------------------
    @staticmethod
    def _pump(proc: subprocess.Popen, lines: "queue.Queue[Optional[str]]") -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def log(self, since: int = 0) -> str:
        """What LiteRT-LM logged (from byte `since`)."""
        try:
            with open(self._log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _log_size(self) -> int:
        try:
            return self._log_path.stat().st_size
        except OSError:
            return 0

    def _why(self, error: str, since: int) -> str:
        """The child's error with LiteRT-LM's own reason from its log (its Python API's
        exceptions only say which call failed)."""
        why = _reason(self.log(since))
        return f"{why} ({error})" if why and why not in error else error

    def _died(self, doing: str) -> LiteRtLmError:
        code = self.proc.wait(timeout=30)
        how = (f"was killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.Signals._value2member_map_
               else f"exited with code {code}")
        why = _reason(self.log())
        return LiteRtLmError(f"LiteRT-LM {how} while {doing} {self.path.name}" + (f": {why}" if why else ""),
                             hint="the bundle's model does not run in the on-device runtime; check it with "
                                  "edge-workbench bundle (it runs this check) and convert it again")

    def _send(self, msg: dict) -> None:
        try:
            with self._write:
                self.proc.stdin.write(json.dumps(msg) + "\n")
                self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._died(f"taking a request ({msg.get('op')}) for") from None

    def _replies(self, doing: str, timeout: Optional[float] = None, stoppable: bool = False) -> Iterator[dict]:
        """The child's replies; with `stoppable`, a generation: once a cancel has been sent,
        the child has STOP_TIMEOUT_S to end it, else it is replaced and the generation ends
        as stopped (yields {"stop_timeout": True})."""
        while True:
            try:
                if stoppable:
                    line = self._lines.get(timeout=0.25)  # wakes to watch a stop's deadline
                else:
                    line = self._lines.get(timeout=timeout)
            except queue.Empty:
                if stoppable:
                    if self._stop_at is not None and time.monotonic() - self._stop_at > STOP_TIMEOUT_S:
                        yield {"stop_timeout": True}
                        return
                    continue
                self.close()
                raise LiteRtLmError(f"LiteRT-LM did not answer within {timeout:.0f} s while {doing} "
                                    f"{self.path.name}", hint="try again with a smaller model or more memory") \
                    from None
            if line is None:
                raise self._died(doing)
            yield json.loads(line)

    def _request(self, msg: dict, timeout: Optional[float] = None) -> dict:
        with self._lock:
            since = self._log_size()
            self._send(msg)
            for reply in self._replies(f"running {msg['op']} on", timeout):
                if "error" in reply:
                    raise LiteRtLmError(f"LiteRT-LM failed to {msg['op']} {self.path.name}: "
                                        f"{self._why(reply['error'], since)}",
                                        hint=reply.get("hint") or "the reason above is LiteRT-LM's own")
                return reply

    # ---- requests ----------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self._request({"op": "tokenize", "text": text})["ids"]

    def detokenize(self, ids: list[int], prefixes: bool = False) -> Union[str, list[str]]:
        """The text of `ids` through LiteRT-LM's tokenizer; with `prefixes`, of ids[:1], ids[:2], ..."""
        return self._request({"op": "detokenize", "ids": [int(i) for i in ids], "prefixes": prefixes})["text"]

    def prompt_ids(self, text: str) -> list[int]:
        """The ids LiteRT-LM prefills for `text` (without a prompt template): its start token, then
        its tokenizer's ids."""
        ids = self.tokenize(text)
        return ([self.bos] if self.bos is not None else []) + ids

    def stream(self, prompt: str, max_new_tokens: int, top_k: int = 1, top_p: float = 1.0, temperature: float = 1.0,
               seed: int = 0) -> Iterator[Union[str, dict]]:
        """Yields text pieces as LiteRT-LM streams them, then one dict: `text`, `bench` (its
        BenchmarkInfo: ttft, prefill/decode tokens and tok/s), `error` (LiteRT-LM's reason when
        it stopped early, else null), `cancelled`, `peak_rss_bytes` (the child's)."""
        msg = {"op": "generate", "id": self._generation + 1, "prompt": prompt, "max_new": int(max_new_tokens),
               "sampler": {"top_k": int(top_k), "top_p": float(top_p), "temperature": float(temperature),
                           "seed": int(seed)}}
        with self._lock:
            self._generation = msg["id"]
            self._stop_at = None
            self._busy = True
            since = self._log_size()
            text = ""
            try:
                self._send(msg)
                for reply in self._replies("generating with", stoppable=True):
                    if "piece" in reply:
                        text += reply["piece"]
                        yield reply["piece"]
                    elif "stop_timeout" in reply:
                        self._restart()
                        yield {"text": text, "bench": {}, "error": None, "cancelled": True, "peak_rss_bytes": 0,
                               "restarted": f"LiteRT-LM did not end the generation within {STOP_TIMEOUT_S:.0f} s "
                                            "of the stop: its process was replaced"}
                        return
                    elif "error" in reply and "done" not in reply:
                        raise LiteRtLmError(f"LiteRT-LM failed to generate with {self.path.name}: "
                                            f"{self._why(reply['error'], since)}",
                                            hint="the reason above is LiteRT-LM's own")
                    else:
                        err = reply["done"].get("error")
                        reply["done"]["error"] = self._why(err, since) if err else None
                        yield reply["done"]
                        return
            finally:
                self._busy = False
                self._stop_at = None

    def generate(self, prompt: str, max_new_tokens: int, **sampler) -> dict:
        pieces, done = [], {}
        for item in self.stream(prompt, max_new_tokens, **sampler):
            if isinstance(item, dict):
                done = item
            else:
                pieces.append(item)
        done["pieces"] = pieces
        return done

    def cancel(self) -> None:
        """Stops a running generation after its current token (from another thread); one that
        was asked for but has not started yet (its request still queued in the child) does not
        start decoding. Bounded: a child that does not end it within STOP_TIMEOUT_S is replaced."""
        if self._busy and self.proc.poll() is None:
            if self._stop_at is None:
                self._stop_at = time.monotonic()
            try:
                with self._write:
                    self.proc.stdin.write(json.dumps({"op": "cancel", "id": self._generation}) + "\n")
                    self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass

    def benchmark(self, prefill_tokens: int, decode_tokens: int, prompt: str = "How are you") -> dict:
        """litert_lm.Benchmark on this bundle (an engine of its own, in the child): its figures."""
        return self._request({"op": "benchmark", "prefill": int(prefill_tokens), "decode": int(decode_tokens),
                              "prompt": prompt, "threads": self.threads, "cache_dir": str(self.cache_dir)})["bench"]

    def close(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()
                proc.wait(timeout=10)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(getattr(self, "_tmp", ""), ignore_errors=True) if getattr(self, "_tmp", None) else None

    def __enter__(self) -> "LiteRtLm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


# ---------------------------------------------------------------------------------------
# the child


def _bench(info) -> dict:
    return {"init_s": info.init_time_in_second, "ttft_s": info.time_to_first_token_in_second,
            "prefill_tokens": info.last_prefill_token_count, "prefill_tok_s": info.last_prefill_tokens_per_second,
            "decode_tokens": info.last_decode_token_count, "decode_tok_s": info.last_decode_tokens_per_second}


def _child() -> None:  # pragma: no cover - runs in the child process (its behaviour is tested through LiteRtLm)
    # the protocol owns fd 1; anything native code prints goes to the log instead
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import litert_lm
    import psutil

    me = psutil.Process()
    state: dict[str, Any] = {"engine": None, "session": None, "peak": 0, "generation": None, "cancel": None}
    lines: "queue.Queue[Optional[dict]]" = queue.Queue()
    # cancel_process and a session's close never overlap (a cancel on a deleted session is a
    # use-after-free), and a stop is recorded before it is acted on
    guard = threading.Lock()

    def say(**kw) -> None:
        out.write(json.dumps(kw) + "\n")

    def stopped() -> bool:
        return state["cancel"] is not None and state["cancel"] == state["generation"]

    def read() -> None:  # cancel must reach a running generation: a reader beside it
        for line in sys.stdin:
            msg = json.loads(line)
            if msg.get("op") == "cancel":
                with guard:
                    state["cancel"] = msg.get("id")  # remembered: the generation may not have started yet
                    s = state["session"]
                    if s is not None and stopped():
                        s.cancel_process()  # ends its prefill, or its decode after the current token
            else:
                lines.put(msg)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    while True:
        msg = lines.get()
        if msg is None:
            return
        op = msg["op"]
        try:
            if op == "load":
                state["engine"] = eng = litert_lm.Engine(
                    msg["model"], backend=litert_lm.Backend.CPU(thread_count=msg["threads"]),
                    enable_benchmark=True, cache_dir=msg["cache_dir"])
                say(bos=eng.bos_token_id, eos=eng.eos_token_ids)
            elif op == "tokenize":
                say(ids=list(state["engine"].tokenize(msg["text"])))
            elif op == "detokenize":
                eng, ids = state["engine"], msg["ids"]
                say(text=[eng.detokenize(ids[: n + 1]) for n in range(len(ids))] if msg["prefixes"]
                    else eng.detokenize(ids) if ids else "")
            elif op == "generate":
                eng, sc = state["engine"], msg["sampler"]
                s = eng.create_session(apply_prompt_template=False, max_output_tokens=msg["max_new"],
                                       sampler_config=litert_lm.SamplerConfig(
                                           top_k=sc["top_k"], top_p=sc["top_p"], temperature=sc["temperature"],
                                           seed=sc["seed"]))
                with guard:
                    state["generation"], state["session"] = msg.get("id"), s
                text, error, cancelled = "", None, False
                peak = me.memory_info().rss
                try:
                    s.run_prefill([msg["prompt"]])  # (a session that never prefilled hangs in LiteRT-LM's teardown)
                    # A stop during the prefill cancels its task, yet run_prefill returns normally; a
                    # decode after a cancelled prefill never answers (LiteRT-LM 0.18.1 sends no chunk for
                    # a task whose dependency was cancelled): so no decode once a stop has come.
                    if not stopped():
                        asked = False
                        for n, r in enumerate(s.run_decode_async()):
                            piece = "".join(r.texts)
                            text += piece
                            say(piece=piece)
                            if n % 8 == 0:
                                peak = max(peak, me.memory_info().rss)
                            if stopped() and not asked:
                                # a stop that came between prefill and the decode task being queued was a
                                # no-op in LiteRT-LM (nothing to cancel yet): ask again, now it is decoding
                                asked = True
                                with guard:
                                    s.cancel_process()
                except RuntimeError as e:
                    error = str(e)
                    cancelled = "CANCELLED" in error
                with guard:
                    state["session"] = None
                cancelled = cancelled or stopped()
                peak = max(peak, me.memory_info().rss)
                try:
                    bench = _bench(s.get_benchmark_info())
                except RuntimeError:
                    bench = {}
                s.close()
                say(done={"text": text, "bench": bench, "error": None if cancelled else error,
                          "cancelled": cancelled, "peak_rss_bytes": peak})
            elif op == "benchmark":
                info = litert_lm.Benchmark(
                    model_path=state["engine"].model_path, backend=litert_lm.Backend.CPU(thread_count=msg["threads"]),
                    prefill_tokens=msg["prefill"], decode_tokens=msg["decode"], prompt=msg["prompt"],
                    cache_dir=msg["cache_dir"]).run()
                say(bench=_bench(info))
            else:
                say(error=f"unknown request {op!r}")
        except Exception as e:  # noqa: BLE001 - reported to the parent with LiteRT-LM's logged reason
            sys.stderr.flush()
            say(error=f"{type(e).__name__}: {e}")


if __name__ == "__main__":  # pragma: no cover
    _child()


__all__ = ["LiteRtLm", "LiteRtLmError", "available", "UTF8_STOP"]
