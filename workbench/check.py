"""The check after conversion: run the .tflite in ai-edge-litert and compare its logits.

A fixed prompt is prefilled through the `prefill_N` signature, then several tokens are
decoded one by one through `decode` with the KV cache carried between calls. The
tokens are the re-authored model's greedy continuation (transformers' when there is no
re-authored model), teacher-forced, so every model sees the same sequence; the logits at each decoded position are compared with the
re-authored PyTorch model's and with transformers'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.runtime import SignatureModel, load_tokenizer, trim_heap

CHECK_PROMPT = "Once upon a time, a small robot lived in a quiet town."


def prompt_ids(hf_dir: str | Path, max_len: int) -> list[int]:
    try:
        ids = load_tokenizer(hf_dir)(CHECK_PROMPT)["input_ids"]
    except Exception:  # noqa: BLE001 - no usable tokenizer: fixed ids
        ids = list(range(1, 13))
    return ids[:max_len]


def _metrics(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a - b)
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()), "mean_cosine": float(cos.mean()),
            "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).mean())}


@dataclass
class Reference:
    """The re-authored model's side of the check, computed while that model is in memory
    (in the conversion worker, right after its weights are loaded), so the check never
    loads it again: the token sequence (the prompt and our model's greedy continuation)
    and our logits at every position."""

    tokens: list[int]
    prompt_tokens: int
    logits: np.ndarray  # (len(tokens), vocab), float32


def reference(model, hf_dir: str | Path, prefill: int, kv: int, steps: int = 6) -> Reference:
    """Our model's greedy continuation of the check prompt and its logits over it."""
    from workbench import layers

    prompt = prompt_ids(hf_dir, min(prefill + 1, kv - steps))
    seq = list(prompt)
    for _ in range(steps):
        seq.append(int(layers.logits(model, seq, len(seq))[0, -1].argmax()))
    return Reference(seq, len(prompt), layers.logits(model, seq, len(seq))[0].float().numpy())


def transformers_logits(hf_dir: str | Path, tokens: list[int]):
    """transformers' logits over `tokens` (T, vocab), in float32 arithmetic, one model in memory.

    A float32 checkpoint is loaded as float32 (transformers maps the file). Any other (bf16,
    fp16) is loaded in its own dtype, as zero-copy views of the mapped file, and each decoder
    layer is upcast to float32 only for its own forward pass (the embedding, final norm and
    head are upcast once): widening bf16/fp16 to fp32 is exact, so these logits equal an
    fp32 model's, without a second full copy of the weights in memory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from workbench.checkpoint import Checkpoint

    ck = Checkpoint.open(hf_dir)
    floats = {t.dtype for t in ck.tensors.values() if t.dtype.startswith(("float", "bfloat"))}
    ck.close()
    src = floats.pop() if len(floats) == 1 else "float32"
    ids = torch.tensor([list(tokens)])
    if src == "float32":
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            return hf(ids).logits[0].float().numpy()
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=getattr(torch, src)).eval()
    cfg = AutoConfig.from_pretrained(hf_dir)
    blocks = max((m for m in hf.modules() if isinstance(m, torch.nn.ModuleList)), key=len)
    if len(blocks) != cfg.num_hidden_layers:
        raise RuntimeError(f"found no decoder layer list of {cfg.num_hidden_layers} in {type(hf).__name__}")
    inside = {id(t) for b in blocks for t in [*b.parameters(), *b.buffers()]}
    for t in [*hf.parameters(), *hf.buffers()]:  # embedding, norm, head (tied: one tensor), rotary
        if id(t) not in inside and t.is_floating_point():
            t.data = t.data.float()

    def widen(block, args, kwargs):
        block._ewb_narrow = [(t, t.data) for t in [*block.parameters(), *block.buffers()] if t.is_floating_point()]
        for t, d in block._ewb_narrow:
            t.data = d.float()

    def narrow(block, args, kwargs, out):
        for t, d in block._ewb_narrow:  # back to the views of the file: the fp32 copy is freed
            t.data = d
        del block._ewb_narrow

    for b in blocks:
        b.register_forward_pre_hook(widen, with_kwargs=True)
        b.register_forward_hook(narrow, with_kwargs=True)
    with torch.no_grad():
        return hf(ids).logits[0].float().numpy()


def check_tflite(path: str | Path, model, hf_dir: str | Path, prefill: int, kv: int, steps: int = 6,
                 threads: int = 2) -> dict:
    """Runs the converted model and compares its decode logits with transformers' and with the
    re-authored PyTorch model's; returns the figures.

    `model` is a `Reference` (computed by the worker while our model was loaded: the usual
    route), the re-authored model itself, or None (no comparison with it; the tokens are then
    transformers' greedy continuation). One model is in memory at a time: transformers'
    (bf16 checkpoints streamed layer by layer in fp32: `transformers_logits`), then the
    converted file, opened only after the references are freed (the runtime packs its
    weights when it opens the file: beside a reference model the two add up), with XNNPACK's
    weight cache (packed once for all signatures, into a mapped file, not once per signature)."""
    import gc

    import torch

    if isinstance(model, torch.nn.Module):
        model = reference(model, hf_dir, prefill, kv, steps)
    if model is None:
        from transformers import AutoModelForCausalLM

        prompt = prompt_ids(hf_dir, min(prefill + 1, kv - steps))
        hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        seq = list(prompt)
        with torch.no_grad():
            for _ in range(steps):
                seq.append(int(hf(torch.tensor([seq])).logits[0, -1].argmax()))
        del hf
        gc.collect()
        ours = None
    else:
        prompt, seq, ours = model.tokens[:model.prompt_tokens], list(model.tokens), model.logits
    ref = transformers_logits(hf_dir, seq)
    gc.collect()
    trim_heap()
    tfl = SignatureModel(path, threads, weight_cache=True)  # weights packed once, into a mapped file
    try:
        start = len(prompt) - 1
        if start > 0:
            tfl.prefill(prompt[:-1])
        positions = list(range(start, len(seq)))
        got = np.stack([tfl.decode(seq[p], p) for p in positions])
        signatures, style = list(tfl.signatures), tfl.style
    finally:
        tfl.close()
    vs_hf = _metrics(got, ref[positions])
    vs_pt = _metrics(got, ours[positions]) if ours is not None else None
    return {"positions": len(positions), "prompt_tokens": len(prompt), "max_abs_diff": vs_hf["max_abs_diff"],
            "top1_agreement": vs_hf["top1_agreement"], "mean_cosine": vs_hf["mean_cosine"],
            "vs_transformers": vs_hf, "vs_reauthored": vs_pt, "finite": bool(np.isfinite(got).all()),
            "signatures": signatures, "style": style}


def describe_signatures(path: str | Path) -> dict:
    """Input/output names, shapes and dtypes of every signature (for the manifest)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    out = {}
    for name in it.get_signature_list():
        r = it.get_signature_runner(name)
        io = {}
        for kind, det in (("inputs", r.get_input_details()), ("outputs", r.get_output_details())):
            io[kind] = {k: {"shape": [int(x) for x in v["shape"]], "dtype": np.dtype(v["dtype"]).name}
                        for k, v in det.items()}
        out[name] = io
    return out


__all__ = ["Reference", "SignatureModel", "check_tflite", "describe_signatures", "prompt_ids", "reference",
           "transformers_logits"]
