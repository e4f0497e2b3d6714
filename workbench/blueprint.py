"""The Blueprint: an editable, serializable description of a decoder-only transformer.

A Blueprint holds flat knobs (litgpt-style) — model-wide ones, one `LayerSpec` that
every layer shares, and per-layer overrides — and turns them into litert-torch's
`ModelConfig`, a size/cost summary, a list of problems, a built model, and the
Python that re-authors it.

    bp = Blueprint.from_hf("sample_models/llama-tiny")
    bp.set("num_kv_heads", 1)                 # every layer
    bp.set("sliding_window", 64, layer=2)     # one layer
    bp.problems(), bp.summary(), bp.build()
"""

from __future__ import annotations

import copy
import dataclasses
import html
import json
import math
from pathlib import Path
from typing import Any, Optional

from workbench import families
from workbench.errors import BlueprintError

SCHEMA_VERSION = 1
ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "gelu_quick", "relu")
FF_TYPES = ("gated", "gated_fused", "sequential")
NORM_TYPES = ("rms", "layer")
KV_DTYPES = {"fp32": 4, "fp16": 2, "int8": 1}


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """Knobs of one transformer block; any of them can be overridden per layer.

    num_kv_heads sets the attention kind: equal to num_heads is multi-head
    attention (MHA), 1 is multi-query (MQA), anything between that divides
    num_heads is grouped-query (GQA). head_dim None means hidden_size // num_heads.
    """

    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: Optional[int] = None
    intermediate_size: int = 256
    # gated: w2(act(w1 x) * w3 x); sequential: w2(act(w1 x)); gated_fused: gated, with w1 and w3
    # stored as one [gate; up] matrix (Phi-3's gate_up_proj; litert-torch's SILU_GLU).
    ff_type: str = "gated"
    activation: str = "silu"
    ff_bias: bool = False
    qkv_bias: bool = False
    out_bias: bool = False
    attn_scale: Optional[float] = None  # None: 1/sqrt(head_dim)
    qk_norm: bool = False
    attn_logit_softcap: Optional[float] = None
    sliding_window: Optional[int] = None
    rope_base: float = 10_000.0
    rotary_fraction: float = 1.0
    norm_type: str = "rms"
    norm_eps: float = 1e-5
    norm_offset: float = 0.0  # 1.0: norm weights are stored as offsets from 1 (Gemma)
    post_norms: bool = False  # Gemma 2: norm attention and FF outputs before the residual add
    parallel_residual: bool = False  # x + attn(norm(x)) + ff(norm(x))
    alibi: bool = False  # ALiBi position biases (Falcon-RW) in place of RoPE


LAYER_FIELDS = tuple(f.name for f in dataclasses.fields(LayerSpec))
MODEL_FIELDS = (
    "family", "name", "vocab_size", "num_layers", "hidden_size", "max_seq_len", "tie_embeddings",
    "lm_head_bias", "scale_embeddings", "final_logit_softcap", "rope_scaling", "kv_cache_length",
    "kv_cache_dtype",
)
_TYPES: dict[str, tuple] = {
    **{f.name: (int,) for f in dataclasses.fields(LayerSpec) if f.type in ("int",)},
    "head_dim": (int, type(None)), "sliding_window": (int, type(None)),
    "attn_scale": (float, type(None)), "attn_logit_softcap": (float, type(None)),
    "rope_base": (float,), "rotary_fraction": (float,), "norm_eps": (float,), "norm_offset": (float,),
    "ff_type": (str,), "activation": (str,), "norm_type": (str,),
    **{k: (bool,) for k in ("ff_bias", "qkv_bias", "out_bias", "qk_norm", "post_norms", "parallel_residual", "alibi",
                            "tie_embeddings", "lm_head_bias", "scale_embeddings")},
    **{k: (int,) for k in ("vocab_size", "num_layers", "hidden_size", "max_seq_len", "kv_cache_length")},
    "family": (str,), "name": (str,), "kv_cache_dtype": (str,),
    "final_logit_softcap": (float, type(None)), "rope_scaling": (dict, type(None)),
}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a Blueprint: where, what, and the fix."""

    field: str  # a Blueprint knob, a mapping's TensorNames key, or a model parameter
    value: Any
    message: str
    fix: str  # "" when the message says it (a mapping row's hint)
    layer: Optional[int] = None
    show_value: bool = True  # False where the message names the value (a mapping's pattern or source)

    def __str__(self) -> str:
        where = f"layer {self.layer}: " if self.layer is not None else ""
        value = f"={self.value!r}" if self.show_value else ""
        return f"{where}{self.field}{value}: {self.message}" + (f"; fix: {self.fix}" if self.fix else "")


@dataclasses.dataclass(frozen=True)
class Summary:
    """Size and cost of a Blueprint, computed from its knobs alone (no model built)."""

    params: int
    params_by_block: dict[str, int]  # embedding, attention, feed_forward, norms, head
    weights_bytes: dict[str, int]  # fp32, fp16, int8, int4 (block 32) estimates
    kv_cache_length: int
    kv_cache_bytes: int
    decode_flops_per_token: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(field: str, value: Any) -> Any:
    """Checks a knob's type (ints stay ints, ints become floats where floats are
    meant); a wrong type is an error now, a wrong value is a problem later."""
    kinds = _TYPES[field]
    if value is None and type(None) in kinds:
        return None
    if isinstance(value, bool) and bool not in kinds:
        raise BlueprintError(f"{field} takes {_kind_name(kinds)}, got a bool ({value!r})",
                             hint=f"give {field} {_kind_name(kinds)}")
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if int in kinds and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, kinds):
        raise BlueprintError(f"{field} takes {_kind_name(kinds)}, got {type(value).__name__} ({value!r})",
                             hint=f"give {field} {_kind_name(kinds)}")
    return value


def _kind_name(kinds: tuple) -> str:
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string", dict: "a dict",
             type(None): "None"}
    return " or ".join(names[k] for k in kinds)


class Blueprint:
    """An editable decoder-only architecture in litert-torch's vocabulary."""

    def __init__(self, *, layer: Optional[LayerSpec] = None, overrides: Optional[dict] = None, source: str = "",
                 family: str = "custom", name: str = "", vocab_size: int = 32_000, num_layers: int = 4,
                 hidden_size: int = 256, max_seq_len: int = 2048, tie_embeddings: bool = True,
                 lm_head_bias: bool = False, scale_embeddings: bool = False,
                 final_logit_softcap: Optional[float] = None, rope_scaling: Optional[dict] = None,
                 kv_cache_length: int = 1024, kv_cache_dtype: str = "fp32") -> None:
        self.layer = layer or LayerSpec()
        self.overrides: dict[int, dict[str, Any]] = {}
        self.source = source
        model = dict(family=family, name=name, vocab_size=vocab_size, num_layers=num_layers,
                     hidden_size=hidden_size, max_seq_len=max_seq_len, tie_embeddings=tie_embeddings,
                     lm_head_bias=lm_head_bias, scale_embeddings=scale_embeddings,
                     final_logit_softcap=final_logit_softcap, rope_scaling=rope_scaling,
                     kv_cache_length=kv_cache_length, kv_cache_dtype=kv_cache_dtype)
        for k, v in model.items():
            object.__setattr__(self, k, _coerce(k, v))
        for i, fields in (overrides or {}).items():
            for k, v in fields.items():
                self.set(k, v, layer=int(i))

    # ---- constructors -------------------------------------------------------------
    @classmethod
    def from_hf(cls, path: str | Path, progress=None) -> "Blueprint":
        """Reads a Hugging Face model folder (or its config.json) into a Blueprint. A Hub id
        (`org/name[@revision]`) is read from the hub's cache, fetching config.json if needed
        (`progress`: the project's progress callback for that download)."""
        from workbench import hub

        p = hub.resolve(path, need="config", progress=progress)
        cfg_path = p / "config.json" if p.is_dir() or not p.suffix else p
        if not p.exists():
            raise BlueprintError(f"model folder {str(p)!r} does not exist",
                                 hint="give the folder that holds the model's config.json")
        if not cfg_path.is_file():
            raise BlueprintError(f"{str(p)!r} has no config.json",
                                 hint="give a Hugging Face model folder: it holds config.json and the weights")
        try:
            raw = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BlueprintError(f"{cfg_path} is not valid JSON ({e})",
                                 hint="restore config.json from the model's original files") from None
        if not isinstance(raw, dict):
            raise BlueprintError(f"{cfg_path} holds a {type(raw).__name__}, not a JSON object",
                                 hint="restore config.json from the model's original files")
        bp = cls.from_hf_config(raw)
        pinned = hub.origin(p if p.is_dir() else p.parent)
        bp.source = str(pinned) if pinned is not None else str(p)
        return bp

    @classmethod
    def from_hf_config(cls, raw: dict) -> "Blueprint":
        """A Blueprint from an HF config dict (as read from config.json)."""
        model, layer, overrides = families.read_hf_config(raw)
        model["name"] = str(raw.get("_name_or_path") or raw.get("model_type"))
        if isinstance(model.get("max_seq_len"), int) and model["max_seq_len"] >= 1:
            model["kv_cache_length"] = min(1024, model["max_seq_len"])
        bp = cls(**{k: v for k, v in model.items()})
        bp.layer = LayerSpec(**{k: _coerce(k, v) for k, v in layer.items() if v is not None or
                                type(None) in _TYPES[k]})
        for i, fields in overrides.items():
            if 0 <= i < bp.num_layers:
                bp.overrides[i] = {k: _coerce(k, v) for k, v in fields.items()}
        return bp

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "Blueprint":
        """A named architecture (see `Blueprint.presets()`), with knobs overridden."""
        from workbench.presets import PRESETS, ALIASES

        key = ALIASES.get(name, name)
        if key not in PRESETS:
            raise BlueprintError(f"no preset named {name!r}",
                                 hint=f"choose one of: {', '.join(sorted([*PRESETS, *ALIASES]))}")
        bp = cls.from_hf_config(PRESETS[key])
        bp.name = key
        for k, v in overrides.items():
            bp.set(k, v)
        return bp

    @staticmethod
    def presets() -> list[str]:
        from workbench.presets import PRESETS, ALIASES

        return sorted([*PRESETS, *ALIASES])

    # ---- editing ------------------------------------------------------------------
    def __setattr__(self, key: str, value: Any) -> None:
        if key in MODEL_FIELDS or key in LAYER_FIELDS:
            self.set(key, value)
        else:
            object.__setattr__(self, key, value)

    def set(self, field: str, value: Any, layer: Optional[int] = None) -> "Blueprint":
        """Sets a knob for every layer (layer=None) or overrides it for one layer."""
        if field not in LAYER_FIELDS and field not in MODEL_FIELDS:
            raise BlueprintError(f"{field!r} is not a Blueprint knob",
                                 hint=f"knobs: {', '.join(MODEL_FIELDS + LAYER_FIELDS)}")
        value = _coerce(field, value)
        if layer is None:
            if field in MODEL_FIELDS:
                object.__setattr__(self, field, copy.deepcopy(value))
            else:
                object.__setattr__(self, "layer", dataclasses.replace(self.layer, **{field: value}))
            return self
        if field not in LAYER_FIELDS:
            raise BlueprintError(f"{field!r} is model-wide and cannot be set for one layer",
                                 hint=f"set it without layer=: bp.set({field!r}, {value!r})")
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.num_layers:
            raise BlueprintError(f"layer {layer!r} does not exist: the model has {self.num_layers} layers "
                                 f"(0..{self.num_layers - 1})",
                                 hint="pick a layer in range, or raise num_layers first")
        self.overrides.setdefault(layer, {})[field] = value
        return self

    def unset(self, field: str, layer: int) -> "Blueprint":
        """Removes one layer's override so it follows the shared value again."""
        fields = self.overrides.get(layer, {})
        if field not in fields:
            raise BlueprintError(f"layer {layer} has no override for {field!r}",
                                 hint=f"overridden there: {', '.join(fields) or 'nothing'}")
        del fields[field]
        if not fields:
            del self.overrides[layer]
        return self

    def layer_spec(self, i: int) -> LayerSpec:
        """The knobs of layer i: the shared spec with that layer's overrides applied."""
        o = self.overrides.get(i)
        return dataclasses.replace(self.layer, **o) if o else self.layer

    def head_dim(self, i: int = 0) -> int:
        s = self.layer_spec(i)
        if s.head_dim is not None:
            return s.head_dim
        return self.hidden_size // s.num_heads if s.num_heads > 0 else 0

    def copy(self) -> "Blueprint":
        return Blueprint.from_json(self.to_json())

    # ---- checks -------------------------------------------------------------------
    def problems(self) -> list[Problem]:
        """Everything that would stop litert-torch building this model, each with a fix."""
        out: list[Problem] = []

        def check(ok: bool, field: str, message: str, fix: str) -> None:
            if not ok:
                out.append(Problem(field, getattr(self, field), message, fix))

        check(self.vocab_size >= 1, "vocab_size", "the vocabulary must hold at least one token",
              "set vocab_size to the tokenizer's vocabulary size")
        check(self.num_layers >= 1, "num_layers", "a decoder needs at least one layer", "set num_layers >= 1")
        check(self.hidden_size >= 1, "hidden_size", "the hidden size must be positive", "set hidden_size >= 1")
        check(self.max_seq_len >= 1, "max_seq_len", "the context length must be positive", "set max_seq_len >= 1")
        check(self.kv_cache_length >= 1, "kv_cache_length", "the KV cache must hold at least one token",
              "set kv_cache_length >= 1")
        check(self.kv_cache_length <= self.max_seq_len, "kv_cache_length",
              f"exceeds max_seq_len ({self.max_seq_len}); litert-torch builds masks only up to max_seq_len",
              f"lower kv_cache_length to <= {self.max_seq_len}, or raise max_seq_len")
        check(self.kv_cache_dtype in KV_DTYPES, "kv_cache_dtype", "unknown KV cache dtype",
              f"choose one of {', '.join(KV_DTYPES)}")
        check(self.final_logit_softcap is None or self.final_logit_softcap > 0, "final_logit_softcap",
              "a soft-cap must be positive", "set a positive cap, or None for no cap")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type")
            check(kind in families.SUPPORTED_ROPE_TYPES, "rope_scaling",
                  f"rope_type {kind!r} is not supported: our RoPE reproduces transformers' "
                  f"{', '.join(families.SUPPORTED_ROPE_TYPES)} exactly, and no other",
                  f"use one of {', '.join(families.SUPPORTED_ROPE_TYPES)}, or pick a checkpoint without "
                  "this scaling (yarn, dynamic and longrope are not supported yet)")
            need = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                                      "original_max_position_embeddings")}.get(kind, ())
            missing = [k for k in need if k not in self.rope_scaling]
            check(not missing, "rope_scaling", f"{kind} scaling needs {', '.join(missing)}",
                  "add the missing keys from the model's config.json")
        for i in sorted(self.overrides):
            if not 0 <= i < self.num_layers:
                out.append(Problem("overrides", i, f"overrides layer {i}, but the model has {self.num_layers} layers",
                                   f"remove them (bp.unset(field, {i})) or raise num_layers", layer=i))
        out += self._layer_problems(self.layer, None, set(LAYER_FIELDS))
        for i, fields in sorted(self.overrides.items()):
            if 0 <= i < self.num_layers:
                out += self._layer_problems(self.layer_spec(i), i, set(fields))
        return out

    def _layer_problems(self, s: LayerSpec, layer: Optional[int], touched: set[str]) -> list[Problem]:
        out: list[Problem] = []

        def check(ok: bool, fields: tuple[str, ...], message: str, fix: str) -> None:
            if not ok and touched.intersection(fields):
                out.append(Problem(fields[0], getattr(s, fields[0]), message, fix, layer))

        check(s.num_heads >= 1, ("num_heads",), "attention needs at least one head", "set num_heads >= 1")
        check(s.num_kv_heads >= 1, ("num_kv_heads",), "attention needs at least one KV head",
              "set num_kv_heads >= 1 (1 = multi-query attention)")
        if s.num_heads >= 1 and s.num_kv_heads >= 1:
            divisors = [d for d in range(1, s.num_heads + 1) if s.num_heads % d == 0]
            check(s.num_heads % s.num_kv_heads == 0, ("num_kv_heads", "num_heads"),
                  f"num_heads ({s.num_heads}) is not a multiple of num_kv_heads ({s.num_kv_heads}); "
                  "each KV head must serve the same number of query heads",
                  f"choose num_kv_heads among {divisors}")
        if s.head_dim is None:
            if s.num_heads >= 1:
                check(self.hidden_size % s.num_heads == 0, ("num_heads", "head_dim"),
                      f"hidden_size ({self.hidden_size}) is not divisible by num_heads ({s.num_heads}) and no "
                      "head_dim is given", "set head_dim explicitly, or choose num_heads dividing hidden_size")
        else:
            check(s.head_dim >= 1, ("head_dim",), "head_dim must be positive", "set head_dim >= 1, or None")
        hd = s.head_dim if s.head_dim is not None else (self.hidden_size // s.num_heads if s.num_heads >= 1 else 0)
        check(s.intermediate_size >= 1, ("intermediate_size",), "the feed-forward hidden size must be positive",
              "set intermediate_size >= 1")
        check(s.ff_type in FF_TYPES, ("ff_type",), "unknown feed-forward type", f"choose one of {FF_TYPES}")
        check(s.activation in ACTIVATIONS, ("activation",), "litert-torch has no such activation",
              f"choose one of {ACTIVATIONS}")
        check(s.ff_type != "gated_fused" or s.activation == "silu", ("ff_type", "activation"),
              f"a fused gate/up feed-forward is litert-torch's SILU_GLU: it has no {s.activation} variant",
              "use activation 'silu', or ff_type 'gated' (separate gate and up projections)")
        check(s.norm_type in NORM_TYPES, ("norm_type",), "unknown normalization",
              f"choose one of {NORM_TYPES}")
        check(s.norm_eps > 0, ("norm_eps",), "epsilon must be positive (it keeps the norm from dividing by 0)",
              "set norm_eps to a small positive number, e.g. 1e-6")
        check(s.norm_offset in (0.0, 1.0), ("norm_offset",),
              "litert-torch expresses only weights stored as-is (0) or as offsets from 1 (1, Gemma)",
              "set norm_offset to 0 or 1")
        check(not (s.norm_offset == 1.0 and s.norm_type == "layer"), ("norm_offset", "norm_type"),
              "litert-torch's LayerNorm has no offset-from-1 weights", "use norm_type 'rms' or norm_offset 0")
        check(s.rope_base > 0, ("rope_base",), "the RoPE base must be positive", "set rope_base, e.g. 10000")
        check(s.alibi or 0 < s.rotary_fraction <= 1, ("rotary_fraction",), "the rotary fraction must be in (0, 1]",
              "set rotary_fraction to 1.0 (all of head_dim) or the model's partial_rotary_factor")
        rot = int(s.rotary_fraction * hd)
        check(s.alibi or hd < 1 or not 0 < s.rotary_fraction <= 1 or (rot >= 2 and rot % 2 == 0),
              ("rotary_fraction", "head_dim"),
              f"the rotary dimension int({s.rotary_fraction} * head_dim {hd}) = {rot} must be even and >= 2: "
              "RoPE rotates pairs of dimensions", "choose rotary_fraction and head_dim whose product is even")
        check(not (s.alibi and s.attn_scale), ("alibi", "attn_scale"),
              "litert-torch's ALiBi attention always scales by 1/sqrt(head_dim)",
              "unset attn_scale, or use RoPE (alibi=False)")
        check(s.attn_scale is None or s.attn_scale > 0, ("attn_scale",), "the attention scale must be positive",
              "set a positive scale, or None for 1/sqrt(head_dim)")
        check(s.attn_logit_softcap is None or s.attn_logit_softcap > 0, ("attn_logit_softcap",),
              "a soft-cap must be positive", "set a positive cap, or None")
        check(s.sliding_window is None or s.sliding_window >= 1, ("sliding_window",),
              "a sliding window must hold at least one token", "set sliding_window >= 1, or None for global")
        check(not (s.post_norms and s.parallel_residual), ("post_norms", "parallel_residual"),
              "post-norms (Gemma 2) and a parallel residual (Phi, Falcon) cannot be combined in litert-torch's block",
              "turn one of them off")
        return out

    # ---- size and cost ------------------------------------------------------------
    def summary(self) -> Summary:
        """Parameters, weight bytes per dtype, KV-cache bytes and decode FLOPs per token."""
        h, v = max(self.hidden_size, 0), max(self.vocab_size, 0)
        by = {"embedding": v * h, "attention": 0, "feed_forward": 0, "norms": 0, "head": 0}
        matrices: list[tuple[int, int]] = [(v, h)]  # (rows, cols) of quantizable weights
        kv_bytes = 0
        flops = 0
        kv_len = max(self.kv_cache_length, 0)

        def norm(dim: int, s: LayerSpec) -> int:
            return dim * (2 if s.norm_type == "layer" else 1)

        for i in range(max(self.num_layers, 0)):
            s = self.layer_spec(i)
            hd, nh, nkv, ff = self.head_dim(i), max(s.num_heads, 0), max(s.num_kv_heads, 0), max(s.intermediate_size, 0)
            q, kv = nh * hd, nkv * hd
            attn = [(q, h), (kv, h), (kv, h), (h, q)]
            matrices += attn
            by["attention"] += sum(r * c for r, c in attn) + (q + 2 * kv if s.qkv_bias else 0) + (h if s.out_bias else 0)
            up = (2 * ff if s.ff_type != "sequential" else ff)  # gate and up rows, fused or not
            ffm = [(up, h), (h, ff)] if s.ff_type != "gated" else [(ff, h), (ff, h), (h, ff)]
            matrices += ffm
            by["feed_forward"] += sum(r * c for r, c in ffm) + (up + h if s.ff_bias else 0)
            n_norms = 1 if s.parallel_residual else (4 if s.post_norms else 2)
            by["norms"] += n_norms * norm(h, s) + (2 * norm(hd, s) if s.qk_norm else 0)
            kv_bytes += 2 * kv_len * kv * KV_DTYPES.get(self.kv_cache_dtype, 4)
            span = min(kv_len, s.sliding_window) if s.sliding_window else kv_len
            flops += 2 * sum(r * c for r, c in attn + ffm) + 4 * nh * hd * span
        by["norms"] += norm(h, self.layer)
        if not self.tie_embeddings:
            by["head"] = v * h + (v if self.lm_head_bias else 0)
            matrices.append((v, h))
        elif self.lm_head_bias:
            by["head"] = v
        flops += 2 * v * h
        params = sum(by.values())
        mat = sum(r * c for r, c in matrices)
        rest = params - mat  # norms and biases stay fp32 in every recipe
        rows = sum(r for r, _ in matrices)
        weights = {
            "fp32": 4 * params,
            "fp16": 2 * mat + 4 * rest,
            "int8": mat + 4 * rows + 4 * rest,  # per-channel fp32 scales
            "int4": math.ceil(mat / 2) + 4 * math.ceil(mat / 32) + 4 * rest,  # blocks of 32, fp32 scales
        }
        return Summary(params, by, weights, kv_len, kv_bytes, flops)

    # ---- litert-torch -------------------------------------------------------------
    def _raise_problems(self) -> None:
        ps = self.problems()
        if ps:
            raise BlueprintError(
                f"the blueprint has {len(ps)} problem(s):\n" + "\n".join(f"  - {p}" for p in ps),
                hint="fix each problem listed (bp.problems() shows them), then build again")

    def needs_own_layers(self) -> bool:
        """True when litert-torch's DecoderOnlyModel alone cannot express this model."""
        specs = [self.layer_spec(i) for i in range(self.num_layers)]
        rope = {(0 if s.alibi else int(s.rotary_fraction * self.head_dim(i)), s.rope_base)
                for i, s in enumerate(specs)}
        return (len(rope) > 1 or self.final_logit_softcap is not None
                or any(s.sliding_window or s.attn_scale or s.post_norms for s in specs))

    def model_config(self):
        """litert-torch's ModelConfig for this blueprint (raises BlueprintError on problems)."""
        self._raise_problems()
        from workbench import configs

        return configs.model_config(self)

    def config_json(self) -> dict:
        """The ModelConfig as JSON-safe data: enums by name, callables left out, no NaN/inf."""
        from workbench import configs

        return configs.to_jsonable(self.model_config())

    def build(self, kv_cache_length: Optional[int] = None, meta: bool = False):
        """Builds the model from litert-torch blocks; its masks are sized for `kv_cache_length`
        (default: the blueprint's).

        Weights are litert-torch's initial values until a mapping loads the checkpoint's;
        with meta=True they are not allocated at all (the mapping fills them one by one).
        """
        config = self.model_config()
        import torch
        from litert_torch.generative.utilities import model_builder
        from workbench import layers

        kv = kv_cache_length or self.kv_cache_length
        if kv > self.max_seq_len:
            raise BlueprintError(f"kv_cache_length {kv} exceeds max_seq_len {self.max_seq_len}",
                                 hint=f"use a KV cache of at most {self.max_seq_len} tokens")
        cls = layers.Decoder if self.needs_own_layers() else model_builder.DecoderOnlyModel
        if meta:
            with torch.device("meta"):
                model = cls(config, mask_cache_size=0)
            model.build_mask_cache(kv)  # masks are attributes, not parameters: real tensors
        else:
            model = cls(config, mask_cache_size=kv)
        return model.eval()

    def to_python(self, tensor_names: Optional[dict] = None, mapping=None) -> str:
        """A readable, runnable module that re-authors this model with litert-torch.

        `tensor_names` (a mapping's patterns) replace the family's defaults; a mapping with
        per-row edits or transposed sources adds the small loader they need."""
        self._raise_problems()
        from workbench import codegen

        return codegen.blueprint_module(self, tensor_names, mapping)

    def write_python(self, path: str | Path) -> Path:
        """Writes `to_python()` to a .py file, atomically (its folder made if needed)."""
        from workbench._io import atomic_write_text

        p = Path(path).expanduser()
        if p.suffix != ".py":
            raise BlueprintError(f"{str(p)!r} is not a .py file", hint="name the file like model_name.py")
        atomic_write_text(p, self.to_python(), BlueprintError)
        return p

    def tensor_names(self) -> dict[str, Optional[str]]:
        """The family's default litert-torch TensorNames (the mapping step refines them)."""
        fam = families.FAMILIES.get(self.family)
        names = {k: v or None for k, v in (fam.tensor_names if fam else families._HF_DECODER_NAMES).items()}
        if self.tie_embeddings:
            names["lm_head"] = None
        return names

    # ---- serialization ------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "schema": SCHEMA_VERSION,
            "kind": "edge-workbench/blueprint",
            "source": self.source,
            "model": {k: copy.deepcopy(getattr(self, k)) for k in MODEL_FIELDS},
            "layer": dataclasses.asdict(self.layer),
            "overrides": {str(i): dict(f) for i, f in sorted(self.overrides.items())},
        }

    @classmethod
    def from_json(cls, data: dict | str) -> "Blueprint":
        if isinstance(data, str):
            data = json.loads(data)
        if not isinstance(data, dict) or data.get("kind") != "edge-workbench/blueprint":
            raise BlueprintError("this JSON is not an Edge Workbench blueprint",
                                 hint="load a file written by Blueprint.to_json()")
        if data.get("schema") != SCHEMA_VERSION:
            raise BlueprintError(f"blueprint schema {data.get('schema')!r} is not {SCHEMA_VERSION}",
                                 hint="open it with the Edge Workbench version that wrote it")
        unknown = set(data["model"]) - set(MODEL_FIELDS) | set(data["layer"]) - set(LAYER_FIELDS)
        if unknown:
            raise BlueprintError(f"unknown blueprint fields: {', '.join(sorted(unknown))}",
                                 hint="open it with the Edge Workbench version that wrote it")
        layer = LayerSpec(**{k: _coerce(k, v) for k, v in data["layer"].items()})
        bp = cls(layer=layer, source=data.get("source", ""), **data["model"])
        for i, fields in data.get("overrides", {}).items():
            for k, v in fields.items():
                bp.set(k, v, layer=int(i))
        return bp

    def fingerprint(self) -> str:
        """A hash of the architecture: downstream results record it to detect staleness."""
        from workbench._io import digest

        d = self.to_json()
        d.pop("source")
        d["model"].pop("name")
        return digest(d)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Blueprint) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return (f"Blueprint({self.name or self.family!r}, family={self.family!r}, layers={self.num_layers}, "
                f"hidden={self.hidden_size}, params={self.summary().params:,}, problems={len(self.problems())})")

    def _repr_html_(self) -> str:
        s = self.summary()
        ps = self.problems()
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td style='text-align:right'>{v:,}</td></tr>"
                       for k, v in s.params_by_block.items())
        mem = ", ".join(f"{k} {_human(v)}" for k, v in s.weights_bytes.items())
        prob = ("<b style='color:#2e7d32'>no problems</b>" if not ps else
                "<ul>" + "".join(f"<li style='color:#c62828'>{html.escape(str(p))}</li>" for p in ps) + "</ul>")
        ov = f"; overrides on layers {sorted(self.overrides)}" if self.overrides else ""
        return (f"<div><b>Blueprint</b> {html.escape(self.name or '')} <code>{html.escape(self.family)}</code>: "
                f"{self.num_layers} layers, hidden {self.hidden_size}, {self.layer.num_heads} heads / "
                f"{self.layer.num_kv_heads} KV heads{html.escape(ov)}<br>"
                f"<b>{s.params:,}</b> parameters; weights {mem}; KV cache ({s.kv_cache_length} tokens) "
                f"{_human(s.kv_cache_bytes)}<table>{rows}</table>{prob}</div>")


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
