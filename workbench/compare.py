"""Layer-by-layer comparison of the original transformers model and the re-authored one.

    c = compare("sample_models/llama-tiny", bp, mapping, prompts=["Once upon a time"])
    c.first_divergence(1e-5)      # the first layer/sub-module above tolerance, with a hint
    c.logits, c.generation, c.passed
    c.figures()                   # plotly: error per layer (log), heat map layer x sub-module

Both models run once per prompt with forward hooks at stable capture points, named in
litert-torch's module vocabulary (`transformer_blocks.3.attention`, `final_norm`,
`logits`; see CAPTURE_POINTS). The transformers side finds its modules through the
mapping's TensorNames patterns, so no family needs code of its own here.
"""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from workbench.errors import WorkbenchError
from workbench.progress import Progress, report

if TYPE_CHECKING:
    from workbench.blueprint import Blueprint
    from workbench.mapping import Mapping

# Per decoder layer, in forward order; then the model-level points around them.
LAYER_POINTS = ("input_norm", "attention", "post_attention_residual", "mlp", "output")
HINTS = {
    "embedding": "the embedding weights or the embedding scale (Gemma multiplies by sqrt(hidden_size))",
    "input_norm": "the norm's eps or offset (+1 weights, Gemma), its type (RMS vs Layer), or this layer's norm "
                  "weights (layers swapped?)",
    "attention": "RoPE base or rotary fraction, attention scale (query_pre_attn_scalar) or soft-cap, the KV-head "
                 "grouping, a sliding window, or q/k/v/o weights swapped or transposed",
    "post_attention_residual": "how the attention output joins the residual (post-norms, parallel residual)",
    "mlp": "the activation (SiLU vs GELU, tanh approximation), gated vs sequential feed-forward, gate/up swapped, "
           "or the feed-forward norms",
    "output": "the residual structure of the block (parallel residual, post-norms)",
    "final_norm": "the final norm's eps, offset or weights",
    "logits": "the LM head (tied vs untied, bias) or the final logit soft-cap",
}


class CompareError(WorkbenchError):
    """A comparison that cannot run as asked."""


@dataclasses.dataclass(frozen=True)
class Record:
    """Errors of one capture point: re-authored vs original, over every prompt."""

    name: str  # e.g. transformer_blocks.2.attention
    layer: Optional[int]
    point: str
    max_abs_diff: float
    mean_abs_diff: float
    rel_error: float  # ||a - b|| / ||b||
    cosine: float
    shape: tuple[int, ...]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclasses.dataclass(frozen=True)
class Divergence:
    name: str
    layer: Optional[int]
    point: str
    max_abs_diff: float
    hint: str

    def __str__(self) -> str:
        return f"{self.name} (max abs diff {self.max_abs_diff:.3g}): check {self.hint}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Comparison:
    """The result of `compare`: per-point records, end-to-end figures, side-by-side text."""

    records: list[Record]
    logits: dict[str, float]  # max_abs_diff, mean_abs_diff, top1_agreement
    generation: dict[str, Any]  # reference/reauthored ids and text, first_diff
    prompts: list[list[int]]
    tol: float
    notes: list[str] = dataclasses.field(default_factory=list)
    num_layers: int = 0
    converted: Optional[dict] = None  # end-to-end logits of a converted .tflite vs the original

    def first_divergence(self, tol: Optional[float] = None) -> Optional[Divergence]:
        """The first capture point, in forward order, whose max abs diff exceeds `tol`."""
        tol = self.tol if tol is None else tol
        for r in self.records:
            if not r.max_abs_diff <= tol:  # NaN counts as divergent
                hint = HINTS[r.point]
                if r.layer and r.point == "input_norm":
                    hint = f"layer {r.layer}'s weights (swapped with another layer?) or " + HINTS[r.point]
                return Divergence(r.name, r.layer, r.point, r.max_abs_diff, hint)
        return None

    @property
    def passed(self) -> bool:
        return self.logits["max_abs_diff"] <= self.tol and self.first_divergence() is None

    def verdict(self) -> str:
        d = self.first_divergence()
        if d is None:
            worst = max((r.max_abs_diff for r in self.records if r.point != "logits"), default=0.0)
            return (f"all {self.num_layers} layers within {self.tol:g} (worst {worst:.2g}); logits max diff "
                    f"{self.logits['max_abs_diff']:.2g}, top-1 agreement {self.logits['top1_agreement']:.0%}")
        return f"first divergence at {d}"

    def to_json(self) -> dict:
        d = self.first_divergence()
        return {
            "passed": self.passed,
            "tol": self.tol,
            "verdict": self.verdict(),
            "logits": self.logits,
            "layers": [r.to_json() for r in self.records],
            "first_divergence": d.to_json() if d else None,
            "generation": self.generation,
            "prompts": self.prompts,
            "notes": self.notes,
            "converted": self.converted,
            "num_layers": self.num_layers,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Comparison":
        """The Comparison `to_json()` wrote, exactly (nothing is recomputed)."""
        records = [Record(**{**r, "shape": tuple(r["shape"])}) for r in d["layers"]]
        layers = {r.layer for r in records if r.layer is not None}
        return cls(records, d["logits"], d["generation"], d["prompts"], d["tol"], d.get("notes", []),
                   d.get("num_layers", max(layers) + 1 if layers else 0), d.get("converted"))

    def figures(self):
        from workbench import plots

        return plots.error_per_layer(self), plots.error_heatmap(self)

    def _repr_html_(self) -> str:
        color = "#2e7d32" if self.passed else "#c62828"
        return f"<div><b>Comparison</b>: <span style='color:{color}'>{html.escape(self.verdict())}</span></div>"


# ---- capture ----------------------------------------------------------------------
def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _hidden_in(args, kwargs):
    return args[0] if args else kwargs.get("hidden_states")


def _parent(pattern: Optional[str]) -> Optional[str]:
    return pattern.rsplit(".", 1)[0] if pattern and "." in pattern else None


def capture_plan(bp: "Blueprint", names: dict[str, Optional[str]]) -> list[tuple[str, Optional[int], str, tuple, tuple]]:
    """(record name, layer, point, (our module, kind), (original module, kind)) in forward
    order; kind is "out" (the module's output) or "in" (its first input)."""
    plan = []
    # The decoder layer's module: the parent of its input norm (model.layers.{}), or the
    # grandparent of its attention output projection (model.layers.{}.self_attn.o_proj).
    layer_t = _parent(names.get("pre_attn_norm")) or _parent(_parent(names.get("attn_output_proj")))
    if not layer_t:
        raise CompareError("the mapping names neither pre_attn_norm nor attn_output_proj, so the original's "
                           "decoder layers cannot be found", hint="complete the mapping first")
    plan.append(("embedding", None, "embedding", ("transformer_blocks.0", "in"), (layer_t.format(0), "in")))
    for i in range(bp.num_layers):
        s = bp.layer_spec(i)
        p = f"transformer_blocks.{i}"

        def hf(key: str, kind: str = "out", parent: bool = False) -> Optional[tuple]:
            pat = names.get(key)
            if not pat:
                return None
            path = (_parent(pat) if parent else pat).format(i)
            return (path, kind)

        rows = [("input_norm", (f"{p}.pre_atten_norm", "out"), hf("pre_attn_norm")),
                ("attention", (f"{p}.atten_func", "out"), hf("attn_output_proj", parent=True) or
                 hf("attn_fused_qkv_proj", parent=True))]
        if not s.parallel_residual:
            rows.append(("post_attention_residual",
                         (f"{p}.ff" if s.post_norms else f"{p}.post_atten_norm", "in"),
                         hf("pre_ff_norm", "in") if s.post_norms else hf("post_attn_norm", "in")))
        rows.append(("mlp", (f"{p}.ff", "out"), hf("post_ff_norm") if s.post_norms else
                     hf("ff_down_proj", parent=True)))
        rows.append(("output", (p, "out"), (layer_t.format(i), "out")))
        for point, ours, theirs in rows:
            if theirs is not None:
                plan.append((f"{p}.{point}", i, point, ours, theirs))
    if names.get("final_norm"):
        plan.append(("final_norm", None, "final_norm", ("final_norm", "out"), (names["final_norm"], "out")))
    return plan


def _hook(model, path: str, kind: str, store: dict, key: str) -> Optional[Any]:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    # Copies, not views: the original may add into a captured tensor in place afterwards
    # (Falcon's parallel block does `mlp_output += attn_output`).
    if kind == "in":
        return module.register_forward_pre_hook(
            lambda m, args, kwargs: store.__setitem__(key, _hidden_in(args, kwargs).detach().clone()),
            with_kwargs=True)
    return module.register_forward_hook(lambda m, args, out: store.__setitem__(key, _first(out).detach().clone()))


def _run_captured(model, plan, side: int, run: Callable[[], Any]) -> tuple[dict, Any, list[str]]:
    """Runs `run()` with hooks on side 0 (ours) or 1 (original); returns the captures,
    run's result and the capture points whose module does not exist."""
    store: dict = {}
    handles = []
    missing = []
    for name, _, _, ours, theirs in plan:
        path, kind = (ours, theirs)[side]
        h = _hook(model, path, kind, store, name)
        if h is None:
            missing.append(name)
        else:
            handles.append(h)
    try:
        logits = run()
    finally:
        for h in handles:
            h.remove()
    return store, logits, missing


def _stats(a, b) -> tuple[float, float, float, float]:
    """max abs, mean abs, relative error and cosine. In float32: the difference of two
    close float32 numbers is exact, so nothing is lost against float64, at half the cost."""
    import torch

    d = (a - b).abs()
    nb = float(torch.linalg.vector_norm(b))
    cos = float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))
    return float(d.max()), float(d.mean()), float(torch.linalg.vector_norm(a - b)) / (nb or 1.0), cos


# ---- the comparison ---------------------------------------------------------------
def _tokenize(hf_dir: Path, prompts, notes: list[str]) -> tuple[list[list[int]], Any]:
    tok = None
    try:
        from workbench.runtime import load_tokenizer

        tok = load_tokenizer(hf_dir)
    except Exception as e:  # noqa: BLE001 - any tokenizer failure falls back to ids, said clearly
        notes.append(f"no usable tokenizer in {hf_dir} ({e}): compared on token ids")
    if not prompts:
        from workbench.check import CHECK_PROMPT

        prompts = [CHECK_PROMPT] if tok is not None else [list(range(1, 13))]
    out = []
    for p in prompts:
        if isinstance(p, str) and not p.strip():
            raise CompareError("a prompt is empty", hint="give each prompt some text or at least one token id")
        if isinstance(p, str):
            if tok is None:
                raise CompareError(f"prompt {p[:40]!r} is text, but {hf_dir} has no tokenizer",
                                   hint="give the prompts as lists of token ids instead")
            ids = tok(p)["input_ids"]
        else:
            ids = [int(t) for t in p]
        if not ids:
            raise CompareError("a prompt is empty", hint="give each prompt at least one token")
        out.append(ids)
    return out, tok


def compare(hf_dir: str | Path, model_or_blueprint, mapping: Optional["Mapping"] = None,
            prompts: Optional[Sequence] = None, tol: float = 1e-4, max_new_tokens: int = 8,
            progress: Optional[Progress] = None, tflite: Optional[str | Path] = None) -> Comparison:
    """Runs the original and the re-authored model on the same tokens and records, for every
    decoder layer and sub-module, how far apart they are.

    `model_or_blueprint`: a loaded re-authored model, or a Blueprint (its weights are
    loaded through `mapping`, proposed when None). `prompts`: texts (tokenized with the
    folder's tokenizer) or lists of token ids; default: one short text, or ids when the
    folder has no tokenizer. `tflite`: a converted model, whose decode logits at every
    position of the first prompt are compared with the original's too (`c.converted`).
    """
    from workbench._quiet import import_stack

    import_stack()
    import torch
    from transformers import AutoModelForCausalLM

    from workbench import hub, layers
    from workbench.blueprint import Blueprint
    from workbench.mapping import Mapping

    hf_dir = hub.resolve(hf_dir, progress=progress)  # a folder, or a Hub id (org/name[@rev])
    notes: list[str] = []
    bp0 = model_or_blueprint if isinstance(model_or_blueprint, Blueprint) else getattr(mapping, "blueprint", None)
    if bp0 is not None:
        vocab = Blueprint.from_hf(hf_dir).vocab_size
        if vocab != bp0.vocab_size:
            raise CompareError(f"the models' vocabularies differ: original {vocab}, re-authored {bp0.vocab_size}",
                               hint="set the blueprint's vocab_size to the checkpoint's")
    report(progress, "prepare", 0, 4, "re-authored model")
    if isinstance(model_or_blueprint, Blueprint):
        bp = model_or_blueprint
        mapping = mapping or Mapping.propose(bp, hf_dir)
        model = mapping.load()
    else:
        model = model_or_blueprint
        if mapping is None:
            raise CompareError("comparing a built model needs its mapping (to find the original's modules)",
                               hint="pass mapping=..., or pass the Blueprint and let compare load the weights")
        bp = mapping.blueprint
    names = dict(mapping.tensor_names)
    report(progress, "prepare", 1, 4, "original model")
    from workbench import families

    fam = families.FAMILIES.get(bp.family)
    attn = fam.reference_attention if fam else "eager"
    original = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation=attn).eval()
    ids, tok = _tokenize(hf_dir, prompts, notes)
    limit = min(bp.max_seq_len, getattr(original.config, "max_position_embeddings", bp.max_seq_len))
    for p in ids:
        if len(p) + max_new_tokens > limit:
            raise CompareError(f"a prompt of {len(p)} tokens plus {max_new_tokens} new ones exceeds the model's "
                               f"context of {limit} tokens", hint="shorten the prompt or generate fewer tokens")
        if max(p) >= bp.vocab_size or min(p) < 0:
            raise CompareError(f"token id {max(p)} is outside the vocabulary of {bp.vocab_size}",
                               hint="use ids the model's tokenizer produces")

    plan = capture_plan(bp, names)
    acc: dict[str, list] = {}
    top1, max_logit, mean_logit = [], 0.0, []
    for n, p in enumerate(ids):
        report(progress, "compare", n, len(ids), f"prompt {n + 1}")
        t = torch.tensor([p])
        kv = len(p)
        ours, our_logits, miss_o = _run_captured(model, plan, 0, lambda: layers.logits(model, p, kv))
        with torch.no_grad():
            theirs, their_logits, miss_t = _run_captured(original, plan, 1, lambda: original(t).logits)
        for name in set(miss_o) | set(miss_t):
            note = f"{name}: no such module on the {'re-authored' if name in miss_o else 'original'} side; skipped"
            if note not in notes:
                notes.append(note)
        ours["logits"], theirs["logits"] = our_logits, their_logits
        for name in [x[0] for x in plan] + ["logits"]:
            if name in ours and name in theirs:
                if ours[name].shape != theirs[name].shape:
                    raise CompareError(f"{name}: shapes differ, re-authored {tuple(ours[name].shape)} vs original "
                                       f"{tuple(theirs[name].shape)}", hint="check the blueprint against config.json")
                acc.setdefault(name, []).append((ours[name], theirs[name]))
        top1.append((our_logits[0].argmax(-1) == their_logits[0].argmax(-1)).float().mean().item())
        lmax, lmean, _, _ = _stats(our_logits, their_logits)
        max_logit = max(max_logit, lmax)
        mean_logit.append(lmean)

    records = []
    points = {x[0]: (x[1], x[2]) for x in plan}
    points["logits"] = (None, "logits")
    for name, pairs in acc.items():
        a = torch.cat([x.flatten() for x, _ in pairs])
        b = torch.cat([y.flatten() for _, y in pairs])
        mx, mean, rel, cos = _stats(a, b)
        layer, point = points[name]
        records.append(Record(name, layer, point, mx, mean, rel, cos, tuple(pairs[0][0].shape)))

    report(progress, "generate", 0, 1, "greedy, both models")
    gen = _generate_side_by_side(original, model, ids[0], max_new_tokens, tok)
    report(progress, "generate", 1, 1, "done")
    converted = _converted_logits(tflite, original, ids[0]) if tflite else None
    return Comparison(records, {"max_abs_diff": max_logit, "mean_abs_diff": sum(mean_logit) / len(mean_logit),
                                "top1_agreement": sum(top1) / len(top1)},
                      gen, ids, tol, notes, bp.num_layers, converted)


def _converted_logits(path, original, prompt: list[int]) -> dict:
    """The converted model decodes the prompt token by token (its decode signature, KV cache
    carried along); its logits at every position against the original's."""
    import numpy as np
    import torch

    from workbench.check import _metrics
    from workbench.runtime import SignatureModel

    sm = SignatureModel(path)
    if len(prompt) > sm.kv_len:
        raise CompareError(f"the prompt has {len(prompt)} tokens but {Path(path).name} holds {sm.kv_len}",
                           hint="shorten the prompt or convert with a larger kv")
    got = np.stack([sm.decode(t, p) for p, t in enumerate(prompt)])
    with torch.no_grad():
        ref = original(torch.tensor([prompt])).logits[0].numpy()
    return {"path": str(path), "positions": len(prompt), **_metrics(got, ref)}


def _generate_side_by_side(original, model, prompt: list[int], n: int, tok) -> dict:
    import torch

    from workbench import layers

    ref: list[int] = []
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            nxt = int(original(torch.tensor([seq])).logits[0, -1].argmax())
            ref.append(nxt)
            seq.append(nxt)
    ours = layers.generate_greedy(model, prompt, n, len(prompt) + n)
    first = next((i for i, (a, b) in enumerate(zip(ref, ours)) if a != b), None)
    dec = (lambda x: tok.decode(x)) if tok is not None else (lambda x: " ".join(map(str, x)))
    return {"reference_ids": ref, "reauthored_ids": ours, "reference_text": dec(ref), "reauthored_text": dec(ours),
            "first_diff": first, "max_new_tokens": n}

