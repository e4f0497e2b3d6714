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

Real shapes, one conversion of ours per shape, with the child's memory stage by stage:

    python benchmarks/convert_memory.py --shape llama3.2-3b --dtype bf16 [--recipe dynamic_int8]
        [--prefill 128] [--kv 1024] [--limit-gb 15] [--cgroup-gib 8]

`--shape` takes the published shapes of llama3.2-3b, phi3-mini, qwen2.5-3b, gemma2-2b and
tinyllama-1.1b, built with transformers' own config classes (random seeded weights, saved in
`--dtype` bf16 or fp32 shard by shard: a bf16 checkpoint is never held in fp32). `--keep DIR`
keeps the file; `--check-parts FILE` then measures each model the check loads, alone. Each run
prints peak, time, file size, the check, and the per-stage table: the child's RSS at the end of
each stage and the peak within it (its `stage_memory`), beside the job's sampled peak of the
child's tree per stage (which is all there is when the run is killed at --limit-gb).
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
from _models import WORK, MemoryCgroup, add_sample_tokenizer, run_sampled  # noqa: E402
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


# ---- real shapes (--shape), in transformers' own config classes ---------------------
def _shape_config(name: str):
    """The published shape of a model family's checkpoint (transformers' config class)."""
    import transformers as tf

    if name == "llama3.2-3b":  # meta-llama/Llama-3.2-3B
        return tf.LlamaConfig(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                              num_attention_heads=24, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-5,
                              max_position_embeddings=131072, tie_word_embeddings=True, bos_token_id=128000,
                              eos_token_id=128001,
                              rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                               "original_max_position_embeddings": 8192})
    if name == "phi3-mini":  # microsoft/Phi-3-mini-4k-instruct (3.8B)
        return tf.Phi3Config(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5,
                             max_position_embeddings=4096, original_max_position_embeddings=4096,
                             tie_word_embeddings=False, bos_token_id=1, eos_token_id=32000, pad_token_id=32000,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if name == "qwen2.5-3b":  # Qwen/Qwen2.5-3B
        return tf.Qwen2Config(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                              num_attention_heads=16, num_key_value_heads=2, rms_norm_eps=1e-6,
                              max_position_embeddings=32768, tie_word_embeddings=True, use_sliding_window=False,
                              bos_token_id=151643, eos_token_id=151643,
                              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    if name == "gemma2-2b":  # google/gemma-2-2b
        return tf.Gemma2Config(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                               num_attention_heads=8, num_key_value_heads=4, head_dim=256, rms_norm_eps=1e-6,
                               max_position_embeddings=8192, query_pre_attn_scalar=256, sliding_window=4096,
                               final_logit_softcapping=30.0, attn_logit_softcapping=50.0, tie_word_embeddings=True,
                               hidden_activation="gelu_pytorch_tanh", bos_token_id=2, eos_token_id=1, pad_token_id=0,
                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if name == "tinyllama-1.1b":  # TinyLlama/TinyLlama-1.1B (the 1.1B rows above)
        return tf.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                              num_attention_heads=32, num_key_value_heads=4, rms_norm_eps=1e-5,
                              max_position_embeddings=2048, tie_word_embeddings=False,
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    raise SystemExit(f"unknown --shape {name!r}; choose from {', '.join(SHAPES)}")


SHAPES = ("llama3.2-3b", "phi3-mini", "qwen2.5-3b", "gemma2-2b", "tinyllama-1.1b")


def shape_checkpoint(name: str, dtype: str, shard_bytes: int = 2 * 2**30) -> Path:
    """A random (seeded, N(0, 0.02)) checkpoint of a real shape, saved in `dtype`. The model is
    built on the meta device only for its tensor names and shapes; each tensor is then made in
    `dtype` and written shard by shard (safetensors), so at most one shard is ever in memory and
    a bf16 checkpoint is never held in fp32."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    folder = WORK / f"shape-{name}-{dtype}"
    if (folder / "model.safetensors.index.json").exists():
        return add_sample_tokenizer(folder)
    cfg = _shape_config(name)
    want = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(cfg)
    shapes = [(k, tuple(v.shape)) for k, v in meta.state_dict().items()]
    del meta
    if cfg.tie_word_embeddings:
        shapes = [(k, sh) for k, sh in shapes if k != "lm_head.weight"]
    tmp = folder.with_name(folder.name + ".partial")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.manual_seed(0)
    weight_map, shard, size, total, n = {}, {}, 0, 0, 0
    def flush() -> None:
        nonlocal shard, size, n
        if shard:
            n += 1
            fname = f"model-{n:05d}.safetensors"
            save_file(shard, str(tmp / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
            shard, size = {}, 0
    for k, sh in shapes:
        t = torch.empty(sh, dtype=want).normal_(0.0, 0.02)
        if size and size + t.numel() * t.element_size() > shard_bytes:
            flush()
        shard[k] = t
        size += t.numel() * t.element_size()
        total += t.numel() * t.element_size()
    flush()
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    cfg.dtype = want
    cfg.save_pretrained(tmp)
    tmp.rename(folder)
    return add_sample_tokenizer(folder)


OURS_SHAPE = textwrap.dedent("""
    import json, os, signal, sys, time
    from workbench.convert import ConversionError, convert
    folder, out, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    t0 = time.time()
    job = convert(folder, recipe=opts["recipe"], prefill=opts["prefill"], kv=opts["kv"], out=out, analyze=False,
                  check_steps=opts["check_steps"])
    if opts.get("cgroup_procs"):  # the worker alone, from its first second, in the benchmark's memory cgroup
        open(opts["cgroup_procs"], "w").write(str(job.proc.pid))
    import psutil
    limit, sampled, anon_sampled, killed = opts["limit"], {}, {}, None

    def tree_anon():  # RSS minus its file-backed and shared pages: what the kernel cannot drop
        try:
            root = psutil.Process(job.proc.pid)
            return sum(m.rss - m.shared for m in (p.memory_info() for p in [root, *root.children(recursive=True)]))
        except psutil.Error:
            return 0

    while not job.done:  # the job samples its child's tree every 0.1 s; we keep the peak per stage
        st = job.status()
        anon = tree_anon()
        sampled[st["stage"]] = max(sampled.get(st["stage"], 0), st["rss_bytes"])
        anon_sampled[st["stage"]] = max(anon_sampled.get(st["stage"], 0), anon)
        over = anon if opts.get("limit_on") == "anon" else st["rss_bytes"]
        if limit and over > limit and killed is None:
            killed = {"stage": st["stage"], "rss_bytes": st["rss_bytes"], "anon_bytes": anon}
            os.killpg(job.proc.pid, signal.SIGKILL)  # the worker has its own session: kill it, not us
        time.sleep(0.1)
    res = {"wall_s": time.time() - t0, "sampled": sampled, "anon_sampled": anon_sampled, "killed": killed,
           "estimate": job.spec.get("estimated_peak_bytes")}
    try:
        r = job.result()
        man = json.loads(r.manifest_path.read_text())
        res.update(ok=True, peak=r.peak_rss_bytes, seconds=r.seconds, size=r.size_bytes, check=r.check,
                   stage_memory=man.get("stage_memory"))
        if not opts.get("keep"):
            r.path.unlink(); r.manifest_path.unlink()
        else:
            res["kept"] = str(r.path)
    except ConversionError as e:
        res.update(ok=False, peak=e.peak_rss_bytes, error=str(e), stage=e.stage)
    print("RESULT " + json.dumps(res))
""")
CHECK_PART = textwrap.dedent("""
    import functools, json, sys
    def status():
        d = {}
        for line in open("/proc/self/status"):
            k = line.split(":")[0]
            if k in ("VmHWM", "RssAnon"):
                d[k] = int(line.split()[1]) * 1024
        return d
    part, folder, path = sys.argv[1:4]
    from workbench._quiet import import_stack
    import_stack()
    import torch
    seq = list(range(1, 16))
    if part.startswith("tflite"):
        if part == "tflite-weight-cache":
            import ai_edge_litert.options as o
            o.CpuOptions = functools.partial(o.CpuOptions, xnnpack_weight_cache_path=path + ".xnncache")
        from workbench import runtime
        m = runtime.SignatureModel(path, 2)
        m.prefill(seq[:8]); [m.decode(seq[p], p) for p in range(8, 12)]
    elif part.startswith("transformers"):
        from transformers import AutoModelForCausalLM
        dt = torch.bfloat16 if part.endswith("bf16") else torch.float32
        with torch.no_grad():
            AutoModelForCausalLM.from_pretrained(folder, dtype=dt).eval()(torch.tensor([seq]))
    else:
        from workbench import Blueprint, layers
        from workbench.mapping import Mapping
        model = Mapping.propose(Blueprint.from_hf(folder), folder).load(kv_cache_length=1024)
        layers.logits(model, seq, len(seq))
    print("PART " + json.dumps(status()))
""")
CHECK_PARTS = ("tflite", "tflite-weight-cache", "transformers-fp32", "transformers-bf16", "ours-fp32")


def check_parts(name: str, dtype: str, tflite: str, limit_gb: float) -> None:
    """What each model the check loads costs alone, one fresh process each: the converted file in
    ai-edge-litert (with and without an XNNPACK weight-cache file), transformers' model as fp32 and
    as bf16, our re-authored model as fp32. Peak RSS (the process's own high-water mark) and its
    anonymous part at the end."""
    folder = shape_checkpoint(name, dtype)
    for part in CHECK_PARTS:
        r = run_sampled([sys.executable, "-c", CHECK_PART, part, str(folder), tflite], limit_bytes=limit_gb * 1e9)
        line = next((ln for ln in r["stdout"].splitlines() if ln.startswith("PART ")), None)
        if r["killed"]:
            print(f"  {part:<22} killed at {r['peak'] / 1e9:.1f} GB (limit)", flush=True)
        elif line is None:
            print(f"  {part:<22} failed (exit {r['returncode']})", flush=True)
        else:
            d = json.loads(line[5:])
            print(f"  {part:<22} peak {max(d['VmHWM'], r['peak']) / 1e9:6.2f} GB, anonymous at the end "
                  f"{d['RssAnon'] / 1e9:6.2f} GB, {r['seconds']:.0f} s", flush=True)
    Path(tflite + ".xnncache").unlink(missing_ok=True)


STAGE_ORDER = ("starting", "build", "load weights", "check: re-authored model", "export", "lower", "write",
               "quantize", "check")


def run_shape(name: str, dtype: str, recipe: str, prefill: list[int], kv: int, limit_gb: float,
              check_steps: int, keep: str = "", limit_on: str = "rss", cgroup_gib: float = 0.0) -> dict:
    """One conversion of ours on a real shape: peak, time, size, check, stage by stage. With
    `cgroup_gib`, the job's worker runs in a memory cgroup of that many GiB (the kernel reclaims
    file pages under it and kills only past it: "fits in N GiB" measured, not inferred)."""
    folder = shape_checkpoint(name, dtype)
    from workbench import Blueprint

    bp = Blueprint.from_hf(folder)
    w32 = bp.summary().weights_bytes["fp32"]
    out = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="ewb-mem-", dir=WORK))
    opts = {"recipe": recipe, "prefill": prefill, "kv": kv, "limit": limit_gb * 1e9, "check_steps": check_steps,
            "keep": bool(keep), "limit_on": limit_on}
    cg = MemoryCgroup(int(cgroup_gib * 2**30), "ewb-convert-memory") if cgroup_gib else None
    if cg:
        opts["cgroup_procs"] = str(cg.path / "cgroup.procs")
    # The script itself kills the job's worker at the limit; the backstop here only guards the script.
    try:
        r = run_sampled([sys.executable, "-c", OURS_SHAPE, str(folder), str(out), json.dumps(opts)])
    finally:
        cgroup = cg.stats() if cg else None
        if cg:
            cg.close()
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    line = next((ln for ln in r["stdout"].splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{name}: the benchmark script failed (exit {r['returncode']})")
    res = json.loads(line[len("RESULT "):])
    res.update(shape=name, dtype=dtype, recipe=recipe, prefill=prefill, kv=kv, params=bp.summary().params,
               cgroup=cgroup, fp32_weight_bytes=w32, checkpoint_bytes=sum(f.stat().st_size for f in folder.glob("*.safetensors")))
    _print_shape(res)
    return res


def _print_shape(res: dict) -> None:
    gb = lambda n: f"{(n or 0) / 1e9:6.2f} GB"  # noqa: E731
    w = res["fp32_weight_bytes"]
    head = (f"{res['shape']} {res['dtype']} ({res['params'] / 1e9:.2f}B params, fp32 weights {w / 1e9:.2f} GB, "
            f"checkpoint {res['checkpoint_bytes'] / 1e9:.2f} GB), {res['recipe']}, prefill {res['prefill']}, "
            f"kv {res['kv']}")
    print(head, flush=True)
    if res.get("killed"):
        print(f"  killed at {res['killed']['rss_bytes'] / 1e9:.1f} GB RSS, "
              f"{res['killed'].get('anon_bytes', 0) / 1e9:.1f} GB anonymous, during {res['killed']['stage']} "
              f"(limit), after {res['wall_s']:.0f} s; estimate {gb(res['estimate'])}")
    elif not res["ok"]:
        print(f"  failed: {res.get('error')} (peak {gb(res['peak'])}, {res['wall_s']:.0f} s)")
    else:
        c = res["check"] or {}
        vs = (c.get("vs_reauthored") or {})
        print(f"  peak {gb(res['peak'])} ({res['peak'] / w:.2f}x fp32 weights; estimate {gb(res['estimate'])}), "
              f"{res['seconds']:.0f} s in the child ({res['wall_s']:.0f} s from the call), file "
              f"{res['size'] / 1e9:.2f} GB, " + ("check skipped" if c.get("skipped") else
                                                  f"check top-1 vs transformers {c.get('top1_agreement')} "
                                                  f"(cosine {c.get('mean_cosine', 0):.4f}), vs re-authored "
                                                  f"{vs.get('top1_agreement')}"))
    sm, sampled, anon = res.get("stage_memory") or {}, res.get("sampled") or {}, res.get("anon_sampled") or {}
    if anon:
        print(f"  peak anonymous memory of the tree (sampled): {gb(max(anon.values()))}")
    if res.get("cgroup"):
        cg = res["cgroup"]
        print(f"  in a {cg['limit_bytes'] / 2**30:.0f} GiB memory cgroup: its peak usage {gb(cg['peak_bytes'])} "
              f"(page cache included), {cg['oom_kills']} OOM kills, limit hit {cg['failcnt']} times (pages reclaimed)")
    print(f"  {'stage':<26} {'RSS at end':>11} {'peak in stage':>14} {'anon at end':>12} {'anon peak':>10} "
          f"{'sampled tree peak':>18} {'sampled anon':>13}")
    for st in sorted(set(sm) | set(sampled), key=lambda k: STAGE_ORDER.index(k) if k in STAGE_ORDER else 99):
        rec = sm.get(st, {})
        cell = lambda k: gb(rec.get(k)) if rec else ""  # noqa: E731
        print(f"  {st:<26} {cell('rss_end_bytes'):>11} {cell('peak_bytes'):>14} {cell('anon_end_bytes'):>12} "
              f"{cell('anon_peak_bytes'):>10} {gb(sampled.get(st)):>18} {gb(anon.get(st)):>13}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="44M,156M,1.1B")
    ap.add_argument("--only", default="litert,ours,export_hf")
    ap.add_argument("--limit-gb", type=float, default=20.0)
    ap.add_argument("--limit-on", choices=("rss", "anon"), default="rss",
                    help="--shape: what --limit-gb is held against: the tree's RSS, or its anonymous memory alone "
                         "(file-backed pages, e.g. the scratch file of the float weights, can be reclaimed)")
    ap.add_argument("--cgroup-gib", type=float, default=0.0,
                    help="--shape: run the job's worker in a memory cgroup of this many GiB (made under the "
                         "benchmark's own cgroup, removed after): the kernel enforces the limit")
    ap.add_argument("--shape", help=f"real shapes, comma-separated: {', '.join(SHAPES)} (ours; with --only "
                                    "export_hf, litert-torch's direct export instead, prefill 8,64, kv 1024)")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="the --shape checkpoint's dtype")
    ap.add_argument("--recipe", default="dynamic_int8")
    ap.add_argument("--prefill", default="8,64")
    ap.add_argument("--kv", type=int, default=1024)
    ap.add_argument("--check-steps", type=int, default=4, help="0 skips the check (to measure the rest alone)")
    ap.add_argument("--keep", default="", help="--shape: keep the converted file in this folder")
    ap.add_argument("--check-parts", default="", metavar="TFLITE",
                    help="with one --shape: measure the models the check loads, each alone, on this converted file")
    args = ap.parse_args()
    if args.shape and args.check_parts:
        check_parts(args.shape, args.dtype, args.check_parts, args.limit_gb)
        return
    if args.shape and args.only == "export_hf":  # litert-torch's direct export on a real shape: peak or kill point
        rows = []
        for n in args.shape.split(","):
            folder = add_sample_tokenizer(shape_checkpoint(n, args.dtype))
            r = measure(EXPORT_HF, folder, args.limit_gb)
            rows.append({"shape": n, "dtype": args.dtype, "path": "export_hf", **r})
            print(f"{n} {args.dtype} export_hf: {r['result']}, peak {r['peak'] / 1e9:.2f} GB, {r['seconds']:.0f} s", flush=True)
        print(json.dumps(rows))
        return
    if args.shape:
        prefill = [int(x) for x in args.prefill.split(",")]
        rows = [run_shape(n, args.dtype, args.recipe, prefill, args.kv, args.limit_gb, args.check_steps, args.keep,
                          args.limit_on, args.cgroup_gib) for n in args.shape.split(",")]
        print(json.dumps(rows))
        return
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
