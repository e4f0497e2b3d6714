"""Edit latency of the Blueprint on the 1.1B TinyLlama shape (target: < 100 ms).

One "edit" is what the builder panel does per keystroke: set a knob (globally or
for one layer), then re-check (problems) and re-summarise (summary). Prints the
median and p95 over many edits, and the ratio to the target.

    python benchmarks/blueprint_edit.py [--edits N]
"""

from __future__ import annotations

import argparse
import statistics
import time

from workbench import Blueprint

TARGET_MS = 100.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=300)
    args = ap.parse_args()
    bp = Blueprint.preset("tinyllama-1.1b")
    edits = [("intermediate_size", lambda i: 5632 + 64 * (i % 5), None),
             ("num_kv_heads", lambda i: (1, 2, 4, 8)[i % 4], None),
             ("sliding_window", lambda i: 256 + i, lambda i: i % bp.num_layers),
             ("norm_eps", lambda i: 1e-5 * (1 + i % 3), None),
             ("rope_base", lambda i: 10_000.0 + i, lambda i: (i * 7) % bp.num_layers)]
    times = []
    for i in range(args.edits):
        field, value, layer = edits[i % len(edits)]
        t = time.perf_counter()
        bp.set(field, value(i), layer=layer(i) if layer else None)
        bp.problems()
        bp.summary()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    med, p95 = statistics.median(times), times[int(0.95 * len(times)) - 1]
    print(f"blueprint edit on tinyllama-1.1b ({bp.num_layers} layers, {len(bp.overrides)} layers overridden at the end)")
    print(f"  edits: {args.edits}   median {med:.2f} ms   p95 {p95:.2f} ms   max {times[-1]:.2f} ms")
    print(f"  target {TARGET_MS:.0f} ms: median is {med / TARGET_MS:.3f}x the target, p95 {p95 / TARGET_MS:.3f}x")
    t = time.perf_counter()
    bp.model_config()
    print(f"  model_config() after edits: {(time.perf_counter() - t) * 1000:.2f} ms (includes first litert-torch import)")


if __name__ == "__main__":
    main()
