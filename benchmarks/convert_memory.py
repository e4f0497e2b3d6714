"""Peak memory of converting llama-shaped models of growing size, three ways, dynamic int8.

    python benchmarks/convert_memory.py [--sizes 44M,156M,1.1B] [--limit-gb 20] [--only ours,litert,export_hf]

Each conversion runs in a fresh process whose tree's RSS is sampled every 0.1 s (and the
process's own ru_maxrss read at the end, which also sees the converter's C++ spikes; for
ours, the job's figure for its converting child, which does the same);
a run that passes --limit-gb is killed there and reported as "killed at N GB" — a result,
not a crash of the benchmark:
  litert-torch:  ModelLoader + converter.convert_to_tflite (its TinyLlama example's route)
  ours:          workbench.convert job (low-memory route: zero-copy constants, float file,
                 weights freed, ai-edge-quantizer file to file), check included
  export_hf:     litert-torch's direct Hugging Face export (dynamic_wi8_afp32)
The checkpoints are random (seeded) and made under benchmarks/_work (never committed).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _models import WORK, add_sample_tokenizer, run_sampled  # noqa: E402
SIZES = {  # name -> (layers, hidden, intermediate, heads, kv heads, vocab)
    "44M": (12, 512, 1376, 8, 4, 8000),
    "156M": (12, 1024, 2816, 16, 4, 8000),
    "400M": (16, 1536, 4096, 16, 4, 32000),
    "1.1B": (22, 2048, 5632, 32, 4, 32000),  # TinyLlama's shape
}

LITERT = textwrap.dedent("""
    import resource, sys
    from workbench._quiet import import_stack
    import_stack()
    from litert_torch.generative.utilities import converter, model_builder
    from litert_torch.generative.utilities.loader import ModelLoader
    from workbench import Blueprint
    folder, out = sys.argv[1], sys.argv[2]
    bp = Blueprint.from_hf(folder)
    names = ModelLoader.TensorNames(**{k: v for k, v in bp.tensor_names().items() if v})
    model = model_builder.build_decoder_only_model(folder, bp.model_config(), names, mask_cache_size=1024)
    converter.convert_to_tflite(model, out, "litert", prefill_seq_len=[8, 64], kv_cache_max_len=1024,
                                quantize="dynamic_int8", export_config=converter.ExportConfig())
    print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
""")
OURS = textwrap.dedent("""
    import sys
    from workbench._quiet import import_stack
    import_stack()
    from workbench.convert import convert
    r = convert(sys.argv[1], recipe="dynamic_int8", prefill=[8, 64], kv=1024, out=sys.argv[2], analyze=False,
                check_steps=4).result()
    print("PEAK", r.peak_rss_bytes)
    print("CHECK", r.check["top1_agreement"], (r.check.get("vs_reauthored") or {}).get("top1_agreement"))
""")
EXPORT_HF = textwrap.dedent("""
    import resource, sys
    from litert_torch.generative.export_hf import export
    export.export(model=sys.argv[1], output_dir=sys.argv[2], prefill_lengths=[8, 64], cache_length=1024,
                  quantization_recipe="dynamic_wi8_afp32", bundle_litert_lm=False, keep_temporary_files=True)
    print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
""")
RUNS = {"litert": LITERT, "ours": OURS, "export_hf": EXPORT_HF}


def checkpoint(name: str) -> Path:
    folder = WORK / f"memory-{name}"
    if not (folder / "config.json").exists():
        import torch
        from transformers import AutoModelForCausalLM, LlamaConfig

        layers, hidden, inter, heads, kv, vocab = SIZES[name]
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                          num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                          tie_word_embeddings=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.02)
        model.save_pretrained(folder, max_shard_size="1GB")
        del model
    return add_sample_tokenizer(folder)  # export_hf needs a tokenizer in the folder


def measure(code: str, folder: Path, limit: float) -> dict:
    out = Path(tempfile.mkdtemp(prefix="ewb-mem-"))
    r = run_sampled([sys.executable, "-c", code, str(folder), str(out)], limit_bytes=limit * 1e9)
    shutil.rmtree(out, ignore_errors=True)
    peak, seconds = r["peak"], r["seconds"]
    lines = dict(line.split(" ", 1) for line in r["stdout"].splitlines() if line.startswith(("PEAK", "CHECK")))
    if r["killed"]:
        return {"result": f"killed at {peak / 1e9:.1f} GB", "peak": peak, "seconds": seconds}
    if r["returncode"] != 0:
        return {"result": f"failed (exit {r['returncode']}) at {peak / 1e9:.1f} GB", "peak": peak, "seconds": seconds}
    own = int(lines.get("PEAK", "0"))
    # ours: the job's own figure, the converting child's (the script's parent process only
    # holds the imports and waits); the others convert in the measured process itself.
    value = own if code is OURS else max(peak, own)
    return {"result": "ok", "peak": value, "seconds": seconds, "check": lines.get("CHECK")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="44M,156M,1.1B")
    ap.add_argument("--only", default="litert,ours,export_hf")
    ap.add_argument("--limit-gb", type=float, default=20.0)
    args = ap.parse_args()
    rows = []
    for name in args.sizes.split(","):
        folder = checkpoint(name)
        from workbench import Blueprint

        bp = Blueprint.from_hf(folder)
        w = bp.summary().weights_bytes["fp32"]
        for kind in args.only.split(","):
            r = measure(RUNS[kind], folder, args.limit_gb)
            rows.append((name, bp.summary().params, w, kind, r))
            print(f"{name:>5} {kind:<10} {r['result']:<24} peak {r['peak'] / 1e9:6.2f} GB "
                  f"({r['peak'] / w:4.1f}x fp32 weights) {r['seconds']:6.0f} s"
                  + (f"  check top-1 vs transformers / vs re-authored: {r['check']}" if r.get("check") else ""),
                  flush=True)
    print(json.dumps([{"size": n, "params": p, "fp32_weight_bytes": w, "path": k, **r} for n, p, w, k, r in rows]))


if __name__ == "__main__":
    main()
