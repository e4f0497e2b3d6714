"""Recipe sweep: convert, check and time each recipe, in one table; the Pareto front; pick one.

    s = sweep("sample_models/llama-tiny", recipes=["none", "dynamic_int8", "fp16", "int8_ff_int4"],
              paths=["reauthored", "export_hf"], prefill=[8], kv=64, out="out/sweep")
    s.rows          # one per recipe and path: size, conversion s and peak memory, prefill/decode tok/s,
                    # logits error and top-1 vs fp32 and vs transformers, perplexity on a bundled text
    s.pareto()      # the labels no other row beats on size, decode speed and error at once
    s.figure()      # size × decode tok/s, coloured by error, the front drawn
    s.pick("dynamic_int8")   # the chosen model (a project's run and bundle take it by default)

Each recipe is an ordinary conversion job (`workbench.convert.convert`, a child process),
then checked and timed where it ran. The work goes to any `concurrent.futures.Executor`:
by default a local pool as wide as the cores and the memory allow, or a Dask cluster
(`executor="tcp://scheduler:8786"`, a `distributed.Client`, or its `get_executor()`); Dask
workers are daemonic, and conversions start their own subprocess, so that works. On a
cluster of several machines, `out` must be a folder every worker can write and the parent
can read (a shared file system); each row records the host it ran on, and its speed is that
host's.

Rows are saved as they finish (atomically): a failed recipe is a row with its error, and a
sweep run again with the same settings skips what is done and does the rest.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from workbench._io import atomic_write_bytes, atomic_write_json, digest, read_json
from workbench.errors import WorkbenchError

KIND = "edge-workbench/sweep"


class SweepError(WorkbenchError):
    """A sweep that cannot start: its recipes, its executor, or its folder."""


# ---- what to try -------------------------------------------------------------------
def _edges(bp) -> dict:
    """First and last layer in fp16 (they are often the most sensitive), the rest int8."""
    ends = sorted({0, bp.num_layers - 1})
    return {"default": "dynamic_int8", "attention": {str(i): "fp16" for i in ends},
            "feedforward": {str(i): "fp16" for i in ends}}


# Per-layer mixes a user often tries first; each is a function of the blueprint.
PRESETS: dict[str, Callable[[Any], dict]] = {
    "int8_ff_int4": lambda bp: {"default": "dynamic_int8", "feedforward": "dynamic_int4_block32"},
    "int8_edges_fp16": _edges,
    "int4_attn_int8": lambda bp: {"default": "dynamic_int4_block32", "attention": "dynamic_int8"},
}
PRESET_HELP = {
    "int8_ff_int4": "int8, feed-forward int4 (block 32)",
    "int8_edges_fp16": "int8, first and last layer fp16",
    "int4_attn_int8": "int4 (block 32), attention int8",
}
EXPORT_HF_SUFFIX = "@export_hf"


@dataclasses.dataclass(frozen=True)
class Item:
    """One row to compute: a recipe on a conversion path, under a unique label."""

    label: str
    recipe: Any  # Recipe.to_json(): a scheme name or a per-layer dict
    path: str = "reauthored"


def plan(recipes: Union[Sequence, dict], bp, paths: Sequence[str] = ("reauthored",)) -> list[Item]:
    """The sweep's rows from what a user names: litert-torch scheme names, preset names
    (`PRESETS`), recipe dicts or `Recipe`s, or a dict label -> any of those; each on every
    path in `paths`. A label with "@export_hf" takes that path alone. An `Item` (a recorded
    row, as `Workbench.rerun` passes them) keeps its own label and path."""
    from workbench.convert_settings import PATHS
    from workbench.recipe import SCHEMES, Recipe

    bad = [p for p in paths if p not in PATHS]
    if bad or not paths:
        raise SweepError(f"unknown conversion path {', '.join(bad) or '(none given)'}",
                         hint=f"choose from {', '.join(PATHS)}")
    named = list(recipes.items()) if isinstance(recipes, dict) else [(None, r) for r in recipes]
    if not named:
        raise SweepError("no recipes to sweep", hint=f"e.g. recipes=['none', 'dynamic_int8', 'fp16', "
                                                     f"'int8_ff_int4'] (presets: {', '.join(PRESETS)})")
    items: list[Item] = []
    for label, spec in named:
        if isinstance(spec, Item):  # a recorded row (a re-run): its label and path as they were
            r = Recipe.parse(spec.recipe)
            r.validate(bp)
            if spec.path not in PATHS:
                raise SweepError(f"unknown conversion path {spec.path!r}", hint=f"choose from {', '.join(PATHS)}")
            items.append(Item(spec.label, r.to_json(), spec.path))
            continue
        only = None
        if isinstance(spec, str) and spec.endswith(EXPORT_HF_SUFFIX):
            spec, only = spec[: -len(EXPORT_HF_SUFFIX)], "export_hf"
        if isinstance(spec, str) and spec in PRESETS:
            label, spec = label or spec, PRESETS[spec](bp)
        elif isinstance(spec, str) and spec not in SCHEMES and not spec.endswith(".json"):
            raise SweepError(f"unknown recipe {spec!r}",
                             hint=f"use a scheme ({', '.join(SCHEMES)}), a preset ({', '.join(PRESETS)}), "
                                  "a recipe dict, or NAME@export_hf")
        r = Recipe.parse(spec)
        r.validate(bp)
        base = label or (r.name if r.name != "mixed" else f"mixed-{digest(r.to_json())[:6]}")
        for path in ([only] if only else paths):
            full = base + (EXPORT_HF_SUFFIX if path == "export_hf" and not base.endswith(EXPORT_HF_SUFFIX) else "")
            items.append(Item(full, r.to_json(), path))
    seen: set[str] = set()
    for it in items:
        if it.label in seen:
            raise SweepError(f"the sweep names {it.label!r} twice", hint="give each recipe once, or label them "
                                                                          "with a dict: {'label': recipe}")
        seen.add(it.label)
    return items


def _file_stem(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", label).strip("-.") or "recipe"


# ---- one row, wherever it runs -------------------------------------------------------
# Jobs running in this process, by task token: a local sweep's stop() cancels them.
_ACTIVE: dict[str, Any] = {}
_ACTIVE_LOCK = threading.Lock()


def _decode_logits(sm, ids: list[int]) -> np.ndarray:
    """Teacher-forced logits at every position, token by token through `decode`."""
    sm.reset()
    out = np.stack([sm.decode(t, p) for p, t in enumerate(ids[:-1])]).astype(np.float32)
    sm.reset()
    return out


def _nll(logits: np.ndarray, targets: Sequence[int]) -> float:
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(targets)), np.asarray(targets)].mean())


def accuracy(logits: np.ndarray, ids: Sequence[int], ref_fp32: np.ndarray, ref_hf: np.ndarray) -> dict:
    """A row's accuracy figures: error and top-1 agreement against the float model the recipe
    starts from and against transformers, and perplexity on the text."""
    from workbench.check import _metrics

    n = len(logits)
    a = _metrics(logits, ref_fp32[:n])
    b = _metrics(logits, ref_hf[:n])
    nll = _nll(logits, ids[1: n + 1])
    return {"err_fp32": a["max_abs_diff"], "top1_fp32": a["top1_agreement"], "err_hf": b["max_abs_diff"],
            "top1_hf": b["top1_agreement"], "perplexity": math.exp(nll) if np.isfinite(nll) else None,
            "finite": bool(np.isfinite(logits).all())}


def run_item(task: dict, progress: Optional[Callable] = None) -> dict:
    """Converts, checks and times one recipe; never raises for a failure of the recipe (the
    row carries the error). Module-level and picklable: Dask and process pools run it."""
    import socket

    from workbench.runtime import SignatureModel
    from workbench.convert import convert
    from workbench.mapping import Mapping

    t0 = time.time()
    row: dict = {"label": task["label"], "recipe": task["recipe"], "path": task["path"],
                 "host": socket.gethostname(), "status": "error"}
    job = None
    try:
        m = Mapping.from_json(task["mapping"], checkpoint=task["checkpoint"])
        job = convert(m, recipe=task["recipe"], prefill=task["prefill"], kv=task["kv"], out=task["out"],
                      name=task["name"], path=task["path"], analyze=False, threads=task["threads"],
                      manifest_extra=task["manifest_extra"], progress=progress)
        with _ACTIVE_LOCK:
            _ACTIVE[task["token"]] = job
        try:
            res = job.result()
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.pop(task["token"], None)
        row.update(file=Path(res.path).name, conversion=Path(res.path).stem, size_bytes=res.size_bytes,
                   seconds=res.seconds, peak_rss_bytes=res.peak_rss_bytes)
        sm = SignatureModel(res.path, threads=task["threads"])
        ids = task["ids"]
        row.update(accuracy(_decode_logits(sm, ids), ids, np.asarray(task["ref_fp32"]), np.asarray(task["ref_hf"])))
        if task.get("engine", "ai-edge-litert") == "litert-lm":
            sm.close()
            row.update(_litert_lm_speed(Path(res.path), task))
        else:
            row.update(sm.speed(task["decode_steps"]))
        row["status"] = "ok"
    except WorkbenchError as e:
        row.update(error=e.message, hint=e.hint, stage=getattr(e, "stage", ""))
    except Exception as e:  # noqa: BLE001 - a recipe's failure is its row, not the sweep's end
        row.update(error=f"{type(e).__name__}: {e}", hint="this recipe failed outside the conversion; the other "
                                                           "rows are unaffected", stage="measure")
    row["cancelled"] = bool(job is not None and getattr(job, "cancelled", False))
    row["wall_s"] = round(time.time() - t0, 2)
    return row


def _litert_lm_speed(tflite: Path, task: dict) -> dict:
    """The row's speed in LiteRT-LM, the on-device runtime: the file bundled (`.litertlm` beside
    it, checked in LiteRT-LM as every bundle is), a greedy session on a fixed prompt, its own
    timings; prefill as prompt tokens / time to first token, as the ai-edge-litert rows."""
    from workbench.bundle import bundle
    from workbench.litert_lm import LiteRtLm

    b = bundle(tflite, tokenizer=task["checkpoint"], out=tflite.with_suffix(".litertlm"))
    with LiteRtLm(b.path, threads=task["threads"]) as lm:
        n = max(1, min(task["decode_steps"], b.check.get("context_length", task["kv"]) -
                       len(lm.prompt_ids(LITERT_LM_PROMPT)) - 1))
        lm.generate(LITERT_LM_PROMPT, 2)  # warm
        bench = lm.generate(LITERT_LM_PROMPT, n)["bench"]
    return {"engine": "litert-lm", "bundle": b.path.name, "decode_tok_s": bench["decode_tok_s"],
            "prefill_tok_s": bench["prefill_tokens"] / bench["ttft_s"] if bench.get("ttft_s") else 0.0}


LITERT_LM_PROMPT = "Once upon a time"

# ---- the sweep ----------------------------------------------------------------------
# (key, label, unit, scale): the table (and the CLI's) shows conversion_paths.cell_text(row[key], key, scale)
COLUMNS = (("size_bytes", "size", "MiB", 2**20), ("seconds", "convert", "s", 1),
           ("peak_rss_bytes", "peak mem", "GB", 1e9), ("prefill_tok_s", "prefill", "tok/s", 1),
           ("decode_tok_s", "decode", "tok/s", 1), ("err_fp32", "max |Δ| vs fp32", "", 1),
           ("top1_fp32", "top-1 vs fp32", "", 1), ("err_hf", "max |Δ| vs transformers", "", 1),
           ("top1_hf", "top-1 vs transformers", "", 1), ("perplexity", "perplexity", "", 1))


class Sweep:
    """A sweep's plan, settings and rows, saved to one JSON record as rows arrive."""

    def __init__(self, items: list[Item], settings: dict, record_path: Path, out: Path,
                 rows: Optional[dict] = None, chosen: Optional[str] = None, created: Optional[str] = None,
                 inputs: Optional[dict] = None, project=None) -> None:
        self.items = items
        self.settings = settings
        self.record_path = Path(record_path)
        self.out = Path(out)
        self.rows: dict[str, dict] = dict(rows or {})
        self.chosen = chosen
        self.created = created or time.strftime("%Y-%m-%dT%H:%M:%S")
        self.inputs = inputs or {}
        self.notes: list[str] = []
        self.project = project
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._task: Optional[dict] = None  # what run() needs (mapping, references): see _attach()
        self._mapping = None
        self._ids: list[int] = []
        self._manifest_extra: dict = {}
        self.on_row: Optional[Callable[[dict], None]] = None

    # -- state --------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return [it.label for it in self.items]

    def todo(self) -> list[Item]:
        return [it for it in self.items if it.label not in self.rows]

    @property
    def done(self) -> bool:
        return not self.todo()

    def row(self, label: str) -> dict:
        if label not in self.labels:
            raise SweepError(f"the sweep has no recipe {label!r}", hint=f"its rows: {', '.join(self.labels)}")
        if label not in self.rows:
            raise SweepError(f"{label!r} has not finished", hint="run the sweep (s.run()) until it has")
        return self.rows[label]

    def ok_rows(self) -> list[dict]:
        return [self.rows[k] for k in self.labels if self.rows.get(k, {}).get("status") == "ok"]

    def to_json(self) -> dict:
        return {"settings": self.settings, "items": [dataclasses.asdict(it) for it in self.items],
                "rows": [self.rows[k] for k in self.labels if k in self.rows], "chosen": self.chosen,
                "pareto": self.pareto(), "notes": self.notes}

    def save(self) -> None:
        with self._lock:
            record = {"kind": KIND, "schema": 1, "created": self.created, "inputs": self.inputs,
                      "result": self.to_json()}
            atomic_write_json(self.record_path, record, SweepError)

    @classmethod
    def load(cls, path: Union[str, Path], project=None) -> "Sweep":
        """A saved sweep (its sweep.json, or a project's sweeps/NAME.json); nothing is recomputed."""
        path = Path(path)
        if path.is_dir():
            path = path / "sweep.json"
        rec = read_json(path, "the sweep", SweepError)
        if rec.get("kind") != KIND:
            raise SweepError(f"{path} is not an Edge Workbench sweep", hint="open a sweep.json written by sweep()")
        res = rec["result"]
        out = Path(res["settings"].get("out") or path.parent)
        if not out.is_absolute():
            out = path.parent / out
        s = cls([Item(**it) for it in res["items"]], res["settings"], path, out,
                {r["label"]: r for r in res["rows"]}, res.get("chosen"), rec.get("created"), rec.get("inputs"),
                project)
        s.notes = list(res.get("notes", []))
        return s

    def file(self, label: str) -> Path:
        r = self.row(label)
        if r.get("status") != "ok":
            raise SweepError(f"{label!r} failed: {r.get('error')}", hint="pick a row that converted")
        return self.out / r["file"]

    # -- running ----------------------------------------------------------------------
    def stop(self) -> None:
        """Stops the sweep: nothing new starts, and conversions running in this process are
        cancelled. What finished is saved; run again to do the rest."""
        self._stop.set()
        with _ACTIVE_LOCK:
            jobs = [_ACTIVE[t] for t in list(self._running) if t in _ACTIVE]
        for job in jobs:
            if threading.current_thread() is getattr(job, "_reader", None):  # asked from the job's own progress
                threading.Thread(target=job.cancel, daemon=True).start()
            else:
                job.cancel()

    def run(self, executor: Any = None, parallel: Optional[int] = None, progress: Optional[Callable] = None,
            retry_failed: bool = False, dask_timeout: float = 10.0) -> "Sweep":
        """Computes the rows not yet done (failed ones too with `retry_failed`), saving each as
        it finishes. `executor`: None (a local pool, `parallel` wide or as wide as cores and
        memory allow), a Dask scheduler address, a `distributed.Client`, or any
        `concurrent.futures.Executor`. Ctrl-C (or `stop()`) stops it; what finished is kept."""
        if retry_failed:
            for k in [k for k, r in self.rows.items() if r.get("status") != "ok"]:
                del self.rows[k]
        todo = self.todo()
        self._stop.clear()
        if not todo:
            return self
        if self._task is None and self._mapping is None:
            raise SweepError("this sweep was loaded from disk and has no model attached",
                             hint="run it again through sweep(...) or wb.sweep(...) with the same settings")
        client, pool, limit, local = self._executor(executor, parallel, dask_timeout)
        try:
            if self._task is None:
                self._attach()
        except BaseException:
            if client is not None:
                client.close()
            raise
        total = len(self.items)

        def report(label: str) -> None:
            if progress is not None:
                progress(f"{len(self.rows)}/{total} recipes", len(self.rows), total, label)

        pending: dict[cf.Future, str] = {}
        queue = list(todo)
        try:
            report("starting")
            while (queue and not self._stop.is_set()) or pending:
                while queue and len(pending) < limit and not self._stop.is_set():
                    it = queue.pop(0)
                    task = self._make_task(it)
                    self._running.add(task["token"])
                    fut = pool.submit(run_item, task) if not local else pool.submit(
                        run_item, task, self._stage_reporter(it.label, progress))
                    pending[fut] = task["token"]
                if not pending:
                    break
                finished, _ = cf.wait(list(pending), timeout=0.5, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    token = pending.pop(fut)
                    self._running.discard(token)
                    row = fut.result() if not fut.cancelled() else None
                    if row is None or (row.get("cancelled") and self._stop.is_set()):
                        continue  # stopped mid-way: not a result, done again on resume
                    self.rows[row["label"]] = row
                    self.save()
                    report(row["label"])
                    if self.on_row is not None:
                        self.on_row(row)
        except BaseException:
            self.stop()
            for fut in pending:
                fut.cancel()
            raise
        finally:
            self._running.clear()
            if local:
                pool.shutdown(wait=True, cancel_futures=True)
            if client is not None:
                client.close()
        return self

    def _attach(self) -> None:
        """Computes the float references the rows are measured against (once per run)."""
        mapping, ids, st = self._mapping, self._ids, self.settings
        ref_fp32, ref_hf = _references(mapping, ids)
        st["perplexity_fp32"] = math.exp(_nll(ref_fp32[:-1], ids[1:]))
        st["perplexity_hf"] = math.exp(_nll(ref_hf[:-1], ids[1:]))
        self._task = {"prefix": st["prefix"], "common": {
            "mapping": mapping.to_json(), "checkpoint": str(mapping.checkpoint.root), "prefill": st["prefill"],
            "kv": st["kv"], "out": str(self.out), "threads": st["threads"], "decode_steps": st["decode_steps"],
            "engine": st.get("engine", "ai-edge-litert"),
            "manifest_extra": self._manifest_extra, "ids": ids, "ref_fp32": ref_fp32[:-1], "ref_hf": ref_hf[:-1]}}

    def _stage_reporter(self, label: str, progress: Optional[Callable]) -> Optional[Callable]:
        if progress is None:
            return None
        total = len(self.items)

        def step(stage: str, done: int, steps: int, detail: str = "") -> None:
            progress(f"{label}: {stage}", len(self.rows), total, detail)

        return step

    def _make_task(self, it: Item) -> dict:
        t = self._task
        assert t is not None
        stem = _file_stem(t["prefix"] + it.label)
        return {**t["common"], "label": it.label, "recipe": it.recipe, "path": it.path, "name": stem,
                "token": f"{id(self)}-{stem}-{time.monotonic_ns()}"}

    def _executor(self, executor: Any, parallel: Optional[int], dask_timeout: float):
        """(client to close, executor, how many at once, whether it is our local pool)."""
        if executor is None:
            n = self._local_parallel(parallel)
            return None, cf.ThreadPoolExecutor(max_workers=n, thread_name_prefix="ewb-sweep"), n, True
        client = None
        if isinstance(executor, str):
            client = _dask_client(executor, dask_timeout)
            executor = client
        if hasattr(executor, "get_executor") and not isinstance(executor, cf.Executor):  # a distributed.Client
            executor = executor.get_executor(pure=False)
        if not isinstance(executor, cf.Executor):
            raise SweepError(f"cannot run a sweep on a {type(executor).__name__}",
                             hint="pass None (a local pool), a Dask scheduler address 'tcp://host:8786', a "
                                  "distributed.Client, or a concurrent.futures.Executor")
        return client, executor, parallel or len(self.items), False

    def _local_parallel(self, requested: Optional[int]) -> int:
        """As many at once as the cores (each run wants `threads`) and memory allow; fewer
        than asked when memory is short, and said so."""
        import psutil

        from workbench.convert import memory_warning

        peak = self.settings["peak_estimate_bytes"]
        avail = psutil.virtual_memory().available
        by_mem = max(1, int(avail // max(peak, 1)))
        by_cpu = max(1, (os.cpu_count() or 1) // max(1, self.settings["threads"]))
        n = min(requested or by_cpu, by_mem)
        if requested and n < requested:
            self._note(f"{requested} conversions at once would need about {requested * peak / 1e9:.1f} GB "
                       f"({peak / 1e9:.1f} GB each); {avail / 1e9:.1f} GB are available: running {n} at once")
        self._note(memory_warning(peak))
        return n

    def _note(self, text: str) -> None:
        """Adds `text` to the notes once: a sweep run again (resumed) does not repeat it."""
        if text and text not in self.notes:
            self.notes.append(text)

    # -- reading the result ------------------------------------------------------------
    def pareto(self) -> list[str]:
        """Labels of the rows no other row beats on size, decode speed and error vs fp32 at
        once (smaller, faster, closer), in size order."""
        rows = [r for r in self.ok_rows() if all(r.get(k) is not None for k in ("size_bytes", "decode_tok_s",
                                                                                 "err_fp32"))]

        def key(r):
            return (r["size_bytes"], -r["decode_tok_s"], r["err_fp32"])

        front = []
        for r in rows:
            a = key(r)
            if not any(all(x <= y for x, y in zip(key(o), a)) and key(o) != a for o in rows):
                front.append(r)
        return [r["label"] for r in sorted(front, key=key)]

    def pick(self, label: str) -> Path:
        """Marks `label` as the chosen model; in a project, run and bundle take it by default."""
        f = self.file(label)
        if not f.is_file():
            raise SweepError(f"{label!r}'s file {f} is gone", hint="run the sweep again to rebuild it")
        self.chosen = label
        if self.project is not None:
            self.project.choose(self.rows[label]["conversion"])
        self.save()
        return f

    def export(self, dest: Union[str, Path], label: Optional[str] = None) -> Path:
        """Copies a row's model (default: the chosen one) and its manifest into `dest`."""
        import shutil

        label = label or self.chosen
        if label is None:
            raise SweepError("no model is chosen", hint="pick one first (s.pick(label)), or name it: "
                                                        "s.export(dest, label)")
        f = self.file(label)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / f.name
        tmp = dest / f".{f.name}.partial-{os.getpid()}"
        shutil.copyfile(f, tmp)
        os.replace(tmp, target)
        man = f.with_suffix(".json")
        if man.is_file():
            atomic_write_bytes(target.with_suffix(".json"), man.read_bytes(), SweepError)
        return target

    def table_html(self) -> str:
        import html

        from workbench.conversion_paths import cell_html

        front = set(self.pareto())
        head = "".join(f"<th style='padding:2px 6px'>{html.escape(label)}{f' ({unit})' if unit else ''}</th>"
                       for _, label, unit, _ in COLUMNS)
        body = []
        for it in self.items:
            r = self.rows.get(it.label)
            mark = ("★ " if it.label in front else "") + ("✓ " if it.label == self.chosen else "")
            name = f"<td style='white-space:nowrap'><b>{mark}{html.escape(it.label)}</b></td>"
            if r is None:
                body.append(f"<tr class='ewb-pending'>{name}<td colspan={len(COLUMNS)} style='color:#777'>"
                            "waiting…</td></tr>")
            elif r.get("status") != "ok":
                body.append(f"<tr class='ewb-failed'>{name}<td colspan={len(COLUMNS)} style='color:#c62828'>"
                            f"{html.escape(str(r.get('error')))}"
                            f"{' — ' + html.escape(r['hint']) if r.get('hint') else ''}</td></tr>")
            else:
                cells = "".join(cell_html(r.get(k), k, s) for k, _, _, s in COLUMNS)
                body.append(f"<tr class='ewb-row'>{name}{cells}</tr>")
        s = self.settings
        return (f"<table class='ewb-sweep'><tr><th>recipe</th>{head}</tr>{''.join(body)}</table>"
                f"<div style='color:#777'>prefill {s['prefill']}, kv {s['kv']}, {s['threads']} threads, "
                f"{s['eval_tokens']} tokens of text (fp32 perplexity {s.get('perplexity_fp32') or float('nan'):.1f}); "
                "★ on the Pareto front (size, decode speed, error), ✓ chosen</div>")

    def _repr_html_(self) -> str:
        return self.table_html()

    def figure(self):
        """Size (x) × decode tok/s (y), each point coloured by log10 of its logits error vs
        fp32; the Pareto front joined by a dashed line; the chosen point ringed."""
        import plotly.graph_objects as go

        rows = [r for r in self.ok_rows() if r.get("decode_tok_s") is not None]
        front = self.pareto()
        err = [math.log10(max(r["err_fp32"], 1e-9)) for r in rows]
        fig = go.Figure()
        fig.add_trace(go.Scatter(
            x=[r["size_bytes"] / 2**20 for r in rows], y=[r["decode_tok_s"] for r in rows], mode="markers+text",
            text=[r["label"] for r in rows], textposition="top center",
            customdata=[[r["label"], r.get("top1_fp32") or 0.0, r.get("perplexity") or float("nan"), r["err_fp32"]]
                        for r in rows],
            marker=dict(size=13, color=err, colorscale="RdYlGn", reversescale=True, showscale=True,
                        colorbar=dict(title="log₁₀ max|Δ|<br>vs fp32", thickness=12),
                        line=dict(width=[3 if r["label"] == self.chosen else 0 for r in rows], color="#1565c0")),
            hovertemplate="<b>%{customdata[0]}</b><br>%{x:.2f} MiB, %{y:.1f} tok/s<br>max|Δ| vs fp32 "
                          "%{customdata[3]:.2g}, top-1 %{customdata[1]:.0%}<br>perplexity %{customdata[2]:.1f}"
                          "<extra></extra>", name="recipes"))
        fr = [self.rows[k] for k in front]
        fig.add_trace(go.Scatter(x=[r["size_bytes"] / 2**20 for r in fr], y=[r["decode_tok_s"] for r in fr],
                                 mode="lines", line=dict(dash="dash", color="#555"), name="Pareto front",
                                 hoverinfo="skip"))
        s = self.settings
        fig.update_layout(height=380, margin=dict(l=50, r=10, t=40, b=40), showlegend=False,
                          title=f"Recipe sweep — kv {s['kv']}, {s['threads']} threads",
                          xaxis_title="size (MiB)", yaxis_title="decode (tok/s)", font=dict(size=11))
        return fig


def _dask_client(address: str, timeout: float):
    """A client of the scheduler at `address`, or a clear error within `timeout` seconds."""
    try:
        from distributed import Client
    except ImportError:
        raise SweepError("Dask's distributed package is not installed",
                         hint="pip install 'edge-workbench[sweep]' (dask[distributed])") from None
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise SweepError(f"the Dask scheduler at {address} did not answer within {timeout:g} s "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no answer'})",
                         hint="start one (`dask scheduler`, then `dask worker ADDRESS` on each machine) and "
                              "check the address, or leave the executor unset to run on this machine") from None
    except ValueError as e:
        raise SweepError(f"{address!r} is not a Dask scheduler address ({e})",
                         hint="e.g. tcp://127.0.0.1:8786") from None


# ---- preparing ------------------------------------------------------------------------
def _eval_ids(checkpoint: Path, n: int) -> tuple[list[int], bool]:
    """The bundled text's first `n` tokens with the model's tokenizer (True), or fixed ids
    when the checkpoint has no tokenizer (False: perplexity then means little)."""
    from workbench.runtime import load_tokenizer
    from workbench.evaltext import EVAL_TEXT

    try:
        ids = list(load_tokenizer(checkpoint)(EVAL_TEXT)["input_ids"])
        return ids[:n], True
    except (FileNotFoundError, ValueError):
        return [1 + (7 * i) % 97 for i in range(n)], False


def _references(mapping, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the float re-authored model and of transformers on `ids` (one model in
    memory at a time)."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM

    from workbench import layers

    hf = AutoModelForCausalLM.from_pretrained(mapping.checkpoint.root, dtype=torch.float32).eval()
    with torch.no_grad():
        ref_hf = hf(torch.tensor([ids])).logits[0].float().numpy()
    del hf
    gc.collect()
    model = mapping.load(kv_cache_length=len(ids))
    ref_fp32 = layers.logits(model, ids, len(ids))[0].float().numpy()
    del model
    gc.collect()
    return ref_fp32, ref_hf


def prepare(source, recipes: Union[Sequence, dict], *, paths: Sequence[str] = ("reauthored",),
            prefill: Sequence[int] = (8,), kv: int = 64, out: Union[str, Path] = "out/sweep",
            threads: int = 2, decode_steps: int = 16, eval_tokens: int = 64, fresh: bool = False,
            record_path: Optional[Path] = None, file_prefix: str = "", manifest_extra: Optional[dict] = None,
            project=None, engine: str = "ai-edge-litert") -> Sweep:
    """A sweep ready to `run()`: rows already saved under the same settings are kept (the
    sweep resumes); a saved sweep of other settings is refused unless `fresh=True`.
    `engine="litert-lm"` times each row in LiteRT-LM, the on-device runtime, on a bundle of
    the row's file (written beside it) instead of ai-edge-litert."""
    from workbench.runner import ENGINES

    if engine not in ENGINES:
        raise SweepError(f"unknown engine {engine!r}", hint=f"choose one of {', '.join(ENGINES)}")
    from workbench.convert import estimate_peak_bytes, mapping_for
    from workbench.convert_settings import ConvertSettings

    mapping = mapping_for(source, "sweep", SweepError)
    bp = mapping.blueprint
    problems = mapping.problems()
    if problems:
        raise SweepError("the mapping has problems; every recipe would fail:\n" +
                         "\n".join(f"  - {p}" for p in problems[:10]), hint="fix the mapping first")
    fit = ConvertSettings(recipe="none", prefill=prefill, kv=kv).resolve(bp)  # the same refusals as convert()
    prefill, kv = list(fit.prefill), fit.kv
    items = plan(recipes, bp, paths)
    out = Path(out).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SweepError(f"cannot create the sweep folder {out}: {e.strerror or e}",
                         hint="choose a folder you can write to") from None
    record_path = Path(record_path) if record_path else out / "sweep.json"
    n_eval = max(2, min(int(eval_tokens), kv))
    ids, tokenized = _eval_ids(Path(mapping.checkpoint.root), n_eval)
    settings = {"prefill": prefill, "kv": int(kv), "threads": int(threads), "decode_steps": int(decode_steps),
                "eval_tokens": len(ids), "tokenized": tokenized, "checkpoint": str(mapping.checkpoint.root),
                "out": str(out), "prefix": file_prefix, "engine": engine,
                "peak_estimate_bytes": max(estimate_peak_bytes(bp, it.path, recipe=it.recipe, kv=kv) for it in items)}
    key = digest({"mapping": mapping.fingerprint(), "ids": ids, **{k: settings[k] for k in
                                                                    ("prefill", "kv", "threads", "decode_steps")},
                   **({"engine": engine} if engine != "ai-edge-litert" else {})})  # old keys unchanged
    settings["key"] = key
    inputs = dict((manifest_extra or {}).get("inputs", {}))
    s = Sweep(items, settings, record_path, out, inputs=inputs, project=project)
    s._manifest_extra = manifest_extra or {}
    if record_path.exists() and not fresh:
        old = Sweep.load(record_path)
        if old.settings.get("key") != key:
            raise SweepError(f"{record_path} holds a sweep of other settings or another model "
                             f"(prefill {old.settings.get('prefill')}, kv {old.settings.get('kv')})",
                             hint="sweep into another folder (or name), or pass fresh=True to start over "
                                  "(its files stay until overwritten)")
        wanted = {it.label: it for it in items}
        for label, r in old.rows.items():
            it = wanted.get(label)
            if it and it.recipe == r.get("recipe") and it.path == r.get("path") and (
                    r.get("status") != "ok" or (out / r["file"]).is_file()):
                s.rows[label] = r
        s.chosen = old.chosen if old.chosen in s.rows else None
        s.created = old.created
    s._mapping, s._ids = mapping, ids
    if record_path.exists() and not fresh:  # the float references are computed when rows are (run)
        s.settings["perplexity_fp32"] = old.settings.get("perplexity_fp32")
        s.settings["perplexity_hf"] = old.settings.get("perplexity_hf")
    s.save()
    return s


def sweep(source, recipes: Union[Sequence, dict], *, executor: Any = None, parallel: Optional[int] = None,
          progress: Optional[Callable] = None, retry_failed: bool = False, dask_timeout: float = 10.0,
          **kwargs) -> Sweep:
    """`prepare(...)` then `run(...)`: converts, checks and times every recipe, saving rows as
    they finish, and returns the Sweep. See the module's docstring."""
    s = prepare(source, recipes, **kwargs)
    return s.run(executor=executor, parallel=parallel, progress=progress, retry_failed=retry_failed,
                 dask_timeout=dask_timeout)


__all__ = ["Sweep", "SweepError", "Item", "PRESETS", "PRESET_HELP", "plan", "prepare", "sweep", "run_item",
           "accuracy"]
