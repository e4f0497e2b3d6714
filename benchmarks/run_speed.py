"""Decode speed of a converted model on this machine, side by side in one run.

    python benchmarks/run_speed.py [--layers 14] [--hidden 768] [--recipe dynamic_int8] [--threads 2]

One llama-shaped random checkpoint (>= 100M parameters by default, made under
benchmarks/_work, never committed; the llama-tiny sample's tokenizer beside it so
litert-torch's direct export accepts it), converted both ways with the same recipe, then:
  - decode tok/s of our Runner on the re-authored file, and on export_hf's file;
  - decode tok/s of the signature runner called directly (no Runner): the Runner's overhead;
  - decode tok/s of the re-authored PyTorch model, eager, one token at a time;
  - this machine's bound: memory bandwidth (a large numpy copy, measured here) divided by
    the weight bytes one decode step reads (the file's weights minus the embedding table,
    of which a step reads one row).
Targets: >= 90% of the bound for int8 on a >= 100M-parameter model; no slower than export_hf;
Runner overhead <= 5%.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _models import add_sample_tokenizer, llama_checkpoint  # noqa: E402

STEPS = 64


def bandwidth_gbs(size: int = 1 << 30, repeats: int = 5) -> float:
    """Bytes moved per second by a large copy (read + write), best of `repeats`."""
    a = np.ones(size // 8, dtype=np.float64)
    b = np.empty_like(a)
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(b, a)
        best = max(best, 2 * a.nbytes / (time.perf_counter() - t))
    return best / 1e9


def direct_decode_tok_s(path: Path, threads: int, prompt: list[int]) -> float:
    """The decode signature runner called in a bare loop (inputs prepared, argmax in numpy)."""
    from workbench.check import SignatureModel

    sm = SignatureModel(path, threads=threads)
    sm.prefill(prompt[:-1])
    tok, pos = prompt[-1], len(prompt) - 1
    runner, names, masked = sm.decode_runner, sm.kv_names, sm.masked
    kv = sm.kv
    t = time.perf_counter()
    for s in range(STEPS):
        extra = sm._mask([pos + s]) if masked else {}
        out = runner(tokens=np.array([[tok]], dtype=np.int32), input_pos=np.array([pos + s], dtype=np.int32),
                     **extra, **kv)
        kv = {k: out[k] for k in names}
        tok = int(out["logits"][0, -1].argmax())
    return STEPS / (time.perf_counter() - t)


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
    ap.add_argument("--kv", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each row is their median")
    ap.add_argument("--folder", type=Path, default=None,
                    help="an existing llama-shaped checkpoint instead (e.g. benchmarks/_work/tinyllama-1.1b)")
    args = ap.parse_args()
    from workbench._quiet import import_stack

    import_stack()
    from workbench import Blueprint
    from workbench.convert import convert
    from workbench.mapping import Mapping
    from workbench.runner import Runner

    folder = args.folder or llama_checkpoint(args.layers, args.hidden)
    add_sample_tokenizer(folder)
    bp = Blueprint.from_hf(folder)
    m = Mapping.propose(bp, folder)
    params = bp.summary().params
    prompt = [1 + (7 * i) % 400 for i in range(16)]
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for path in ("reauthored", "export_hf"):
            res = convert(m, recipe=args.recipe, prefill=[16], kv=args.kv, out=tmp, path=path, analyze=False,
                          check_steps=0).result()
            files[path] = res.path
        # Interleaved rounds (A, B, C, D, A, B, ...), median per row: this machine is shared and
        # its speed drifts, so rows measured one after another would carry the drift.
        runners = {path: Runner(f, threads=args.threads) for path, f in files.items()}
        for r in runners.values():
            r.generate(ids=prompt, max_new_tokens=8)  # warm up
        samples: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for path, f in files.items():
                samples.setdefault(f"Runner, {path}", []).append(
                    runners[path].generate(ids=prompt, max_new_tokens=STEPS + 1).decode_tok_s)
                samples.setdefault(f"signature runner directly, {path}", []).append(
                    direct_decode_tok_s(f, args.threads, prompt))
        rows = {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
        rows["PyTorch eager (re-authored)"] = torch_decode_tok_s(m, prompt, args.threads)
        size = files["reauthored"].stat().st_size
    emb = bp.vocab_size * bp.hidden_size * (1 if args.recipe.endswith("int8") else 4)
    step_bytes = size - (0 if bp.tie_embeddings else emb)
    bw = bandwidth_gbs()
    bound = bw * 1e9 / step_bytes
    print(f"decode speed: llama {bp.num_layers} x {bp.hidden_size} ({params / 1e6:.0f}M params), {args.recipe}, "
          f"kv {args.kv}, {args.threads} threads, {STEPS} steps after a 16-token prompt "
          f"(median of {args.rounds} interleaved rounds)")
    print(f"  machine: copy bandwidth {bw:.1f} GB/s; a decode step reads ~{step_bytes / 1e6:.0f} MB "
          f"-> bound {bound:.0f} tok/s")
    for name, v in rows.items():
        print(f"  {name:<42} {v:8.1f} tok/s  ({v / bound:5.0%} of the bound)")
    ours, theirs = rows["Runner, reauthored"], rows["Runner, export_hf"]
    print(f"  re-authored / export_hf: {ours / theirs:.2f}x;  Runner overhead over the bare signature runner: "
          f"{rows['signature runner directly, reauthored'] / ours - 1:+.1%}")
    print("  targets: >= 90% of the bound (int8, >= 100M params); no slower than export_hf; Runner overhead <= 5%")


if __name__ == "__main__":
    main()
