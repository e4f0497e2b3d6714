"""What a comparison costs over the two forward passes it needs (target: <= 1.3x).

    python benchmarks/compare_overhead.py [--layers 12] [--hidden 512] [--tokens 128]

Makes a llama-shaped random checkpoint (under benchmarks/_work, never committed),
then times, on the same prompt: the transformers forward pass plus the re-authored
forward pass (the floor), and `compare`'s capture-and-measure part (both passes with
hooks at every capture point, plus the statistics). Generation and model loading are
excluded from both sides; they are the same work either way.
"""

from __future__ import annotations

import argparse
import sys
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _models import llama_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    from workbench._quiet import import_stack

    import_stack()
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from workbench import Blueprint, layers
    from workbench import compare as cmp
    from workbench.mapping import Mapping

    folder = llama_checkpoint(args.layers, args.hidden)
    bp = Blueprint.from_hf(folder)
    m = Mapping.propose(bp, folder)
    ours = m.load(kv_cache_length=args.tokens)
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ids = list(range(1, args.tokens + 1))
    t = torch.tensor([ids])
    plan = cmp.capture_plan(bp, dict(m.tensor_names))

    def plain():
        with torch.no_grad():
            hf(t)
        layers.logits(ours, ids, len(ids))

    def captured():
        a, la, _ = cmp._run_captured(ours, plan, 0, lambda: layers.logits(ours, ids, len(ids)))
        with torch.no_grad():
            b, lb, _ = cmp._run_captured(hf, plan, 1, lambda: hf(t).logits)
        for k in a:
            cmp._stats(a[k], b[k])
        cmp._stats(la, lb)

    for f in (plain, captured):
        f()  # warm up
    times = {"plain": [], "captured": []}
    for _ in range(args.repeats):
        for name, f in (("plain", plain), ("captured", captured)):
            s = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - s)
    p, c = statistics.median(times["plain"]), statistics.median(times["captured"])
    params = sum(x.numel() for x in hf.parameters())
    print(f"compare overhead: llama {args.layers} layers x {args.hidden} hidden ({params / 1e6:.0f}M params), "
          f"{args.tokens} tokens, {len(plan) + 1} capture points")
    print(f"  two forward passes: {p * 1000:.0f} ms   compare's capture + statistics: {c * 1000:.0f} ms")
    print(f"  ratio {c / p:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
