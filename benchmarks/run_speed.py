"""Decode speed of a converted model on this machine, side by side in one run.

    python benchmarks/run_speed.py [--layers 14] [--hidden 768] [--recipe dynamic_int8] [--threads 2]

One llama-shaped random checkpoint (>= 100M parameters by default, made under
benchmarks/_work, never committed; the llama-tiny sample's tokenizer beside it so
litert-torch's direct export accepts it), converted three ways with the same recipe — re-authored
with the default KV cache layout ([1, kv, heads, dim]), re-authored with the transposed one
(K [1, heads, kv, dim], V [1, heads, dim, kv]) and litert-torch's direct export (export_hf,
whose cache is transposed) — then:
  - decode tok/s of our Runner on each file (ai-edge-litert's CompiledModel, the KV cache in
    buffers bound as both input and output, so it is updated in place);
  - decode tok/s of that compiled model called directly in a bare loop (no Runner): the
    Runner's overhead;
  - decode tok/s of ai-edge-litert's Interpreter signature runner in a bare loop (how a .tflite
    is usually run from Python; it copies every cache in and out of each call);
  - decode tok/s of the re-authored PyTorch model, eager, one token at a time;
  - LiteRT-LM, the on-device runtime (litert-lm-api), on a .litertlm bundle of each file it can
    run (the transposed layout and export_hf; the default layout is refused by `bundle`): a
    session (prefill the prompt text, decode greedily, its BenchmarkInfo) and its own
    `litert_lm.Benchmark`, in rounds interleaved with the Runner's. Prefill is compared as
    prompt tokens / time to first token for both (each prefills all but the last token and
    decodes that one); LiteRT-LM's own prefill figure (prefill tokens / prefill time) is printed beside;
  - this machine's bound: memory read bandwidth with the decode's threads (the best of three
    read-only passes over 1 GiB, measured here) divided by
    the weight bytes one decode step reads (the file's weights minus the embedding table,
    of which a step reads one row). Weights that fit in the last-level cache (printed) are
    read from it, not from memory, and can beat this bound.
Targets: >= 90% of the bound for int8 on a >= 100M-parameter model; no slower than export_hf;
Runner overhead <= 5%.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _models import add_sample_tokenizer, llama_checkpoint  # noqa: E402

STEPS = 64
KINDS = ("Runner", "compiled model directly", "Interpreter signature runner", "LiteRT-LM session", "LiteRT-LM Benchmark")
# 15 tokens of the llama-tiny sample's tokenizer (the benchmark checkpoints carry it), 16 with <s>
PROMPT_TEXT = "Once upon a time there was a small"
# row label -> convert() arguments; every layout named, so the rows don't move with the default
FILES = {
    "re-authored, default layout": dict(path="reauthored", kv_layout="default"),
    "re-authored, transposed layout": dict(path="reauthored", kv_layout="transposed"),
    "export_hf": dict(path="export_hf"),
}


def bandwidth_gbs(threads: int, size: int = 1 << 30, repeats: int = 5) -> tuple[float, str]:
    """This machine's memory *read* bandwidth for `threads` threads (the decode's), on an array far
    larger than any cache: a decode step reads its weights and writes almost nothing, so the bound
    is what a read-only stream gets. The best of three reductions split over the threads (a
    float sum, an integer OR, an int8 max: none of them is compute-bound here — in cache they run
    at ~50 GB/s on 2 threads), best of `repeats`. A copy is measured too, for reference only: it
    counts bytes read and written, and its total (46–49 GB/s here) is more than any read-only
    stream reaches. Returns (GB/s, a description)."""
    from concurrent.futures import ThreadPoolExecutor

    a = np.ones(size // 8, dtype=np.float64)
    b = np.empty_like(a)
    parts = {name: np.array_split(a.view(dtype), threads)
             for name, dtype in (("sum", np.float64), ("or", np.uint64), ("max", np.int8))}
    kernels = {"sum": np.sum, "or": np.bitwise_or.reduce, "max": np.max}
    dst = np.array_split(b, threads)
    results = {}
    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL in all of these
        for name, work in [(k, (lambda k=k: list(pool.map(kernels[k], parts[k])))) for k in kernels] + \
                          [("copy", lambda: list(pool.map(np.copyto, dst, parts["sum"])))]:
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                work()
                best = min(best, time.perf_counter() - t)
            results[name] = (2 if name == "copy" else 1) * a.nbytes / best / 1e9
    read = max(results[k] for k in kernels)
    return read, (f"read, {threads} thread{'s' if threads > 1 else ''}: " +
                  ", ".join(f"{k} {results[k]:.1f}" for k in kernels) +
                  f"; a copy moves {results['copy']:.1f} read + written")


def _bare(sm, prompt: list[int], step) -> float:
    """Decode tok/s of `step(token, position) -> logits` in a loop after the prompt's prefill."""
    for steps in (4, STEPS):  # a short first pass, in case the decode signature was not warm
        sm.reset()
        sm.prefill(prompt[:-1])
        tok, pos = prompt[-1], len(prompt) - 1
        t = time.perf_counter()
        for s in range(steps):
            tok = int(step(tok, pos + s).argmax())
        seconds = time.perf_counter() - t
    sm.reset()
    return STEPS / seconds


def direct_decode_tok_s(sm, prompt: list[int]) -> float:
    """The Runner's own compiled model and buffers (`sm`, its SignatureModel) called in a bare
    loop, inputs written, argmax in numpy: the two differ only by the Runner."""
    ins, outs, details = sm.buffers("decode")
    n = details["logits"]["size"]
    run = sm.compiled.run_by_name

    def step(tok: int, pos: int) -> np.ndarray:
        ins["tokens"].write(np.array([[tok]], dtype=np.int32))
        ins["input_pos"].write(np.array([pos], dtype=np.int32))
        if sm.masked:
            ins["mask"].write(sm._mask([pos])["mask"])
        run("decode", ins, outs)
        return outs["logits"].read(n, np.float32)

    return _bare(sm, prompt, step)


@functools.lru_cache(maxsize=None)
def _interpreter(path: str, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=path, num_threads=threads)


def interpreter_decode_tok_s(path: Path, sm, prompt: list[int], threads: int) -> float:
    """ai-edge-litert's Interpreter signature runner on the same file, in a bare loop, the caches
    carried as numpy arrays from one call's outputs to the next call's inputs. The prefill runs
    through `sm` (its caches read out once), so only the decode steps are timed."""
    runner = _interpreter(str(path), threads).get_signature_runner("decode")
    names = sm.kv_names
    kv = {}

    def step(tok: int, pos: int) -> np.ndarray:
        nonlocal kv
        if pos == len(prompt) - 1:
            kv = sm.kv
        out = runner(tokens=np.array([[tok]], dtype=np.int32), input_pos=np.array([pos], dtype=np.int32),
                     **sm._mask([pos]), **kv)
        kv = {k: out[k] for k in names}
        return out["logits"][0, -1]

    return _bare(sm, prompt, step)


def last_level_cache_bytes() -> int:
    """The largest CPU cache's size (Linux sysfs), 0 when it cannot be read."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * mult)
        except ValueError:
            pass
    return max(sizes, default=0)


def torch_decode_tok_s(mapping, prompt: list[int], threads: int) -> float:
    import torch

    from workbench import layers

    torch.set_num_threads(threads)
    model = mapping.load()
    layers.generate_greedy(model, prompt, 4)  # warm up
    t = time.perf_counter()
    layers.generate_greedy(model, prompt, STEPS + 1, len(prompt) + STEPS + 1)
    return (STEPS + 1) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=14)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--recipe", default="dynamic_int8")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each row is their median")
    ap.add_argument("--folder", type=Path, default=None,
                    help="an existing llama-shaped checkpoint instead (e.g. benchmarks/_work/tinyllama-1.1b)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the converted files under benchmarks/_work/speed-... and reuse them next time")
    ap.add_argument("--only", default=None, help="comma-separated files to convert and time: default, transposed, "
                                                 "export_hf (e.g. --only transposed at 1.1B, to spare memory)")
    ap.add_argument("--no-litert-lm", action="store_true", help="leave out the LiteRT-LM rows")
    args = ap.parse_args()
    from workbench._quiet import import_stack

    import_stack()
    from workbench import Blueprint
    from workbench.convert import convert
    from workbench.mapping import Mapping
    from workbench.bundle import BundleError, bundle
    from workbench.litert_lm import LiteRtLm
    from workbench.runner import Runner

    folder = args.folder or llama_checkpoint(args.layers, args.hidden)
    add_sample_tokenizer(folder)
    bp = Blueprint.from_hf(folder)
    m = Mapping.propose(bp, folder)
    params = bp.summary().params
    keep = HERE / "_work" / f"speed-{folder.name}-{args.recipe}-kv{args.kv}"
    with tempfile.TemporaryDirectory() as tmp:
        out = keep if args.keep else Path(tmp)
        files = {}
        wanted = {k: v for k, v in FILES.items()
                  if args.only is None or any(w.strip() in k for w in args.only.split(","))}
        for label, kw in wanted.items():
            name = "-".join(kw.values())
            if args.keep and (out / f"{name}.tflite").is_file():
                files[label] = out / f"{name}.tflite"
                continue
            res = convert(m, recipe=args.recipe, prefill=[16], kv=args.kv, out=out, name=name, analyze=False,
                          check_steps=0, **kw).result()
            files[label] = res.path
        # Interleaved rounds (A, B, C, D, A, B, ...), median per row: this machine is shared and
        # its speed drifts, so rows measured one after another would carry the drift. Each round
        # starts at the next file and swaps Runner/bare, so no row always runs in the same slot.
        runners = {label: Runner(f, threads=args.threads) for label, f in files.items()}
        lms, refused = {}, {}
        if not args.no_litert_lm:
            for label, f in files.items():
                try:
                    b = bundle(f, tokenizer=folder, out=out / f"{f.stem}.litertlm")
                except BundleError as e:
                    refused[label] = e.message
                    continue
                lms[label] = LiteRtLm(b.path, threads=args.threads)
        first = next(iter(lms.values()), None)
        # the same prompt ids for every row: the ones LiteRT-LM prefills for the prompt text
        prompt = first.prompt_ids(PROMPT_TEXT) if first else [1 + (7 * i) % 400 for i in range(16)]
        for r in runners.values():
            r.generate(ids=prompt, max_new_tokens=8)  # warm up
        for lm in lms.values():
            lm.generate(PROMPT_TEXT, 8)
        samples: dict[str, list[float]] = {}
        prefill: dict[str, list[float]] = {}
        labels = list(files)

        def runner_row(runner, row):
            g = runner.generate(ids=prompt, max_new_tokens=STEPS + 1)
            prefill.setdefault(row, []).append(g.prefill_tok_s)
            return g.decode_tok_s

        def session_row(lm, row):
            bench = lm.generate(PROMPT_TEXT, STEPS + 1)["bench"]
            prefill.setdefault(row, []).append(bench["prefill_tokens"] / bench["ttft_s"])
            prefill.setdefault(row + " (its own prefill figure)", []).append(bench["prefill_tok_s"])
            return bench["decode_tok_s"]

        def benchmark_row(lm, row):
            bench = lm.benchmark(len(prompt), STEPS + 1, prompt=PROMPT_TEXT)
            prefill.setdefault(row, []).append(bench["prefill_tokens"] / bench["ttft_s"] if bench["ttft_s"] else 0.0)
            prefill.setdefault(row + " (its own prefill figure)", []).append(bench["prefill_tok_s"])
            return bench["decode_tok_s"]
        for i in range(args.rounds):
            for label in labels[i % len(labels):] + labels[: i % len(labels)]:
                runner, lm = runners[label], lms.get(label)
                measures = {f"Runner, {label}": lambda: runner_row(runner, f"Runner, {label}"),
                            f"compiled model directly, {label}": lambda: direct_decode_tok_s(runner.model, prompt),
                            f"Interpreter signature runner, {label}": lambda: interpreter_decode_tok_s(
                                files[label], runner.model, prompt, args.threads)}
                if lm is not None:
                    measures[f"LiteRT-LM session, {label}"] = lambda: session_row(lm, f"LiteRT-LM session, {label}")
                    measures[f"LiteRT-LM Benchmark, {label}"] = lambda: benchmark_row(
                        lm, f"LiteRT-LM Benchmark, {label}")
                for row in (list(measures) if i % 2 == 0 else list(measures)[::-1]):
                    samples.setdefault(row, []).append(measures[row]())
        samples = {f"{kind}, {label}": samples[f"{kind}, {label}"]
                   for label in labels for kind in KINDS if f"{kind}, {label}" in samples}
        prefill_rows = {k: sorted(v)[len(v) // 2] for k, v in prefill.items()}
        for lm in lms.values():
            lm.close()
        rows = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
        spread = {k: (min(v), max(v)) for k, v in samples.items()}
        rows["PyTorch eager (re-authored)"] = torch_decode_tok_s(m, prompt, args.threads)
        size = next(iter(files.values())).stat().st_size
    emb = bp.vocab_size * bp.hidden_size * (1 if args.recipe.endswith("int8") else 4)
    step_bytes = size - (0 if bp.tie_embeddings else emb)
    bw, how = bandwidth_gbs(args.threads)
    bound = bw * 1e9 / step_bytes
    print(f"decode speed: llama {bp.num_layers} x {bp.hidden_size} ({params / 1e6:.0f}M params), {args.recipe}, "
          f"kv {args.kv}, {args.threads} threads, {STEPS} steps after a 16-token prompt "
          f"(median of {args.rounds} interleaved rounds)")
    llc = last_level_cache_bytes()
    print(f"  machine: memory bandwidth {bw:.1f} GB/s ({how}); a decode step reads ~{step_bytes / 1e6:.0f} MB "
          f"-> bound {bound:.0f} tok/s")
    if llc and step_bytes < llc:
        print(f"  note: those {step_bytes / 1e6:.0f} MB fit in this CPU's {llc / 2**20:.0f} MiB last-level cache, so a "
              f"step can read them from it and beat the memory bound; the bound is a memory one for weights "
              f"larger than the cache")
    for name, v in rows.items():
        lo_hi = f"  [{spread[name][0]:.1f}–{spread[name][1]:.1f}]" if name in spread else ""
        print(f"  {name:<62} {v:8.1f} tok/s  ({v / bound:5.0%} of the bound){lo_hi}")
    print(f"  prefill, {len(prompt)}-token prompt (prompt tokens / time to first token; median):")
    for name, v in prefill_rows.items():
        print(f"  {name:<62} {v:8.1f} tok/s")
    for label, why in refused.items():
        print(f"  LiteRT-LM, {label}: not run, bundle refused it: {why}")
    for label in lms:
        ours = rows[f"Runner, {label}"]
        for kind in ("LiteRT-LM session", "LiteRT-LM Benchmark"):
            lm_d, lm_p = rows[f"{kind}, {label}"], prefill_rows[f"{kind}, {label}"]
            print(f"  {label}: Runner / {kind}: decode {ours / lm_d:.3f}x, prefill "
                  f"{prefill_rows[f'Runner, {label}'] / lm_p:.3f}x" if lm_p else "")
    theirs = rows.get("Runner, export_hf")
    bare_theirs = rows.get("compiled model directly, export_hf")
    for label in labels:
        ours, bare = rows[f"Runner, {label}"], rows[f"compiled model directly, {label}"]
        vs = (f"/ export_hf: Runner {ours / theirs:.2f}x, bare {bare / bare_theirs:.2f}x;  "
              if label != "export_hf" and theirs else "")
        print(f"  {label} {vs}Runner overhead over the bare compiled model: {bare / ours - 1:+.1%}; "
              f"Runner / Interpreter signature runner: {ours / rows[f'Interpreter signature runner, {label}']:.2f}x")
    print("  targets: >= 90% of the bound (int8, >= 100M params); no slower than export_hf; Runner overhead <= 5%; "
          "Runner within 5% of LiteRT-LM on decode and prefill")


if __name__ == "__main__":
    main()
