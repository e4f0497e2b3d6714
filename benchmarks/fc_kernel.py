"""XNNPACK's int8 fully-connected kernel for one row (M=1), alone: how fast it streams weights.

    python benchmarks/fc_kernel.py [--mb 1100] [--threads 1,2] [--runs 20]

A model that is nothing but a chain of bias-free nn.Linear layers shaped like a llama MLP
(alternating 2048->5632 and 5632->2048, fp32), with enough layers for about `--mb` MB of
int8 weights, converted with litert-torch and quantized with ai-edge-quantizer under the
workbench's `dynamic_int8` recipe (int8 weights, float activations quantized on the fly:
XNNPACK's dynamically quantized fully-connected kernel). One [1, 2048] row runs through it on
ai-edge-litert's CompiledModel (CPU, pre-made buffers): per thread count, the median ms of a
pass, the weights it streams per second (weight bytes / time) and that as a share of this
machine's memory bandwidth with as many threads (run_speed.bandwidth_gbs).

How to read it: a decode step of an LLM is, by bytes, mostly such a chain. If the chain alone
streams weights at about the rate the LLM's decode does (~20 GB/s with 2 threads, ~12 with 1,
~70% of the read bandwidth, for the 1.1B llama), the kernel sets that rate and nothing around
it (attention, cache, runtime calls). With `--mb 100` the weights fit this CPU's last-level cache, so the
row shows the kernel's rate without DRAM in the way. Files live under benchmarks/_work/fc-<mb>/
(git-ignored) and are reused.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_speed import bandwidth_gbs, last_level_cache_bytes  # noqa: E402

HIDDEN, INTERMEDIATE = 2048, 5632
PER_LAYER = HIDDEN * INTERMEDIATE  # int8 weight bytes of one layer


def layer_count(mb: float) -> int:
    return max(1, round(mb * 1e6 / PER_LAYER))


def weight_bytes(n_layers: int) -> int:
    """What one pass reads: int8 weights plus a float32 scale per output channel."""
    outs = sum(INTERMEDIATE if i % 2 == 0 else HIDDEN for i in range(n_layers))
    return n_layers * PER_LAYER + 4 * outs


def build(n_layers: int):
    """The chain, seeded; weights drawn with std 1/sqrt(fan_in) so activations keep their scale
    through ~100 layers (the default init shrinks them ~10x a pair, down to zeros/denormals)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    dims = [HIDDEN if i % 2 == 0 else INTERMEDIATE for i in range(n_layers + 1)]
    layers = []
    for i in range(n_layers):
        lin = nn.Linear(dims[i], dims[i + 1], bias=False)
        nn.init.normal_(lin.weight, std=dims[i] ** -0.5)
        layers.append(lin)
    return nn.Sequential(*layers).eval()


def convert(n_layers: int, folder: Path) -> Path:
    """The quantized .tflite, made once: float through litert-torch's low-memory route (as the
    workbench's low_memory conversion), then ai-edge-quantizer file to file."""
    path = folder / "fc_dynamic_int8.tflite"
    if path.is_file():
        return path
    from workbench._quiet import quiet

    with quiet():
        import litert_torch
        import torch
        from ai_edge_quantizer import quantizer
    from workbench.recipe import Recipe

    folder.mkdir(parents=True, exist_ok=True)
    float_path = folder / "fc_float.tflite"
    t = time.perf_counter()
    module = build(n_layers)
    with contextlib.redirect_stdout(sys.stderr):  # litert-torch's progress lines; stdout keeps the figures
        edge = litert_torch.convert(module, (torch.zeros(1, HIDDEN),), lightweight_conversion=True,
                                    runtime_constant_folding=False)
        edge.export(str(float_path))
    del edge, module
    gc.collect()
    partial = path.with_suffix(".partial")
    quantizer.Quantizer(str(float_path), Recipe.parse("dynamic_int8").ai_edge_recipe()).quantize(
        serialize_to_path=str(partial), enable_progress_report=False)
    partial.rename(path)
    float_path.unlink()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"  converted {n_layers} layers in {time.perf_counter() - t:.0f} s, peak RSS {peak / 1e9:.1f} GB")
    return path


def open_model(path: Path, threads: int):
    """(run, compiled): `run()` is one pass over pre-made buffers, input written once."""
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import CpuOptions, Options

    from workbench._quiet import muted_fd2
    from workbench.runtime import _environment

    with muted_fd2():
        cm = CompiledModel.from_file(str(path), environment=_environment(), options=Options(
            hardware_accelerators=HardwareAccelerator.CPU, cpu_options=CpuOptions(num_threads=threads)))
    sig = next(iter(cm.get_signature_list()))
    ins = {n: cm.create_input_buffer_by_name(sig, n) for n in cm.get_signature_list()[sig]["inputs"]}
    outs = {n: cm.create_output_buffer_by_name(sig, n) for n in cm.get_signature_list()[sig]["outputs"]}
    for buf in ins.values():
        buf.write(np.random.default_rng(0).standard_normal((1, HIDDEN), dtype=np.float32))
    return (lambda: cm.run_by_name(sig, ins, outs)), cm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=1100, help="int8 weight MB to aim for")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    ap.add_argument("--runs", type=int, default=20, help="timed passes per thread count and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the thread counts")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    n = layer_count(args.mb)
    size = weight_bytes(n)
    path = convert(n, HERE / "_work" / f"fc-{args.mb:g}")
    models = {t: open_model(path, t) for t in threads}
    for run, _ in models.values():
        for _ in range(3):  # warm-up: XNNPACK packs the weights on the first call
            run()
    times: dict[int, list[float]] = {t: [] for t in threads}
    for i in range(args.rounds):  # interleaved, so drift on this shared machine hits every row alike
        for t in threads[i % len(threads):] + threads[: i % len(threads)]:
            run = models[t][0]
            for _ in range(args.runs):
                s = time.perf_counter()
                run()
                times[t].append(time.perf_counter() - s)
    for _, cm in models.values():
        cm.close()
    llc = last_level_cache_bytes()
    where = "in" if llc and size < llc else "beyond"
    print(f"int8 FC chain, M=1: {n} layers {HIDDEN}<->{INTERMEDIATE}, {size / 1e6:.0f} MB of weights "
          f"(file {path.stat().st_size / 1e6:.0f} MB), {where} the {llc / 2**20:.0f} MiB last-level cache; "
          f"median of {args.rounds} x {args.runs} passes")
    for t in threads:
        sec = statistics.median(times[t])
        bw, how = bandwidth_gbs(t)
        rate = size / sec / 1e9
        print(f"  {t} thread{'s' if t > 1 else ' '}: {size / 1e6:6.0f} MB  {sec * 1e3:7.2f} ms/pass  "
              f"{rate:5.1f} GB/s of weights  {rate / bw:5.0%} of {bw:.1f} GB/s ({how})")


if __name__ == "__main__":
    main()
