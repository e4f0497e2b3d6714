"""Workbench conversion overhead over litert-torch's converter called directly (target: <= 5%
time and <= 5% peak memory), side by side in one run.

    python benchmarks/convert_overhead.py [--layers 12] [--hidden 512] [--recipe dynamic_int8]

Both sides convert the same llama-shaped random checkpoint (made under benchmarks/_work,
never committed) with the same prefill lengths, kv and recipe, each in a fresh process
whose peak RSS is sampled (the process tree, every 0.1 s):
  litert-torch: build_decoder_only_model (ModelLoader) + converter.convert_to_tflite
  workbench:    convert(...) job: meta-device build, mmapped load, float conversion,
                ai-edge-quantizer, atomic write + manifest; reported with and without the check.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _models import llama_checkpoint, run_sampled  # noqa: E402

LITERT = textwrap.dedent("""
    import json, sys, time
    from workbench._quiet import import_stack
    import_stack()
    from litert_torch.generative.utilities import converter, model_builder
    from litert_torch.generative.utilities.loader import ModelLoader
    from workbench import Blueprint
    folder, out, recipe, kv = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    t = time.time()
    bp = Blueprint.from_hf(folder)
    names = ModelLoader.TensorNames(**{k: v for k, v in bp.tensor_names().items() if v})
    model = model_builder.build_decoder_only_model(folder, bp.model_config(), names, mask_cache_size=kv)
    converter.convert_to_tflite(model, out, "litert", prefill_seq_len=[8, 64], kv_cache_max_len=kv, quantize=recipe,
                                export_config=converter.ExportConfig())
    print(json.dumps({"seconds": time.time() - t}))
""")

WORKBENCH = textwrap.dedent("""
    import json, sys, time
    from workbench._quiet import import_stack
    import_stack()
    from workbench.convert import convert, prewarm
    prewarm(wait=True)  # what the Convert panel does when it opens
    folder, out, recipe, kv, steps, analyze = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), \\
        int(sys.argv[5]), sys.argv[6] == "1"
    t = time.time()
    job = convert(folder, recipe=recipe, prefill=[8, 64], kv=kv, out=out, check_steps=steps, analyze=analyze)
    res = job.result()
    print(json.dumps({"seconds": time.time() - t, "child_peak": job.peak_rss_bytes}))
""")


def measure(code: str, args: list[str]) -> dict:
    """Runs `code` in a fresh process; its own figures plus the process tree's sampled peak RSS."""
    r = run_sampled([sys.executable, "-c", code, *args])
    if r["returncode"] != 0:
        raise RuntimeError(f"exit {r['returncode']}")
    return {**json.loads(r["stdout"].strip().splitlines()[-1]), "tree_peak": r["peak"], "wall": r["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--recipe", default="dynamic_int8")
    ap.add_argument("--kv", type=int, default=256)
    args = ap.parse_args()
    folder = llama_checkpoint(args.layers, args.hidden)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        a = [str(folder), None, args.recipe, str(args.kv)]
        rows["litert-torch convert_to_tflite"] = measure(LITERT, [a[0], tmp + "/a", a[2], a[3]])
        rows["workbench job"] = measure(WORKBENCH, [a[0], tmp + "/b", a[2], a[3], "0", "0"])
        rows["workbench job + check"] = measure(WORKBENCH, [a[0], tmp + "/c", a[2], a[3], "6", "0"])
        rows["workbench job + check + error view"] = measure(WORKBENCH, [a[0], tmp + "/d", a[2], a[3], "6", "1"])
        sizes = {p.parent.name: p.stat().st_size for p in Path(tmp).glob("*/*.tflite")}
    base = rows["litert-torch convert_to_tflite"]
    print(f"conversion of llama {args.layers} x {args.hidden} ({args.recipe}, prefill 8+64, kv {args.kv}); "
          "time from the call (imports done) to the checked file; peak RSS of the process doing the conversion:")
    for name, r in rows.items():
        peak = r.get("child_peak") or r["tree_peak"]
        print(f"  {name:<36} {r['seconds']:6.1f} s ({r['seconds'] / base['seconds']:5.2f}x)   "
              f"peak {peak / 1e9:5.2f} GB ({peak / base['tree_peak']:5.2f}x)")
    print(f"  file sizes (bytes): {json.dumps(sizes)}")
    print("  targets: 'workbench job' / litert-torch <= 1.05x in time and in peak memory. The job's child imports "
          "the stack in a warm worker (started when the Convert panel opens, or by prewarm()), before the timer starts.")


if __name__ == "__main__":
    main()
