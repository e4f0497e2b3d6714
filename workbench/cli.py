"""`edge-workbench`: every step as a subcommand.

The rule for every subcommand: human text by default; with `--json`, exactly one
JSON object on stdout; on failure a non-zero exit and, with `--json`,
`{"error": ..., "hint": ...}` on stdout (the message goes to stderr as well, on one line
with its fix in the command line's words).

Exit codes: 0 done; 1 bad input (the message names the fix); 3 a bug or a broken
environment; 4 a comparison ran and did not pass; 5 a command reported problems
(`blueprint`, `map`; `--allow-problems` exits 0 instead); 130 interrupted (nothing half
written is left).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from workbench.errors import WorkbenchError
from workbench.project import RERUN

EXIT_ERROR = 1  # the input was wrong: the message says how to fix it
EXIT_CRASH = 3  # a bug or an environment failure: the message carries the exception
EXIT_NOT_PASSED = 4  # ran, but the result is outside the tolerance
EXIT_PROBLEMS = 5  # ran, and reported problems (blueprint, map): a script must be able to tell
EXIT_INTERRUPTED = 130  # Ctrl-C: the job was cancelled and what it had made removed


def _human_bytes(n: int) -> str:
    from workbench.blueprint import _human

    return _human(n)


def _project(args: argparse.Namespace, write: bool, positional: str = "hf_dir",
             hint: str = "with --project the project's own checkpoint is used"):
    """The project of `--project DIR` (opened for writing when the command records a result;
    closed by `main`). The command's positional argument, if given too, is refused."""
    from workbench.project import Workbench

    given = getattr(args, positional, None)
    if given:
        raise WorkbenchError(f"give either {positional.upper()} ({given}) or --project, not both", hint=hint)
    wb = Workbench.open(args.project, readonly=False if write else True)
    args._projects.append(wb)
    return wb


def _need_source(args: argparse.Namespace) -> None:
    if not args.hf_dir and not getattr(args, "project", None):
        raise WorkbenchError("no model given", hint="give a Hugging Face folder (HF_DIR) or --project DIR")


HUB_ARGS = ("hf_dir", "from_hf", "tokenizer", "checkpoint")  # the arguments that take a model folder, or a Hub id


def _resolve_hub_ids(args: argparse.Namespace) -> None:
    """Every model-folder argument given as a Hub id (`org/name[@rev]`, not an existing path)
    becomes its snapshot in the hub's cache, downloaded first if needed, with progress on
    stderr. `blueprint` needs config.json only; `--tokenizer` the config and tokenizer files."""
    from workbench import hub

    shown = {"file": "", "tenth": -1}

    def progress(stage: str, done: int, total: int, detail: str = "") -> None:
        tenth = done * 10 // total if total else 0
        if detail != shown["file"] or tenth != shown["tenth"]:
            shown.update(file=detail, tenth=tenth)
            print(f"{stage}: {done / 1e6:,.1f} / {total / 1e6:,.1f} MB  {detail}", file=sys.stderr, flush=True)

    for name in HUB_ARGS:
        value = getattr(args, name, None)
        if hub.is_hub_id(value):
            need = "config" if args.command == "blueprint" else "tokenizer" if name == "tokenizer" else "all"
            args._given[name] = value  # what the user typed, for messages
            setattr(args, name, str(hub.resolve(value, need=need, progress=progress)))


# ---- blueprint ------------------------------------------------------------------
def cmd_blueprint(args: argparse.Namespace) -> tuple[dict, str]:
    from workbench import configs
    from workbench.blueprint import Blueprint

    _need_source(args)
    if args.project:
        wb = _project(args, write=False)
        wb._need_blueprint()
        bp = wb.blueprint
    else:
        bp = Blueprint.from_hf(args.hf_dir)
    if args.kv is not None:
        bp.set("kv_cache_length", args.kv)
    s = bp.summary()
    problems = bp.problems()
    config = None  # with problems, no ModelConfig can hold the blueprint: the problems say why
    if not problems:
        config = configs.to_jsonable(configs.model_config(bp))
    out = {
        "family": bp.family,
        "name": bp.name,
        "params": s.params,
        "params_by_block": s.params_by_block,
        "problems": [str(p) for p in problems],
        "config": config,
        "memory": {"weights_bytes": s.weights_bytes, "kv_cache_bytes": s.kv_cache_bytes,
                   "kv_cache_length": s.kv_cache_length},
        "decode_flops_per_token": s.decode_flops_per_token,
        "uses_workbench_layers": bp.needs_own_layers() if not problems else None,
        "blueprint": bp.to_json(),
    }
    lines = [
        f"{bp.name} ({bp.family}): {bp.num_layers} layers, hidden {bp.hidden_size}, "
        f"{bp.layer.num_heads} heads / {bp.layer.num_kv_heads} KV heads, vocab {bp.vocab_size}",
        f"parameters: {s.params:,}  ("
        + ", ".join(f"{k} {v:,}" for k, v in s.params_by_block.items()) + ")",
        "weights:    " + ", ".join(f"{k} {_human_bytes(v)}" for k, v in s.weights_bytes.items()),
        f"KV cache:   {_human_bytes(s.kv_cache_bytes)} for {s.kv_cache_length} tokens ({bp.kv_cache_dtype})",
    ]
    lines += ["problems:"] + [f"  - {p}" for p in problems] if problems else ["problems:   none"]
    _problems_exit(args, bool(problems))
    return out, "\n".join(lines)


def _problems_exit(args: argparse.Namespace, found: bool) -> None:
    """A command that reports problems exits EXIT_PROBLEMS, unless --allow-problems."""
    if found and not args.allow_problems:
        args._exit_code = EXIT_PROBLEMS


def cmd_map(args: argparse.Namespace) -> tuple[dict, str]:
    from workbench.blueprint import Blueprint
    from workbench.mapping import Mapping

    _need_source(args)
    wb = _project(args, write=True) if args.project else None
    if wb is not None:
        if args.mapping:  # its patterns and edits, onto the project's blueprint
            from workbench.project import read_json

            m = Mapping.from_json(read_json(Path(args.mapping), "the mapping"), checkpoint=wb.checkpoint_path(),
                                  blueprint=wb.blueprint, where=args.mapping)
        else:
            m = wb.mapping
    elif args.mapping:
        m = Mapping.open(args.mapping, checkpoint=args.hf_dir)
    else:
        m = Mapping.propose(Blueprint.from_hf(args.hf_dir), args.hf_dir)
    entries = m.table()
    out = {
        "tensor_names": {k: v for k, v in m.tensor_names.items() if v},
        "entries": [e.to_json() for e in entries],
        "problems": [str(p) for p in m.problems()],
        "unused": m.unused(),
        "unused_harmless": m.unused(harmless=True),
        "counts": m.counts(),
        "notes": sorted({e.hint for e in entries if e.status == "ok" and e.converted}),
    }
    if wb is not None:  # recorded (with --save) only when it can load: a project's mapping is a reviewed one
        out["saved"] = bool(args.save) and not out["problems"] and not out["unused"]
        if out["saved"]:
            wb.save_mapping(m)
    elif args.save:
        raise WorkbenchError("--save records the mapping in a project", hint="give --project DIR to save it there")
    _problems_exit(args, bool(out["problems"] or out["unused"]))
    width = max((len(e.target) for e in entries), default=10)
    lines = [f"{len(m.checkpoint.tensors)} source tensors -> {sum(1 for e in entries if e.target)} parameters: "
             + ", ".join(f"{k} {v}" for k, v in out["counts"].items())]
    lines += [f"  {e.target or '(unused)':<{width}}  {e.status:<13} {e.source}" for e in entries]
    lines += ["problems:"] + [f"  - {p}" for p in out["problems"]] if out["problems"] else ["problems: none"]
    if wb is not None:
        lines.append(f"saved to {wb.root / 'mapping.json'}" if out["saved"] else
                     f"not saved: run edge-workbench map --project {wb.root} --save" if not args.save else
                     "not saved to the project: fix the problems and unused tensors first")
    return out, "\n".join(lines)



def cmd_compare(args: argparse.Namespace) -> tuple[dict, str]:
    from workbench.blueprint import Blueprint
    from workbench.compare import compare
    from workbench.mapping import Mapping

    _need_source(args)
    prompts = [args.prompt] if args.prompt else None
    if args.project:
        wb = _project(args, write=True)
        c = wb.compare(args.name, prompts=prompts, tol=args.tol, max_new_tokens=args.max_new, tflite=args.tflite)
    else:
        if args.mapping:
            m = Mapping.open(args.mapping, checkpoint=args.hf_dir)
            bp = m.blueprint
        else:
            bp = Blueprint.from_hf(args.hf_dir)
            m = Mapping.propose(bp, args.hf_dir)
        c = compare(args.hf_dir, bp, m, prompts=prompts, tol=args.tol, max_new_tokens=args.max_new,
                    tflite=args.tflite)
    return _comparison_report(c, args)


def _comparison_report(c, args: argparse.Namespace) -> tuple[dict, str]:
    out = c.to_json()
    g = c.generation
    lines = [f"{'PASSED' if c.passed else 'NOT PASSED'}: {c.verdict()}",
             f"  greedy, original:    {g['reference_text']!r}",
             f"  greedy, re-authored: {g['reauthored_text']!r}" +
             (f"  (first differing token: #{g['first_diff']})" if g["first_diff"] is not None else "")]
    lines += [f"  {r.name:<42} max {r.max_abs_diff:9.3g}  mean {r.mean_abs_diff:9.3g}  cos {r.cosine:.6f}"
              for r in c.records]
    lines += [f"  note: {n}" for n in c.notes]
    if c.converted:
        v = c.converted
        lines.append(f"converted {Path(v['path']).name}: max abs diff {v['max_abs_diff']:.3g}, "
                     f"top-1 agreement {v['top1_agreement']:.0%} over {v['positions']} positions")
    if not c.passed:
        args._exit_code = EXIT_NOT_PASSED
    return out, "\n".join(lines)


def cmd_convert(args: argparse.Namespace) -> tuple[dict, str]:
    from workbench.blueprint import Blueprint
    from workbench.convert import convert
    from workbench.mapping import Mapping

    _need_source(args)
    wb = _project(args, write=True) if args.project else None
    if wb is None:
        m = Mapping.open(args.mapping, checkpoint=args.hf_dir) if args.mapping else \
            Mapping.propose(Blueprint.from_hf(args.hf_dir), args.hf_dir)
    else:
        wb._need_blueprint()
    prefill = _prefill(args.prefill)
    progress = _progress_printer()

    from workbench.convert import estimate_peak_bytes, memory_warning

    bp_now = wb.blueprint if wb is not None else m.blueprint
    est = estimate_peak_bytes(bp_now, args.path, recipe=args.recipe, kv=args.kv)
    print(f"estimated memory needed: {est / 1e9:.1f} GB", file=sys.stderr)
    if memory_warning(est):
        print(f"warning: {memory_warning(est)}", file=sys.stderr)
    made = _missing_folder(Path(args.out)) if wb is None else None  # what this run creates, removed on Ctrl-C
    try:
        if wb is not None:
            job = wb.convert(args.name, recipe=args.recipe, prefill=prefill, kv=args.kv, progress=progress,
                             path=args.path, kv_layout=args.kv_layout)
        else:
            job = convert(m, recipe=args.recipe, prefill=prefill, kv=args.kv, out=args.out, name=args.name,
                          progress=progress, path=args.path, kv_layout=args.kv_layout)
        res = _wait(job)
    except KeyboardInterrupt:
        _remove_if_empty(made)
        raise
    except WorkbenchError:
        _remove_if_empty(made)  # a refusal or a failed job leaves no empty output folder behind
        raise
    return _conversion_report(res)


def _progress_printer(first: int = 1) -> Callable:
    """A progress callback printing `[n/total] stage: detail` lines to stderr, each once
    (`first`: the number the first step shows)."""
    last = [""]

    def progress(stage: str, done: int, total: int, detail: str = "") -> None:
        line = f"[{done + first}/{total}] {stage}: {detail}"
        if line != last[0]:
            print(line, file=sys.stderr, flush=True)
            last[0] = line

    return progress


def _wait(job):
    """A conversion job's result; Ctrl-C cancels the job (its child ends, nothing is left)."""
    try:
        return job.result()
    except KeyboardInterrupt:
        job.cancel()
        raise


def _conversion_report(res) -> tuple[dict, str]:
    out = res.to_json()
    c = res.check
    text = (f"wrote {res.path} ({res.size_bytes:,} bytes) in {res.seconds:.1f} s, peak {res.peak_rss_bytes / 1e9:.2f} GB\n"
            f"signatures: {', '.join(res.signatures)}\n"
            f"check ({c['positions']} decoded positions vs transformers): max abs diff {c['max_abs_diff']:.3g}, "
            f"top-1 agreement {c['top1_agreement']:.0%}, mean cosine {c['mean_cosine']:.6f}\n"
            f"manifest: {res.manifest_path}")
    return out, text


def _missing_folder(folder: Path) -> Optional[Path]:
    """The outermost folder of `folder`'s path that does not exist yet (what a run creates)."""
    folder = folder.absolute()
    top = None
    while not folder.exists():
        top, folder = folder, folder.parent
        if folder == folder.parent:
            break
    return top


def _remove_if_empty(top: Optional[Path]) -> None:
    """Removes the folders a run created, bottom-up, while they are empty."""
    if top is None or not top.is_dir():
        return
    for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [top]:
        try:
            d.rmdir()
        except OSError:
            return


def cmd_families(args: argparse.Namespace) -> tuple[dict, str]:
    from workbench import families

    rows = [{"model_type": f.model_type, "example": f.example, "features": list(f.features)}
            for f in families.FAMILIES.values()]
    refused = [{"model_type": k, "reason": v} for k, v in families.UNSUPPORTED.items()]
    text = "\n".join(f"{r['model_type']:<12} litert-torch example: {r['example']}\n"
                     f"{'':<12} {', '.join(r['features'])}" for r in rows)
    text += "\n\nnot importable here:\n" + "\n".join(f"{r['model_type']:<12} {r['reason']}" for r in refused)
    return {"families": rows, "unsupported": refused}, text


def _prefill(text: str) -> list[int]:
    try:
        return [int(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise WorkbenchError(f"--prefill {text!r} is not a list of lengths", hint="e.g. --prefill 8,64") from None


def cmd_paths(args: argparse.Namespace) -> tuple[dict, str]:
    from workbench.blueprint import Blueprint
    from workbench.mapping import Mapping
    from workbench.conversion_paths import compare_paths

    _need_source(args)
    kw = dict(recipe=args.recipe, prefill=_prefill(args.prefill), kv=args.kv, threads=args.threads,
              progress=_progress_printer())
    if args.project:
        table = _project(args, write=True).compare_paths(**kw)
    else:
        m = Mapping.propose(Blueprint.from_hf(args.hf_dir), args.hf_dir)
        table = compare_paths(m, out=args.out, **kw)
    return _paths_report(table)


def _paths_report(table) -> tuple[dict, str]:
    from workbench.conversion_paths import COLUMNS, LABELS

    lines = _text_header("path", 26, COLUMNS, 16)
    lines += [f"{LABELS[r['path']]:<26}" + _text_cells(r, COLUMNS, 16) for r in table.rows]
    return table.to_json(), "\n".join(lines)


def _text_header(first: str, first_width: int, columns: tuple, width: int) -> list[str]:
    """A text table's header: each column's whole label, wrapped to the column, with its unit
    in brackets under it, bottom-aligned over the numbers; `first` heads the row labels."""
    import textwrap

    cells = [textwrap.wrap(label, width - 2) + ([f"({unit})"] if unit else []) for _, label, unit, _ in columns]
    height = max(map(len, cells))
    cells = [[""] * (height - len(c)) + c for c in cells]
    return [(f"{first if i == height - 1 else '':<{first_width}}" + "".join(f"{c[i]:>{width}}" for c in cells)).rstrip()
            for i in range(height)]


def _text_cells(row: dict, columns: tuple, width: int) -> str:
    """A table row's measures as right-aligned text, formatted as the notebook's table shows
    them (`conversion_paths.cell_text`: top-1 as a percentage, errors to two significant digits, ...)."""
    from workbench.conversion_paths import cell_text

    return "".join(f"{cell_text(row.get(key), key, scale):>{width}}" for key, _, _, scale in columns)


def _finite(obj: Any) -> Any:
    """JSON-safe: NaN and infinities (a diverged recipe's error) become None."""
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def cmd_sweep(args: argparse.Namespace) -> tuple[dict, str]:
    from workbench.sweep import sweep

    _need_source(args)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    progress = _progress_printer(first=0)
    kw = dict(paths=paths, prefill=_prefill(args.prefill), kv=args.kv, threads=args.threads, fresh=args.fresh)
    if args.engine != "ai-edge-litert":
        kw["engine"] = args.engine
    run = dict(executor=args.dask, parallel=args.parallel, progress=progress, retry_failed=args.retry_failed,
               dask_timeout=args.dask_timeout)
    if args.project:
        if args.out:
            raise WorkbenchError("--out is for a sweep of HF_DIR; a project's sweep lives in the project "
                                 "(sweeps/NAME.json, models in conversions/)", hint="drop --out, or sweep HF_DIR")
        s = _project(args, write=True).sweep(args.name, recipes, **kw, **run)
    else:
        s = sweep(args.hf_dir, recipes, out=args.out or "out/sweep", **kw, **run)
    if args.pick:
        s.pick(args.pick)
    return _sweep_report(s)


def _sweep_report(s) -> tuple[dict, str]:
    from workbench.sweep import COLUMNS

    rows = [s.rows[k] for k in s.labels if k in s.rows]
    lines = _text_header("recipe", 28, COLUMNS, 14)
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"{r['label']:<28}  failed: {r.get('error')}")
            continue
        lines.append(f"{r['label']:<28}" + _text_cells(r, COLUMNS, 14))
    lines.append(f"Pareto front: {', '.join(s.pareto()) or 'none'}" + (f"; chosen: {s.chosen}" if s.chosen else ""))
    lines += [f"note: {n}" for n in s.notes]
    return {"rows": rows, "pareto": s.pareto(), "chosen": s.chosen, "notes": s.notes,
            "record": str(s.record_path), "settings": s.settings}, "\n".join(lines)


_PICK_CONVERSION = "with --project, --conversion NAME picks one of its conversions"


def cmd_run(args: argparse.Namespace) -> tuple[dict, str]:
    from workbench.runner import Runner

    if args.project:
        wb = _project(args, write=False, positional="model", hint=_PICK_CONVERSION)
        name = args.conversion or wb.latest_conversion()
        model = wb.conversion_path(name)
        tokenizer = args.tokenizer or wb.checkpoint_path()
        if args.engine == "litert-lm":  # LiteRT-LM runs the conversion's bundle
            model = wb.root / "bundles" / f"{name}.litertlm"
            if not model.is_file():
                raise WorkbenchError(f"the conversion {name!r} has no LiteRT-LM bundle yet",
                                     hint=f"edge-workbench bundle --project {args.project} --conversion {name} "
                                          "--format litertlm, then run again")
    else:
        if not args.model:
            raise WorkbenchError("no model given", hint="give a .tflite (MODEL) or --project DIR")
        model, tokenizer = args.model, args.tokenizer or _recorded_checkpoint(Path(args.model))
        if tokenizer is None and args.engine != "litert-lm":  # a bundle carries its tokenizer
            raise WorkbenchError(f"run needs the tokenizer of {Path(args.model).name}, and its manifest names no "
                                 "checkpoint that still holds one",
                                 hint="give --tokenizer HF_DIR (the checkpoint the model was converted from)")
    r = Runner(model, tokenizer=tokenizer, threads=args.threads, engine=args.engine)
    kw = dict(max_new_tokens=args.max_new, sampling=args.sampling, temperature=args.temperature, top_k=args.top_k,
              top_p=args.top_p, seed=args.seed, chat=args.chat)
    if args.json:
        g = r.generate(args.prompt, **kw)
    else:  # stream as it comes
        print(args.prompt, end="", flush=True)
        g = r.generate(args.prompt, on_text=lambda piece: print(piece, end="", flush=True), **kw)
        print(flush=True)
    out = {**g.to_json(), "model": str(model), "engine": args.engine}
    if r.lm is not None:
        r.close()
    text = (f"[{len(g.ids)} tokens, {g.stop_reason}; time to first token {g.ttft_s * 1000:.1f} ms, "
            f"prefill {g.prefill_tok_s:,.0f} tok/s, decode {g.decode_tok_s:,.1f} tok/s, "
            f"peak {g.peak_rss_bytes / 1e9:.2f} GB]")
    if not args.json:
        print(text, file=sys.stderr)
        return out, ""
    return out, text


def _recorded_checkpoint(model: Path) -> Optional[str]:
    """The checkpoint a converted model's manifest names, if that folder still holds a tokenizer."""
    from workbench.checkpoint import tokenizer_digest

    try:
        ck = Path(json.loads(model.with_suffix(".json").read_text())["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(ck) if tokenizer_digest(ck) is not None else None


def cmd_bundle(args: argparse.Namespace) -> tuple[dict, str]:
    from workbench.bundle import bundle

    if args.project:
        res = _project(args, write=True, positional="model", hint=_PICK_CONVERSION).bundle(args.format, conversion=args.conversion)
    else:
        if not args.model or not args.tokenizer:
            raise WorkbenchError("bundle needs a model and its tokenizer",
                                 hint="edge-workbench bundle MODEL.tflite --tokenizer HF_DIR --format litertlm")
        res = bundle(args.model, args.tokenizer, format=args.format, out=args.out)
    c = res.check
    return res.to_json(), (f"wrote {res.path} ({res.size_bytes:,} bytes, {res.format}); reopened: model decodes "
                           f"{'finite' if c.get('decode_finite') else 'NOT finite'}, tokenizer round-trip "
                           f"{'ok' if c.get('tokenizer_roundtrip') else 'FAILED'}")


def cmd_new(args: argparse.Namespace) -> tuple[dict, str]:
    from workbench.project import Workbench

    wb = Workbench.new(args.dir, from_hf=args.from_hf, name=args.name, copy_checkpoint=args.copy_checkpoint)
    steps = wb.status()
    wb.close()
    return ({"project": str(wb.root), "steps": steps},
            f"created {wb.root} from {args._given.get('from_hf', args.from_hf)}\n" + "\n".join(f"  {k:<12} {v}" for k, v in steps.items()))


def cmd_set_checkpoint(args: argparse.Namespace) -> tuple[dict, str]:
    wb = _project(args, write=True, positional="checkpoint_dir")
    wb.set_checkpoint(args.checkpoint)
    steps = wb.status()
    return ({"project": str(wb.root), "checkpoint": str(wb.checkpoint_path()), "steps": steps},
            f"{wb.root} now reads its checkpoint from {wb.checkpoint_path()}\n"
            + "\n".join(f"  {k:<12} {v}" for k, v in steps.items()))


def cmd_status(args: argparse.Namespace) -> tuple[dict, str]:
    wb = _project(args, write=False)
    d = wb.status(detail=True)
    lines = [f"{wb.root} ({wb.name})"]
    lines += [f"  {k:<12} {v}" + (f"  ({d['why'][k]})" if k in d["why"] else "") for k, v in d["steps"].items()]
    lines += [f"    {kind[:-1]} {n}: {state}" + (f" ({d['why'][kind + '/' + n]})" if kind + "/" + n in d["why"] else "")
              for kind in ("comparisons", "conversions") for n, state in d[kind].items()]
    lines += [f"  problem: {p}" for p in d["problems"]]
    lines += [f"  leftover from a killed process: {p}" for p in d["leftovers"]]
    d.pop("readonly"), d.pop("notice")
    return d, "\n".join(lines)



def cmd_rerun(args: argparse.Namespace) -> tuple[dict, str]:
    """A step made again with the settings of its newest result, on the project as it is now."""
    wb = _project(args, write=True)
    step = args.step
    if step == "mapping":
        wb.rerun("mapping")
        steps = wb.status()
        return {"step": step, "steps": steps}, "saved the mapping again\n" + "\n".join(
            f"  {k:<12} {v}" for k, v in steps.items())
    progress = _progress_printer(first=0 if step == "sweeps" else 1)
    if step == "comparisons":
        return _comparison_report(wb.rerun(step), args)
    if step == "conversions":
        return _conversion_report(_wait(wb.rerun(step, progress=progress)))
    if step == "paths":
        return _paths_report(wb.rerun(step, progress=progress))
    return _sweep_report(wb.rerun(step, progress=progress))


def cmd_explore(args: argparse.Namespace) -> tuple[dict, str]:
    """Exports the graphs, starts the guarded Model Explorer server, prints its URL (with the
    secret) as soon as it answers, and serves until interrupted."""
    import time

    from workbench.explore import Explorer

    _need_source(args)
    source = _project(args, write=False) if args.project else args.hf_dir

    def progress(stage: str, done: int, total: int, detail: str = "") -> None:
        print(f"[{done + 1}/{total}] {stage}: {detail}", file=sys.stderr, flush=True)

    ex = Explorer(source, port=args.port, tflite=args.tflite)
    try:
        graphs = ex.export(None, progress)
        for name, g in graphs.items():
            if not g.ok:
                print(f"{name}: {g.error}" + (f"\n  fix: {g.hint}" if g.hint else ""), file=sys.stderr)
        shown = [n for n, g in graphs.items() if g.ok]
        overlay = ex.overlay(args.overlay, shown, comparison=args.comparison, export=False) if args.overlay else None
        sync = {}
        for left, right in (("original", "reauthored"), ("reauthored", "tflite")):
            if left in shown and right in shown:
                sync[f"{left}__{right}"] = str(ex.sync_mapping(left, right, export=False))
        url = ex.url(shown, overlay=args.overlay, comparison=args.comparison)
        out = {"url": url, "graphs": {n: g.to_json() for n, g in graphs.items()}, "port": ex.server.port,
               "pid": ex.server.pid, "overlay": overlay.to_json() if overlay else None,
               "node_data": {n: str(f) for n, f in overlay.files.items()} if overlay else {},
               "sync_mapping": sync}
        if not args.json:
            for n, f in out["node_data"].items():
                print(f"node data ({n}): {f}", file=sys.stderr)
            for pair, f in sync.items():
                print(f"sync mapping ({pair.replace('__', ' <-> ')}; Model Explorer: Sync -> Upload): {f}",
                      file=sys.stderr)
        args._streamed = True  # printed here: _run prints nothing more (set first: Ctrl-C may follow at once)
        if args.json:
            emit(out)
        else:
            print(url, flush=True)
        if args.port and ex.server.port != args.port:
            print(f"port {args.port} is taken: Model Explorer serves on {ex.server.port} instead", file=sys.stderr)
        print(f"Model Explorer on 127.0.0.1:{ex.server.port} (pid {ex.server.pid}); Ctrl-C stops it",
              file=sys.stderr, flush=True)
        while ex.server.alive():
            time.sleep(0.5)
        print(f"edge-workbench explore: the Model Explorer server stopped (status {ex.server.proc.returncode})",
              file=sys.stderr)
        args._exit_code = EXIT_CRASH
    except KeyboardInterrupt:
        if not getattr(args, "_streamed", False):
            raise
        out = {}
    finally:
        ex.close()
    return out, ""


COMMANDS: dict[str, Callable[[argparse.Namespace], tuple[dict, str]]] = {
    "new": cmd_new,
    "run": cmd_run,
    "bundle": cmd_bundle,
    "paths": cmd_paths,
    "sweep": cmd_sweep,
    "explore": cmd_explore,
    "status": cmd_status,
    "rerun": cmd_rerun,
    "set-checkpoint": cmd_set_checkpoint,
    "blueprint": cmd_blueprint,
    "families": cmd_families,
    "map": cmd_map,
    "compare": cmd_compare,
    "convert": cmd_convert,
}


def _allow_problems(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--allow-problems", action="store_true",
                   help=f"exit 0 when {what} are listed (default: exit {EXIT_PROBLEMS})")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-workbench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("blueprint", help="read an HF config.json: litert-torch config, size, problems")
    b.add_argument("hf_dir", nargs="?", help="a Hugging Face model folder (holding config.json), or a Hub id "
                                            "(org/name[@rev]: only its config.json is fetched)")
    b.add_argument("--project", default=None, help="a project folder instead of HF_DIR")
    b.add_argument("--kv", type=int, default=None, help="KV cache length for the memory figures")
    _allow_problems(b, "problems")
    b.add_argument("--json", action="store_true", help="one JSON object on stdout")
    m = sub.add_parser("map", help="propose and check the weight mapping of an HF checkpoint")
    m.add_argument("hf_dir", nargs="?", help="a Hugging Face model folder (config.json and weights) or Hub id")
    m.add_argument("--project", default=None, help="a project folder instead of HF_DIR")
    m.add_argument("--save", action="store_true", help="with --project: record the mapping there (only one "
                                                       "without problems or unused tensors is recorded)")
    m.add_argument("--mapping", default=None, help="a saved mapping (JSON) to check instead of proposing one")
    _allow_problems(m, "problems or unused tensors")
    m.add_argument("--json", action="store_true", help="one JSON object on stdout")
    c = sub.add_parser("compare", help="compare the re-authored model with transformers, layer by layer")
    c.add_argument("hf_dir", nargs="?", help="a Hugging Face model folder or Hub id (org/name[@rev])")
    c.add_argument("--project", default=None, help="a project folder instead of HF_DIR; the result is recorded")
    c.add_argument("--name", default=None, help="with --project: the comparison's name (default compare-N)")
    c.add_argument("--mapping", default=None, help="a saved mapping (JSON); default: the proposed one")
    c.add_argument("--prompt", default=None, help="text to run (default: a short sentence)")
    c.add_argument("--tol", type=float, default=1e-4, help="max abs difference allowed (default 1e-4)")
    c.add_argument("--max-new", type=int, default=8, help="greedy tokens to generate side by side")
    c.add_argument("--tflite", default=None, help="also compare a converted .tflite's logits end to end "
                                                "(with --project: a conversion's name)")
    c.add_argument("--json", action="store_true", help="one JSON object on stdout")
    v = sub.add_parser("convert", help="convert to a LiteRT .tflite (prefill/decode signatures), checked")
    v.add_argument("hf_dir", nargs="?", help="a Hugging Face model folder or Hub id (org/name[@rev])")
    v.add_argument("--project", default=None,
                   help="a project folder instead of HF_DIR; written to its conversions/ and recorded")
    v.add_argument("--recipe", default="dynamic_int8",
                   help="a litert-torch scheme name (none, dynamic_int8, weight_only_int8, fp16, "
                        "dynamic_int4_block32, dynamic_int4_block128) or a per-layer recipe .json")
    v.add_argument("--prefill", default="8", help="prefill lengths, comma-separated (default 8)")
    v.add_argument("--kv", type=int, default=None, help="KV cache length (default 1024, or the model's "
                                                         "max_seq_len when smaller)")
    v.add_argument("--out", default="out", help="output folder (default out/)")
    v.add_argument("--name", default=None, help="file name without .tflite (default: model_recipe_kvN)")
    v.add_argument("--mapping", default=None, help="a saved mapping (JSON); default: the proposed one")
    v.add_argument("--path", choices=("reauthored", "export_hf"), default="reauthored",
                   help="reauthored (default): our blueprint through litert-torch's generative converter; "
                        "export_hf: litert-torch's direct Hugging Face export of the same folder")
    v.add_argument("--kv-layout", choices=("default", "transposed"), default=None,
                   help="the re-authored path's KV cache layout: default [1, kv, heads, dim], or transposed "
                        "(K [1, heads, kv, dim], V [1, heads, dim, kv], as export_hf's)")
    v.add_argument("--json", action="store_true", help="one JSON object on stdout")
    r = sub.add_parser("run", help="generate text with a converted model (streamed), with its speed")
    r.add_argument("model", nargs="?", help="a converted .tflite")
    r.add_argument("--tokenizer", default=None, help="the Hugging Face folder holding the tokenizer (default: "
                                                     "the checkpoint named in the model's manifest)")
    r.add_argument("--project", default=None, help="a project: its newest fresh conversion and its checkpoint's "
                                                   "tokenizer")
    r.add_argument("--conversion", default=None, help="with --project: the conversion's name")
    r.add_argument("--prompt", required=True, help="the prompt text")
    r.add_argument("--max-new", type=int, default=64, help="new tokens at most (default 64)")
    r.add_argument("--sampling", choices=("greedy", "top_k", "top_p"), default="greedy")
    r.add_argument("--temperature", type=float, default=1.0)
    r.add_argument("--top-k", type=int, default=40)
    r.add_argument("--top-p", type=float, default=0.9)
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--threads", type=int, default=2, help="XNNPACK threads (default 2)")
    r.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    r.add_argument("--engine", choices=("ai-edge-litert", "litert-lm"), default="ai-edge-litert",
                   help="ai-edge-litert (default; a .tflite) or litert-lm (LiteRT-LM, the on-device runtime; "
                        "a .litertlm bundle)")
    r.add_argument("--json", action="store_true", help="one JSON object on stdout")
    bu = sub.add_parser("bundle", help="pack a converted model with its tokenizer for LiteRT-LM or MediaPipe")
    bu.add_argument("model", nargs="?", help="a converted .tflite")
    bu.add_argument("--tokenizer", default=None, help="the Hugging Face folder (or Hub id) holding the tokenizer")
    bu.add_argument("--format", choices=("litertlm", "task"), default="litertlm",
                    help="litertlm (LiteRT-LM) or task (MediaPipe LLM Inference; needs tokenizer.model)")
    bu.add_argument("--out", default=None, help="the bundle file (default: beside the model)")
    bu.add_argument("--project", default=None, help="a project: its newest fresh conversion, written to bundles/")
    bu.add_argument("--conversion", default=None, help="with --project: the conversion's name")
    bu.add_argument("--json", action="store_true", help="one JSON object on stdout")
    pa = sub.add_parser("paths", help="convert both ways (re-authored, export_hf) and compare them side by side")
    pa.add_argument("hf_dir", nargs="?", help="a Hugging Face model folder or Hub id (with its tokenizer)")
    pa.add_argument("--project", default=None, help="a project folder instead of HF_DIR; the table is recorded")
    pa.add_argument("--recipe", default="dynamic_int8", help="a litert-torch scheme name (default dynamic_int8)")
    pa.add_argument("--prefill", default="8", help="prefill lengths, comma-separated (default 8)")
    pa.add_argument("--kv", type=int, default=None, help="KV cache length (default 1024, or the model's "
                                                          "max_seq_len when smaller)")
    pa.add_argument("--threads", type=int, default=2, help="threads for the speed figures (default 2)")
    pa.add_argument("--out", default="out", help="output folder (default out/)")
    pa.add_argument("--json", action="store_true", help="one JSON object on stdout")
    sw = sub.add_parser("sweep", help="convert, check and time several recipes: one table, the Pareto front")
    sw.add_argument("hf_dir", nargs="?", help="a Hugging Face model folder or Hub id (with its tokenizer)")
    sw.add_argument("--project", default=None, help="a project folder instead of HF_DIR; rows are recorded there")
    sw.add_argument("--recipes", default="none,dynamic_int8,fp16,int8_ff_int4",
                    help="comma-separated scheme names, presets (int8_ff_int4, int8_edges_fp16, int4_attn_int8) "
                         "or NAME@export_hf (default none,dynamic_int8,fp16,int8_ff_int4)")
    sw.add_argument("--paths", default="reauthored", help="conversion paths for every recipe: reauthored, "
                                                          "export_hf or both, comma-separated")
    sw.add_argument("--out", default=None, help="the sweep folder for HF_DIR (default out/sweep)")
    sw.add_argument("--name", default=None, help="with --project: the sweep's name (default sweep)")
    sw.add_argument("--prefill", default="8", help="prefill lengths, comma-separated (default 8)")
    sw.add_argument("--kv", type=int, default=256, help="KV cache length (default 256)")
    sw.add_argument("--threads", type=int, default=2, help="threads for each run's speed (default 2)")
    sw.add_argument("--engine", choices=("ai-edge-litert", "litert-lm"), default="ai-edge-litert",
                    help="time each row in ai-edge-litert (default) or in LiteRT-LM on a bundle of its file")
    sw.add_argument("--parallel", type=int, default=None, help="recipes at once (default: as cores and memory "
                                                               "allow; on Dask, all)")
    sw.add_argument("--dask", default=None, help="a Dask scheduler address (tcp://host:8786) to spread recipes")
    sw.add_argument("--dask-timeout", type=float, default=10.0, help="seconds to wait for the scheduler")
    sw.add_argument("--retry-failed", action="store_true", help="run failed rows again (done rows are kept)")
    sw.add_argument("--fresh", action="store_true", help="start over instead of resuming a saved sweep")
    sw.add_argument("--pick", default=None, help="mark this recipe's model as chosen (a project's default model)")
    sw.add_argument("--json", action="store_true", help="one JSON object on stdout")
    ex = sub.add_parser("explore", help="the original, re-authored and converted graphs in Model Explorer "
                                        "(127.0.0.1, behind a secret)")
    ex.add_argument("hf_dir", nargs="?", help="a Hugging Face model folder or Hub id (org/name[@rev])")
    ex.add_argument("--project", default=None, help="a project folder instead of HF_DIR (its newest fresh "
                                                    "conversion is shown too)")
    ex.add_argument("--tflite", default=None, help="a converted .tflite to show (default with --project: the "
                                                   "project's newest fresh conversion)")
    ex.add_argument("--port", type=int, default=None, help="the port to try first (taken: another is picked)")
    ex.add_argument("--overlay", default=None, choices=["compare", "quant", "quant_error", "sizes", "timing"],
                    help="colour the graphs: compare (per-layer error), quant (scheme per op), quant_error "
                         "(MSE per op), sizes (weight bytes per op)")
    ex.add_argument("--comparison", default=None, help="the comparison --overlay compare shows (a project's "
                                                       "comparison name or a JSON file; default: the newest fresh)")
    ex.add_argument("--json", action="store_true", help="one JSON line (url, graphs, node_data, sync_mapping), "
                                                        "then serve")
    n = sub.add_parser("new", help="create a project folder from a Hugging Face model folder")
    n.add_argument("dir", help="the project folder (new or empty)")
    n.add_argument("--from", dest="from_hf", required=True, help="the Hugging Face model folder, or a Hub id "
                   "(org/name[@rev]; the project records it and its commit)")
    n.add_argument("--name", default=None, help="the project's name (default: the model's)")
    n.add_argument("--copy-checkpoint", action="store_true", help="copy the checkpoint into the project")
    n.add_argument("--json", action="store_true", help="one JSON object on stdout")
    sc = sub.add_parser("set-checkpoint", help="point a project at its checkpoint again (after moving it)")
    sc.add_argument("checkpoint", help="the Hugging Face model folder or Hub id")
    sc.add_argument("--project", required=True, help="the project folder")
    sc.add_argument("--json", action="store_true", help="one JSON object on stdout")
    rr = sub.add_parser("rerun", help="make a project's step again with the settings of its newest result "
                                      "(after the blueprint or mapping changed)")
    rr.add_argument("step", choices=list(RERUN), help="the step to make again")
    rr.add_argument("--project", required=True, help="the project folder")
    rr.add_argument("--json", action="store_true", help="one JSON object on stdout (the step's own command's)")
    st = sub.add_parser("status", help="each step of a project: fresh, stale or missing")
    st.add_argument("--project", required=True, help="the project folder")
    st.add_argument("--json", action="store_true", help="one JSON object on stdout")
    f = sub.add_parser("families", help="the decoder families that can be imported")
    f.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return p


def emit(obj: Any) -> None:
    """One JSON document on stdout; NaN and infinities (a diverged model's error) as null, so
    every command's --json stays strict JSON."""
    sys.stdout.write(json.dumps(_finite(obj), allow_nan=False) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args._projects = []
    args._given = {}
    try:
        return _run(args)
    finally:
        for wb in args._projects:  # a project a command opened is closed (its lock released)
            wb.close()


def _run(args: argparse.Namespace) -> int:
    try:
        _resolve_hub_ids(args)
        out, text = COMMANDS[args.command](args)
    except KeyboardInterrupt:
        hint = ("finished rows are saved: run the same command again to resume" if args.command == "sweep"
                else "the job was cancelled; nothing was written")
        print(f"edge-workbench {args.command}: interrupted; {hint}", file=sys.stderr, flush=True)
        if args.json:
            emit({"error": "interrupted", "hint": hint})
        return EXIT_INTERRUPTED
    except WorkbenchError as e:
        hint = e.cli_hint or e.hint  # a CLI user gets the fix in the CLI's words
        print(f"edge-workbench {args.command}: {e.message}" + (f" — fix: {hint}" if hint else ""), file=sys.stderr)
        if args.json:
            emit({"error": e.message, "hint": hint})
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - the CLI's contract is a JSON error, never a bare traceback
        import traceback

        traceback.print_exc()
        if args.json:
            emit({"error": f"{type(e).__name__}: {e}", "hint": "this is a bug in Edge Workbench: please report it "
                  "with the command and the traceback above"})
        return EXIT_CRASH
    if getattr(args, "_streamed", False):  # the command printed its output as it went (explore)
        return getattr(args, "_exit_code", 0)
    try:
        if args.json:
            emit(out)
        elif text:
            print(text, flush=True)
    except BrokenPipeError:  # e.g. piped into `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return getattr(args, "_exit_code", 0)


if __name__ == "__main__":
    sys.exit(main())
