"""Weight mapping on a 1.1B TinyLlama-shaped checkpoint: proposal time, table update
time, and peak memory of loading — ours against litert-torch's ModelLoader.

    python benchmarks/mapping_load.py [--work DIR] [--shards 4]

Makes the checkpoint once (random fp32 weights in TinyLlama's shapes, ~4.4 GB, in
safetensors shards under benchmarks/_work/, never committed), then measures each
loader in a fresh process (peak RSS from getrusage, so the figures include imports;
the imports' own RSS is printed too). Targets: proposal < 0.5 s; table update
< 50 ms; our load's peak near one copy of the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_checkpoint(folder: Path, shards: int) -> None:
    import torch
    from safetensors.torch import save_file

    from workbench.presets import PRESETS

    cfg = dict(PRESETS["tinyllama-1.1b"])
    if (folder / "model.safetensors.index.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    h, inter, L, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(L):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                       p + "mlp.down_proj.weight": (h, inter), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    names = list(shapes)
    per = -(-len(names) // shards)
    weight_map = {}
    g = torch.Generator().manual_seed(0)
    for s in range(shards):
        part = names[s * per:(s + 1) * per]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: torch.randn(shapes[n], generator=g) * 0.02 for n in part}, str(folder / fname))
        weight_map.update({n: fname for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForCausalLM"]}))


CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from workbench._quiet import import_stack
    import_stack()
    import torch
    from workbench import Blueprint
    from workbench.mapping import Mapping
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    folder, mode = sys.argv[1], sys.argv[2]
    bp = Blueprint.from_hf(folder).set("kv_cache_length", 64)
    t = time.perf_counter()
    if mode == "workbench":
        model = Mapping.propose(bp, folder).load(kv_cache_length=64)
    else:
        from litert_torch.generative.utilities import model_builder
        names = {k: v for k, v in bp.tensor_names().items() if v}
        from litert_torch.generative.utilities.loader import ModelLoader
        model = model_builder.build_decoder_only_model(folder, bp.model_config(), ModelLoader.TensorNames(**names),
                                                       mask_cache_size=64)
    secs = time.perf_counter() - t
    out = model(torch.tensor([[1, 2, 3]], dtype=torch.int), torch.arange(3, dtype=torch.int),
                __import__("litert_torch.generative.layers.kv_cache", fromlist=["x"]).KVCache.from_model_config(
                    64, model.config))["logits"]
    assert torch.isfinite(out).all()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"base": base, "peak": peak, "seconds": secs}))
""")


def measure(folder: Path, mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), mode], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=HERE / "_work" / "tinyllama-1.1b")
    ap.add_argument("--shards", type=int, default=4)
    args = ap.parse_args()
    t = time.time()
    make_checkpoint(args.work, args.shards)
    print(f"checkpoint: {args.work} (made or found in {time.time() - t:.0f} s)")

    from workbench import Blueprint
    from workbench.checkpoint import Checkpoint
    from workbench.mapping import Mapping

    bp = Blueprint.from_hf(args.work)
    Mapping.propose(bp, args.work)  # warm the imports
    times = []
    for _ in range(5):
        t = time.perf_counter()
        m = Mapping.propose(bp, args.work)
        m.table()
        times.append(time.perf_counter() - t)
    weights = Checkpoint.open(args.work).nbytes
    print(f"proposal from headers ({len(m.checkpoint.tensors)} tensors, {weights / 1e9:.2f} GB of weights): "
          f"median {statistics.median(times) * 1000:.0f} ms  (target 500 ms: {statistics.median(times) / 0.5:.2f}x)")
    upd = []
    for i in range(40):
        t = time.perf_counter()
        m.set("ff_up_proj", "model.layers.{}.mlp.up_proj" if i % 2 else "model.layers.{}.mlp.fc1")
        m.table()
        upd.append(time.perf_counter() - t)
    print(f"table update after a pattern edit ({len(m.table())} rows): median {statistics.median(upd) * 1000:.1f} ms "
          f"(target 50 ms: {statistics.median(upd) / 0.05:.2f}x)")

    print("peak memory of loading (fresh process each; RSS includes ~imports):")
    rows = {}
    for mode in ("litert-torch ModelLoader", "workbench"):
        r = measure(args.work, "workbench" if mode == "workbench" else "litert")
        rows[mode] = r
        if "error" in r:
            print(f"  {mode:<26} failed: {r['error']}")
            continue
        extra = r["peak"] - r["base"]
        print(f"  {mode:<26} peak {r['peak'] / 1e9:5.2f} GB  (imports {r['base'] / 1e9:.2f} GB, +{extra / 1e9:.2f} GB "
              f"= {extra / weights:.2f}x the weights)  in {r['seconds']:.1f} s")
    if all("error" not in r for r in rows.values()):
        a, b = rows["litert-torch ModelLoader"], rows["workbench"]
        print(f"  ratio workbench / litert-torch (above imports): {(b['peak'] - b['base']) / (a['peak'] - a['base']):.2f}")


if __name__ == "__main__":
    main()
