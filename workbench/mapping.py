"""Weight mapping: which checkpoint tensor fills which parameter of the re-authored model.

    m = Mapping.propose(bp, "sample_models/llama-tiny")   # from tensor headers only
    m.table()          # one Entry per target parameter, then the unused source tensors
    m.set("ff_up_proj", "model.layers.{}.mlp.fc1")        # edit a pattern (or one row)
    model = m.load()   # strict: every target filled and shape-checked, or MappingError
    m.save("mapping.json"); print(m.to_python())

Patterns are litert-torch's `ModelLoader.TensorNames` (`{}` stands for the layer index),
so the result drops into litert-torch's own loader. Loading itself is ours: tensor by
tensor from the mmapped checkpoint into a model built on the meta device, so peak
memory stays near one copy of the weights (litert-torch's loader holds two).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

from workbench.blueprint import Problem
from workbench.checkpoint import Checkpoint
from workbench.errors import MappingError
from workbench.progress import Progress, report

if TYPE_CHECKING:
    from workbench.blueprint import Blueprint

SCHEMA_VERSION = 1
# litert-torch 0.10's ModelLoader.TensorNames fields, in its order (a test pins them).
TENSOR_KEYS = ("attn_query_proj", "attn_key_proj", "attn_value_proj", "attn_fused_qkv_proj", "attn_output_proj",
               "attn_query_norm", "attn_key_norm", "ff_up_proj", "ff_down_proj", "ff_gate_proj", "pre_attn_norm",
               "post_attn_norm", "pre_ff_norm", "post_ff_norm", "embedding", "embedding_position", "final_norm",
               "lm_head")
MODEL_KEYS = ("embedding", "embedding_position", "final_norm", "lm_head")  # no layer index
HARMLESS = re.compile(r"(rotary_emb\.inv_freq|\.attn\.bias|\.attn\.masked_bias|position_ids|_float_tensor)$")
_LAYER = re.compile(r"\.(\d+)\.")

# litert-torch module (with {} for the block index) -> the TensorNames key that fills it.
# "w1" and "qkv" depend on the block: w1 is the gate of a gated FF and the up
# projection of a sequential one; qkv is one fused tensor or q, k and v fused by us.
TARGET_RULES = {
    "tok_embedding": "embedding",
    "lm_head": "lm_head",
    "final_norm": "final_norm",
    "transformer_blocks.{}.pre_atten_norm": "pre_attn_norm",
    "transformer_blocks.{}.post_atten_norm": "post_attn_norm",
    "transformer_blocks.{}.ff.pre_ff_norm": "pre_ff_norm",
    "transformer_blocks.{}.ff.post_ff_norm": "post_ff_norm",
    "transformer_blocks.{}.atten_func.qkv_projection": "qkv",
    "transformer_blocks.{}.atten_func.output_projection": "attn_output_proj",
    "transformer_blocks.{}.atten_func.query_norm": "attn_query_norm",
    "transformer_blocks.{}.atten_func.key_norm": "attn_key_norm",
    "transformer_blocks.{}.ff.w1": "w1",
    "transformer_blocks.{}.ff.w2": "ff_down_proj",
    "transformer_blocks.{}.ff.w3": "ff_up_proj",
}
# Last module-name components that usually hold each key, for proposing patterns on
# checkpoints whose names differ from the family's defaults.
HINTS = {
    "attn_query_proj": ("q_proj", "query", "wq", "q_lin"),
    "attn_key_proj": ("k_proj", "key", "wk", "k_lin"),
    "attn_value_proj": ("v_proj", "value", "wv", "v_lin"),
    "attn_fused_qkv_proj": ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "qkv", "W_pack"),
    "attn_output_proj": ("o_proj", "out_proj", "wo", "dense", "c_proj", "out_lin"),
    "attn_query_norm": ("q_norm", "q_layernorm", "query_layernorm"),
    "attn_key_norm": ("k_norm", "k_layernorm", "key_layernorm"),
    "ff_up_proj": ("up_proj", "fc1", "w3", "c_fc", "dense_h_to_4h", "fc_in"),
    "ff_gate_proj": ("gate_proj", "w1"),
    "ff_down_proj": ("down_proj", "fc2", "w2", "dense_4h_to_h", "fc_out"),
    "pre_attn_norm": ("input_layernorm", "ln_1", "attention_norm", "norm1"),
    "post_attn_norm": ("post_attention_layernorm", "ln_2", "ffn_norm", "norm2"),
    "pre_ff_norm": ("pre_feedforward_layernorm",),
    "post_ff_norm": ("post_feedforward_layernorm",),
    "embedding": ("embed_tokens", "wte", "word_embeddings", "tok_embeddings", "embedder"),
    "final_norm": ("norm", "ln_f", "final_layernorm", "final_layer_norm"),
    "lm_head": ("lm_head", "output"),
}
_KNOB_HINT = {
    "qkv": "num_heads, num_kv_heads or head_dim", "attn_output_proj": "num_heads, head_dim or hidden_size",
    "ff_gate_proj": "intermediate_size or ff_type", "ff_up_proj": "intermediate_size",
    "ff_down_proj": "intermediate_size", "pre_attn_norm": "hidden_size", "post_attn_norm": "hidden_size",
    "pre_ff_norm": "hidden_size", "post_ff_norm": "hidden_size", "final_norm": "hidden_size",
    "embedding": "vocab_size or hidden_size", "lm_head": "vocab_size or hidden_size",
    "attn_query_norm": "head_dim", "attn_key_norm": "head_dim",
}


@dataclasses.dataclass(frozen=True)
class Target:
    """One parameter of the re-authored model that the checkpoint must fill."""

    param: str  # litert-torch state-dict name, e.g. transformer_blocks.0.ff.w1.weight
    key: str  # TensorNames key ("qkv" for the fused q|k|v projection)
    layer: Optional[int]
    suffix: str  # weight | bias
    shape: tuple[int, ...]
    parts: tuple[tuple[str, tuple[int, ...]], ...] = ()  # qkv from separate tensors: (key, shape) each


# A row's state. ok, tied and "unused (harmless)" load; the others are problems to fix.
Status = Literal["ok", "tied", "transposed", "shape mismatch", "missing", "needs split", "needs fuse", "duplicate",
                 "unused", "unused (harmless)"]
LOADS: tuple[Status, ...] = ("ok", "tied", "unused (harmless)")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the mapping table."""

    target: str  # "" for an unused source tensor
    sources: tuple[str, ...]  # the source tensor(s): three for q, k and v fused on load; () when none
    keys: tuple[str, ...]  # their TensorNames keys, in the same order; () for an unused tensor
    expected: Optional[tuple[int, ...]]
    found: Optional[tuple[int, ...]]
    dtype: Optional[str]
    status: Status
    hint: str = ""

    @property
    def ok(self) -> bool:
        return self.status in LOADS

    @property
    def source(self) -> str:
        """The sources as one line of text (fused parts joined by " + "), for tables."""
        return " + ".join(self.sources)

    @property
    def key(self) -> str:
        """The keys as one label ("attn_query_proj+attn_key_proj+attn_value_proj"), for tables."""
        return "+".join(self.keys)

    @property
    def converted(self) -> bool:
        """Its dtype is converted to float32 on load (bf16, fp16, or fused parts of mixed dtypes)."""
        return self.dtype not in (None, "float32")

    def to_json(self) -> dict:
        return {"target": self.target, "source": self.source, "key": self.key, "sources": list(self.sources),
                "keys": list(self.keys),
                "expected": list(self.expected) if self.expected is not None else None,
                "found": list(self.found) if self.found is not None else None,
                "dtype": self.dtype, "status": self.status, "hint": self.hint}


class _Scratch:
    """A file-backed arena for a model's weights (see `Mapping.load(scratch=...)`): sized for
    every tensor, mapped shared, unlinked at once; `put` copies a tensor in (converting its
    dtype) and returns the view that stays in the model."""

    ALIGN = 64

    def __init__(self, path: str | Path, like: list) -> None:
        import mmap
        import os

        total = sum(self._span(t.numel(), t.dtype) for t in like) or self.ALIGN
        path = Path(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.unlink(path)
            os.ftruncate(fd, total)
            self._map = mmap.mmap(fd, total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.nbytes = total
        self._at = 0

    @classmethod
    def _span(cls, numel: int, dtype) -> int:
        """The bytes a tensor takes in the arena: its data, rounded up to ALIGN."""
        return -(-numel * dtype.itemsize // cls.ALIGN) * cls.ALIGN

    def put(self, tensor, dtype):
        import torch

        out = torch.frombuffer(self._map, dtype=dtype, count=tensor.numel(), offset=self._at).view(tensor.shape)
        out.copy_(tensor)
        self._at += self._span(tensor.numel(), dtype)
        return out


def _one(name: Optional[str]) -> tuple[str, ...]:
    return (name,) if name else ()


def layer_template(name: str) -> tuple[str, Optional[int]]:
    """'model.layers.3.mlp.up_proj.weight' -> ('model.layers.{}.mlp.up_proj.weight', 3)."""
    m = _LAYER.search(name)
    if not m:
        return name, None
    return name[:m.start()] + ".{}." + name[m.end():], int(m.group(1))


def targets(bp: "Blueprint") -> list[Target]:
    """The parameters of `bp`'s model with their shapes, from a meta-device build (no memory)."""
    model = bp.build(1, meta=True)
    out: list[Target] = []
    for name, p in model.named_parameters(remove_duplicate=False):
        module, suffix = name.rsplit(".", 1)
        template, layer = layer_template(module + ".") if module.startswith("transformer_blocks.") else (module, None)
        template = template.rstrip(".")
        key = TARGET_RULES.get(template)
        if key is None:
            raise MappingError(f"no mapping rule for the model's parameter {name!r}",
                               hint="this parameter comes from a layer Edge Workbench cannot map yet: report it")
        parts: tuple = ()
        if key == "w1":
            key = "ff_gate_proj" if bp.layer_spec(layer).ff_type == "gated" else "ff_up_proj"
        elif key == "qkv":
            s, hd = bp.layer_spec(layer), bp.head_dim(layer)
            q, kv = s.num_heads * hd, s.num_kv_heads * hd
            rest = tuple(p.shape[1:])
            parts = (("attn_query_proj", (q, *rest)), ("attn_key_proj", (kv, *rest)),
                     ("attn_value_proj", (kv, *rest)))
        out.append(Target(name, key, layer, suffix, tuple(p.shape), parts))
    return out


def qkv_groups(bp: "Blueprint", layer: int) -> tuple[int, int, int]:
    """(KV groups, queries per group, head_dim) of one layer's attention."""
    s = bp.layer_spec(layer)
    return s.num_kv_heads, s.num_heads // s.num_kv_heads, bp.head_dim(layer)


def ungroup_qkv(t, groups: int, q_per_kv: int, head_dim: int):
    """Fused QKV rows stored per KV group ([q.., k, v] for each group) -> [all q; all k; all v]."""
    import torch

    rest = tuple(t.shape[1:])
    g = t.reshape(groups, q_per_kv + 2, head_dim, *rest)
    q, k, v = g[:, :q_per_kv], g[:, q_per_kv], g[:, q_per_kv + 1]
    return torch.cat([x.reshape(-1, *rest) for x in (q, k, v)]).contiguous()


class Mapping:
    """TensorNames patterns (plus per-row edits) from a checkpoint onto a Blueprint's model."""

    def __init__(self, bp: "Blueprint", checkpoint: Checkpoint | str | Path,
                 tensor_names: Optional[dict[str, Optional[str]]] = None) -> None:
        self.blueprint = bp
        self.checkpoint = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint.open(checkpoint)
        self.tensor_names: dict[str, Optional[str]] = {k: None for k in TENSOR_KEYS}
        for k, v in (tensor_names or {}).items():
            self._check_key(k)
            self.tensor_names[k] = v
        self.rows: dict[str, str] = {}  # target param -> source tensor, overriding its pattern
        self.transposed: set[str] = set()  # keys whose source tensors are stored transposed
        self.grouped: set[str] = set()  # fused QKV keys stored per KV group [q.., k, v] (Falcon)
        self._targets = targets(bp)
        self._table: Optional[list[Entry]] = None
        self._by_layer: dict[Optional[int], list[str]] = {}  # source names by layer index, for hints
        for n in self.checkpoint.tensors:
            self._by_layer.setdefault(layer_template(n)[1], []).append(n)

    # ---- proposing ----------------------------------------------------------------
    @classmethod
    def propose(cls, bp: "Blueprint", checkpoint: Checkpoint | str | Path) -> "Mapping":
        """The family's TensorNames, checked against the checkpoint's headers; where a
        pattern names nothing, one found by the usual module names takes its place."""
        m = cls(bp, checkpoint, {k: v for k, v in bp.tensor_names().items() if k in TENSOR_KEYS})
        needed = m.needed_keys()
        for k in TENSOR_KEYS:
            if k not in needed:
                m.tensor_names[k] = None
        templates = m._source_templates()
        for k in sorted(needed):
            if m._resolves(k):
                continue
            found = m._guess(k, templates)
            if found:
                m.tensor_names[k] = found
        # q, k and v fused in the checkpoint (Phi-3, Falcon, GPT-2 style): use the fused key.
        qkv_parts = ("attn_query_proj", "attn_key_proj", "attn_value_proj")
        if "attn_query_proj" in needed and not all(m._resolves(k) for k in qkv_parts):
            fused = m._guess("attn_fused_qkv_proj", templates)
            if fused:
                m.tensor_names["attn_fused_qkv_proj"] = fused
                for k in qkv_parts:
                    m.tensor_names[k] = None
        from workbench import families

        fam = families.FAMILIES.get(bp.family)
        if fam is not None and fam.fused_qkv_layout == "grouped" and m.tensor_names.get("attn_fused_qkv_proj"):
            m.grouped.add("attn_fused_qkv_proj")
        m._table = None
        return m

    def needed_keys(self) -> set[str]:
        keys = set()
        for t in self._targets:
            if t.key == "qkv":
                keys |= {"attn_query_proj", "attn_key_proj", "attn_value_proj"}
            elif not (t.key == "lm_head" and self.blueprint.tie_embeddings):
                keys.add(t.key)
        return keys

    def _source_templates(self) -> dict[str, list[str]]:
        """Module templates of the checkpoint ('model.layers.{}.mlp.up_proj') by last component."""
        out: dict[str, list[str]] = {}
        for name in self.checkpoint.tensors:
            module = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
            template, _ = layer_template(module + ".")
            template = template.rstrip(".")
            out.setdefault(template.rsplit(".", 1)[-1], [])
            if template not in out[template.rsplit(".", 1)[-1]]:
                out[template.rsplit(".", 1)[-1]].append(template)
        return out

    def _guess(self, key: str, templates: dict[str, list[str]]) -> Optional[str]:
        per_layer = key not in MODEL_KEYS
        for hint in HINTS.get(key, ()):
            for t in templates.get(hint, []):
                if ("{}" in t) == per_layer and (key != "attn_output_proj" or "attn" in t or "attention" in t):
                    return t
        return None

    def _resolves(self, key: str) -> bool:
        pattern = self.tensor_names.get(key)
        if not pattern:
            return False
        layer = 0 if key not in MODEL_KEYS else None
        name = pattern.format(layer) if layer is not None else pattern
        return any(n.startswith(name + ".") or n == name for n in self.checkpoint.tensors)

    # ---- editing ------------------------------------------------------------------
    def _check_key(self, key: str) -> None:
        if key not in TENSOR_KEYS:
            raise MappingError(f"{key!r} is not a litert-torch TensorNames field",
                               hint=f"fields: {', '.join(TENSOR_KEYS)}")

    def set(self, name: str, value: Optional[str]) -> "Mapping":
        """Sets a TensorNames pattern (`m.set("ff_up_proj", "model.layers.{}.mlp.fc1")`,
        None to unset) or one row (`m.set("transformer_blocks.0.ff.w3.weight", source)`)."""
        if name in TENSOR_KEYS:
            self.tensor_names[name] = value or None
        elif any(t.param == name for t in self._targets):
            if value is None:
                self.rows.pop(name, None)
            else:
                if value not in self.checkpoint.tensors:
                    close = difflib.get_close_matches(value, list(self.checkpoint.tensors), n=1)
                    raise MappingError(f"the checkpoint has no tensor {value!r}",
                                       hint=f"did you mean {close[0]!r}?" if close else "check the tensor's name")
                self.rows[name] = value
        else:
            raise MappingError(f"{name!r} is neither a TensorNames field nor a parameter of the model",
                               hint=f"fields: {', '.join(TENSOR_KEYS)}; parameters look like "
                                    f"{self._targets[0].param!r}")
        self._table = None
        return self

    def set_transposed(self, key: str, transposed: bool = True) -> "Mapping":
        """Marks a key's source tensors as stored transposed (e.g. GPT-2's Conv1D); load transposes them."""
        self._check_key(key)
        (self.transposed.add if transposed else self.transposed.discard)(key)
        self._table = None
        return self

    def set_grouped(self, key: str = "attn_fused_qkv_proj", grouped: bool = True) -> "Mapping":
        """Marks a fused QKV source as laid out per KV group ([q.., k, v] for each group, as
        Falcon stores it) rather than [all q; all k; all v]; load reorders its rows."""
        if key != "attn_fused_qkv_proj":
            raise MappingError(f"{key!r} is not a fused QKV key", hint="only attn_fused_qkv_proj can be grouped")
        (self.grouped.add if grouped else self.grouped.discard)(key)
        self._table = None
        return self

    # ---- the table ----------------------------------------------------------------
    def _source_name(self, key: str, layer: Optional[int], suffix: str) -> Optional[str]:
        pattern = self.tensor_names.get(key)
        if not pattern:
            return None
        try:
            base = pattern.format(layer) if "{}" in pattern else pattern
        except (IndexError, KeyError, ValueError):
            return pattern + "." + suffix
        return f"{base}.{suffix}"

    def table(self) -> list[Entry]:
        """One Entry per target parameter, then one per unused source tensor."""
        if self._table is None:
            self._table = self._compute_table()
        return self._table

    def _compute_table(self) -> list[Entry]:
        ck = self.checkpoint.tensors
        rows: list[Entry] = []
        used: dict[str, list[int]] = {}
        for t in self._targets:
            if t.key == "lm_head" and self.blueprint.tie_embeddings:
                src = self._source_name("embedding", None, "weight") or ""
                rows.append(Entry(t.param, _one(src), ("embedding",), t.shape, ck[src].shape if src in ck else None,
                                  ck[src].dtype if src in ck else None, "tied",
                                  "shares tok_embedding.weight (tie_embeddings)"))
                continue
            if t.param in self.rows:
                rows.append(self._single(t, self.rows[t.param], t.key))
            elif t.key == "qkv" and self.tensor_names.get("attn_fused_qkv_proj"):
                rows.append(self._single(t, self._source_name("attn_fused_qkv_proj", t.layer, t.suffix),
                                         "attn_fused_qkv_proj"))
            elif t.key == "qkv":
                rows.append(self._fused(t))
            else:
                rows.append(self._single(t, self._source_name(t.key, t.layer, t.suffix), t.key))
            for s in rows[-1].sources:
                if s in ck:
                    used.setdefault(s, []).append(len(rows) - 1)
        for s, idx in used.items():
            if len(idx) > 1:
                others = ", ".join(rows[i].target for i in idx)
                for i in idx:
                    rows[i] = dataclasses.replace(rows[i], status="duplicate",
                                                  hint=f"{s} fills {others}: one of their patterns is wrong")
        rows += self._unused(set(used))
        return rows

    def _single(self, t: Target, src: Optional[str], key: str) -> Entry:
        ck = self.checkpoint.tensors
        if src is None:
            return Entry(t.param, (), (key,), t.shape, None, None, "missing",
                         f"no pattern for {key}: set it with m.set({key!r}, 'prefix.{{}}.module')")
        if src not in ck:
            return Entry(t.param, (src,), (key,), t.shape, None, None, *self._why_missing(t, src, key))
        info = ck[src]
        want = t.shape[::-1] if key in self.transposed else t.shape
        note = f"{info.dtype}: converted to float32 on load" if info.dtype != "float32" else ""
        if key in self.grouped:
            note = "; ".join(x for x in ("rows reordered from per-group [q.., k, v] to [q; k; v] on load", note) if x)
        if info.shape == want:
            return Entry(t.param, (src,), (key,), t.shape, info.shape, info.dtype, "ok", note)
        if info.shape == want[::-1] and len(want) == 2:
            return Entry(t.param, (src,), (key,), t.shape, info.shape, info.dtype, "transposed",
                         f"source has shape {info.shape}, target expects {t.shape}: transposed? "
                         f"if the checkpoint stores it that way, m.set_transposed({key!r})")
        return Entry(t.param, (src,), (key,), t.shape, info.shape, info.dtype, "shape mismatch",
                     f"source has shape {info.shape}, target expects {t.shape}; it is no transpose either: "
                     f"check the blueprint's {_KNOB_HINT.get(t.key, 'sizes')} against the checkpoint")

    def _fused(self, t: Target) -> Entry:
        ck = self.checkpoint.tensors
        srcs, found, dtypes = [], [], set()
        for key, shape in t.parts:
            src = self._source_name(key, t.layer, t.suffix)
            if src is None or src not in ck:
                status, hint = ("missing", f"no pattern for {key}") if src is None else self._why_missing(t, src, key)
                return Entry(t.param, _one(src), (key,), t.shape, None, None, status, hint)
            info = ck[src]
            want = shape[::-1] if key in self.transposed else shape
            if info.shape != want:
                status = "transposed" if info.shape == want[::-1] and len(want) == 2 else "shape mismatch"
                return Entry(t.param, (src,), (key,), shape, info.shape, info.dtype, status,
                             f"{key} part has shape {info.shape}, expected {shape}: check the blueprint's "
                             f"num_heads, num_kv_heads and head_dim")
            srcs.append(src)
            found.append(shape)
            dtypes.add(info.dtype)
        total = (sum(s[0] for s in found), *found[0][1:])
        dtype = dtypes.pop() if len(dtypes) == 1 else "mixed"
        note = "q, k and v fused on load" + (f"; {dtype}: converted to float32 on load" if dtype != "float32" else "")
        return Entry(t.param, tuple(srcs), tuple(k for k, _ in t.parts), t.shape, total, dtype, "ok", note)

    def _why_missing(self, t: Target, src: str, key: str) -> tuple[str, str]:
        ck = self.checkpoint.tensors
        layer_names = list(ck) if t.layer is None else self._by_layer.get(t.layer, [])
        if key in ("attn_query_proj", "attn_key_proj", "attn_value_proj"):
            for n in layer_names:
                if any(h in n for h in HINTS["attn_fused_qkv_proj"]) and n.endswith("." + t.suffix):
                    tmpl = layer_template(n.rsplit(".", 1)[0] + ".")[0].rstrip(".")
                    return "needs split", (f"the checkpoint stores q, k and v fused in {n}: "
                                           f"m.set('attn_fused_qkv_proj', {tmpl!r})")
        if key == "attn_fused_qkv_proj":
            parts = [n for n in layer_names if any(f".{h}." in n for h in ("q_proj", "k_proj", "v_proj"))]
            if parts:
                return "needs fuse", ("the checkpoint stores q, k and v apart (e.g. " + parts[0] +
                                      "): unset attn_fused_qkv_proj and set attn_query_proj/key/value")
        if t.key in ("ff_gate_proj", "ff_up_proj"):
            for n in layer_names:
                if "gate_up_proj" in n:
                    return "needs split", (f"the checkpoint fuses gate and up in {n}: set the blueprint's "
                                           "ff_type to 'gated_fused' and ff_up_proj to its pattern")
        close = difflib.get_close_matches(src, layer_names if t.layer is not None else list(ck), n=1, cutoff=0.6)
        return "missing", f"no tensor {src!r}" + (f"; closest: {close[0]!r}" if close else "")

    def _unused(self, used: set[str]) -> list[Entry]:
        out = []
        bp = self.blueprint
        for name, info in self.checkpoint.tensors.items():
            if name in used:
                continue
            if HARMLESS.search(name):
                out.append(Entry("", (name,), (), None, info.shape, info.dtype, "unused (harmless)",
                                 "a buffer transformers recomputes; not a weight"))
                continue
            _, layer = layer_template(name)
            if layer is not None and layer >= bp.num_layers:
                hint = f"layer {layer} does not exist in the blueprint (num_layers={bp.num_layers})"
            elif bp.tie_embeddings and name.startswith(str(bp.tensor_names().get("lm_head") or "lm_head")):
                hint = "the checkpoint has its own LM head but the blueprint ties it: set tie_embeddings=False"
            else:
                hint = "nothing in the model takes it: a pattern is missing or the blueprint lacks a feature"
            out.append(Entry("", (name,), (), None, info.shape, info.dtype, "unused", hint))
        return out

    # ---- verdicts -----------------------------------------------------------------
    def pattern_problems(self) -> list[Problem]:
        """Patterns that cannot be right: `field` is the TensorNames key, `value` the pattern."""
        out = []
        needed = self.needed_keys()
        for k, pattern in self.tensor_names.items():
            if not pattern:
                continue
            per_layer = k not in MODEL_KEYS
            if per_layer and "{}" not in pattern and self.blueprint.num_layers > 1:
                out.append(Problem(k, pattern, f"pattern {pattern!r} has no {{}}: every layer would read the same "
                                   "tensor", "put {} where the layer index goes", show_value=False))
            elif not per_layer and "{}" in pattern:
                out.append(Problem(k, pattern, f"pattern {pattern!r} has a {{}}, but {k} has no layer index",
                                   "remove it", show_value=False))
            elif (k in needed or k == "attn_fused_qkv_proj") and not any(
                    self._resolves_at(k, i) for i in (range(self.blueprint.num_layers) if per_layer else [None])):
                out.append(Problem(k, pattern, f"pattern {pattern!r} names no tensor in the checkpoint", "",
                                   show_value=False))
        return out

    def _resolves_at(self, key: str, layer: Optional[int]) -> bool:
        name = self._source_name(key, layer, "weight")
        return name is not None and (name in self.checkpoint.tensors
                                     or name[:-len("weight")] + "bias" in self.checkpoint.tensors)

    def problems(self) -> list[Problem]:
        """Pattern problems, then every target row that does not load (`field`: the parameter,
        `value`: its sources; `str()` of each is the sentence the views show)."""
        rows = [Problem(e.target, e.sources, f"{e.status}" + (f" ({e.source})" if e.sources else "") + f": {e.hint}",
                        "", show_value=False) for e in self.table() if e.target and not e.ok]
        return self.pattern_problems() + rows

    def unused(self, harmless: bool = False) -> list[str]:
        status = "unused (harmless)" if harmless else "unused"
        return [e.source for e in self.table() if e.status == status]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.table():
            out[e.status] = out.get(e.status, 0) + 1
        return out

    # ---- loading ------------------------------------------------------------------
    def load(self, model=None, *, progress: Optional[Progress] = None, allow_unused: bool = False,
             kv_cache_length: Optional[int] = None, scratch: str | Path | None = None):
        """Fills the model's weights from the checkpoint, strictly, and returns the model.

        With no model, builds one on the meta device first, so each weight is
        allocated once, as it is read. Refuses (MappingError naming every tensor)
        when any target is missing, mismatched or doubly used, or when source tensors
        would be left unused (allow_unused=True to accept that).

        With `scratch` (a path in a folder of the caller's, e.g. a job's temp folder), the
        float32 weights live in that file instead of RAM: it is created, mapped shared and
        unlinked at once (nothing is left behind, even if the process is killed), then filled
        tensor by tensor (bf16 widened straight into it). Its pages are file-backed: the
        kernel can write them back and drop them under memory pressure, where weights in RAM
        (anonymous memory) could only be swapped or killed. The tensors are views of the
        mapping, valid while the model lives.
        """
        import torch
        from torch import nn

        problems = self.problems()
        if not allow_unused and self.unused():
            problems += [f"{n}: unused: nothing in the model takes it" for n in self.unused()]
        if problems:
            shown = "\n".join(f"  - {p}" for p in problems[:40])
            more = f"\n  ... and {len(problems) - 40} more" if len(problems) > 40 else ""
            raise MappingError(f"the mapping cannot fill the model: {len(problems)} problem(s)\n{shown}{more}",
                               hint="fix the patterns (m.set) until m.problems() is empty; "
                                    "allow_unused=True accepts leftover source tensors")
        if model is None:
            model = self.blueprint.build(kv_cache_length, meta=True)
        entries = [e for e in self.table() if e.target and e.status != "tied"]
        modules = dict(model.named_modules())
        store = _Scratch(scratch, [getattr(modules[e.target.rsplit(".", 1)[0]], e.target.rsplit(".", 1)[1])
                                   for e in entries]) if scratch is not None else None
        for i, e in enumerate(entries):
            report(progress, "load weights", i, len(entries), e.target)
            if store is not None:  # read in the file's own dtype: widened once, into the scratch file
                parts = [self.checkpoint.get(s, dtype=self.checkpoint.tensors[s].dtype) for s in e.sources]
            else:
                parts = [self.checkpoint.get(s) for s in e.sources]
            parts = [p.T.contiguous() if k in self.transposed else p for p, k in zip(parts, e.keys)]
            tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
            if e.keys[0] in self.grouped:
                layer = layer_template(e.target)[1]
                tensor = ungroup_qkv(tensor, *qkv_groups(self.blueprint, layer))
            module_name, pname = e.target.rsplit(".", 1)
            module = modules[module_name]
            old = getattr(module, pname)
            if tuple(tensor.shape) != tuple(old.shape):
                raise MappingError(f"{e.source} gives shape {tuple(tensor.shape)} for {e.target}, "
                                   f"which has {tuple(old.shape)}", hint="re-check the mapping table")
            if store is not None:
                tensor = store.put(tensor, old.dtype)
            setattr(module, pname, nn.Parameter(tensor, requires_grad=False))
            del tensor, parts
        if self.blueprint.tie_embeddings:
            model.lm_head.weight = model.tok_embedding.weight
        left = [n for n, p in model.named_parameters() if p.is_meta]
        if left:
            raise MappingError(f"{len(left)} parameters were not filled, e.g. {left[0]}",
                               hint="this is a bug in the mapping rules: report it")
        report(progress, "load weights", len(entries), len(entries), "done")
        return model.eval()

    # ---- saving and code ----------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "kind": "edge-workbench/mapping",
            "schema": SCHEMA_VERSION,
            "checkpoint": str(self.checkpoint.root),
            "blueprint": self.blueprint.to_json(),
            "blueprint_fingerprint": self.blueprint.fingerprint(),
            "tensor_names": dict(self.tensor_names),
            "rows": dict(self.rows),
            "transposed": sorted(self.transposed),
            "grouped": sorted(self.grouped),
        }

    def save(self, path: str | Path) -> Path:
        """Writes the mapping as JSON, atomically (a unique temp file, fsync, rename)."""
        from workbench._io import atomic_write_json

        p = Path(path)
        atomic_write_json(p, self.to_json(), MappingError, parents=False)
        return p

    @classmethod
    def open(cls, path: str | Path, checkpoint: Checkpoint | str | Path | None = None) -> "Mapping":
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise MappingError(f"no mapping file {str(p)!r}", hint="save one with m.save(path)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MappingError(f"{p} is not valid JSON ({e})", hint="save the mapping again") from None
        return cls.from_json(data, checkpoint, where=str(p))

    @classmethod
    def from_json(cls, data: dict, checkpoint: Checkpoint | str | Path | None = None, blueprint=None,
                  where: str = "the mapping") -> "Mapping":
        """A mapping from `to_json()` data; `checkpoint` and `blueprint` replace the recorded ones."""
        from workbench.blueprint import Blueprint

        if not isinstance(data, dict) or data.get("kind") != "edge-workbench/mapping":
            raise MappingError(f"{where} is not an Edge Workbench mapping", hint="load a file written by m.save()")
        if data.get("schema") != SCHEMA_VERSION:
            raise MappingError(f"mapping schema {data.get('schema')!r} is not {SCHEMA_VERSION}",
                               hint="open it with the Edge Workbench version that wrote it")
        m = cls(blueprint or Blueprint.from_json(data["blueprint"]), checkpoint or data["checkpoint"],
                data["tensor_names"])
        for target, src in data.get("rows", {}).items():
            m.set(target, src)
        for k in data.get("transposed", []):
            m.set_transposed(k)
        for k in data.get("grouped", []):
            m.set_grouped(k)
        return m

    def fingerprint(self) -> str:
        """What the loaded weights depend on: the blueprint, the patterns and row edits,
        the layouts, and the checkpoint's identity."""
        from workbench._io import digest

        return digest({"blueprint": self.blueprint.fingerprint(), "tensor_names": self.tensor_names,
                       "rows": self.rows, "transposed": sorted(self.transposed), "grouped": sorted(self.grouped),
                       "checkpoint": self.checkpoint.fingerprint()})

    def to_python(self) -> str:
        """The `TENSOR_NAMES = ModelLoader.TensorNames(...)` block for the emitted module."""
        from workbench import codegen

        return codegen.tensor_names_source(self.tensor_names)

    def module_source(self) -> str:
        """The whole re-authoring module: the blueprint's code with this mapping's names."""
        return self.blueprint.to_python(tensor_names=self.tensor_names, mapping=self)

    def _repr_html_(self) -> str:
        c = self.counts()
        bad = len([e for e in self.table() if e.target and not e.ok])
        return (f"<div><b>Mapping</b> {len(self.checkpoint.tensors)} source tensors → "
                f"{len(self._targets)} parameters: " + ", ".join(f"{k} {v}" for k, v in c.items()) +
                (f" — <b style='color:#c62828'>{bad} problem(s)</b>" if bad else
                 " — <b style='color:#2e7d32'>ready to load</b>") + "</div>")

    def __repr__(self) -> str:
        return f"Mapping({self.counts()})"

