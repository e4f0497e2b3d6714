"""Blueprint -> litert-torch ModelConfig, and ModelConfig -> JSON-safe data."""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from typing import TYPE_CHECKING, Any

from workbench._quiet import import_stack

import_stack()
from litert_torch.generative.layers import model_config as cfg  # noqa: E402

if TYPE_CHECKING:
    from workbench.blueprint import Blueprint, LayerSpec

_ACT = {"silu": cfg.ActivationType.SILU, "gelu": cfg.ActivationType.GELU, "gelu_tanh": cfg.ActivationType.GELU_TANH,
        "gelu_quick": cfg.ActivationType.GELU_QUICK, "relu": cfg.ActivationType.RELU}
_NORM = {"rms": cfg.NormalizationType.RMS_NORM, "layer": cfg.NormalizationType.LAYER_NORM}
_FF = {"gated": cfg.FeedForwardType.GATED, "sequential": cfg.FeedForwardType.SEQUENTIAL,
       # one [gate; up] projection whose halves SILU_GLU combines, as litert-torch's Phi-3 does
       "gated_fused": cfg.FeedForwardType.SEQUENTIAL}


def norm_config(s: "LayerSpec") -> cfg.NormalizationConfig:
    return cfg.NormalizationConfig(type=_NORM[s.norm_type], epsilon=s.norm_eps, zero_centered=s.norm_offset == 1.0)


def block_config(bp: "Blueprint", i: int) -> cfg.TransformerBlockConfig:
    """One layer's litert-torch block config; our subclasses only where a knob needs them."""
    from workbench import layers

    s = bp.layer_spec(i)
    norm = norm_config(s)
    attn_kwargs: dict[str, Any] = dict(
        num_heads=s.num_heads,
        head_dim=bp.head_dim(i),
        num_query_groups=s.num_kv_heads,
        rotary_base=_num(s.rope_base),
        rotary_percentage=0.0 if s.alibi else s.rotary_fraction,
        use_alibi=s.alibi,
        # Split q/k/v per head (needed for QK-norm) and fuse q|k|v unsplit, the HF layout.
        qkv_transpose_before_split=True,
        qkv_fused_interleaved=False,
        qkv_use_bias=s.qkv_bias,
        output_proj_use_bias=s.out_bias,
        logit_softcap=s.attn_logit_softcap,
        attn_type=cfg.AttentionType.LOCAL_SLIDING if s.sliding_window else cfg.AttentionType.GLOBAL,
        sliding_window_size=s.sliding_window,
    )
    if s.qk_norm:
        attn_kwargs.update(query_norm_config=norm_config(s), key_norm_config=norm_config(s))
    attn = (layers.AttentionConfig(scale=s.attn_scale, **attn_kwargs) if s.attn_scale
            else cfg.AttentionConfig(**attn_kwargs))
    ff = cfg.FeedForwardConfig(
        type=_FF[s.ff_type],
        activation=cfg.ActivationConfig(cfg.ActivationType.SILU_GLU if s.ff_type == "gated_fused"
                                        else _ACT[s.activation]),
        intermediate_size=s.intermediate_size,
        use_bias=s.ff_bias,
        pre_ff_norm_config=norm_config(s) if s.post_norms else cfg.NormalizationConfig(),
        post_ff_norm_config=norm_config(s) if s.post_norms else cfg.NormalizationConfig(),
    )
    block_kwargs = dict(
        attn_config=attn,
        ff_config=ff,
        pre_attention_norm_config=norm,
        # Without post-norms this is the norm in front of the FF (HF's post_attention_layernorm);
        # a parallel-residual block has a single norm.
        post_attention_norm_config=cfg.NormalizationConfig() if s.parallel_residual else norm_config(s),
        parallel_residual=s.parallel_residual,
    )
    if s.post_norms:
        return layers.TransformerBlockConfig(post_norms=True, **block_kwargs)
    return cfg.TransformerBlockConfig(**block_kwargs)


def model_config(bp: "Blueprint") -> cfg.ModelConfig:
    from workbench import layers

    blocks = [block_config(bp, i) for i in range(bp.num_layers)]
    uniform = not bp.overrides or all(b == blocks[0] for b in blocks)
    kwargs: dict[str, Any] = {}
    if bp.rope_scaling:
        kwargs["build_rope"] = functools.partial(layers.build_rope, scaling=dict(bp.rope_scaling))
    return cfg.ModelConfig(
        vocab_size=bp.vocab_size,
        num_layers=bp.num_layers,
        max_seq_len=bp.max_seq_len,
        embedding_dim=bp.hidden_size,
        block_configs=blocks[0] if uniform else blocks,
        final_norm_config=norm_config(bp.layer),
        embedding_scale=bp.hidden_size ** 0.5 if bp.scale_embeddings else None,
        lm_head_use_bias=bp.lm_head_bias,
        lm_head_share_weight_with_embedding=bp.tie_embeddings,
        final_logit_softcap=bp.final_logit_softcap,
        **kwargs,
    )


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def to_jsonable(obj: Any) -> Any:
    """Dataclasses to dicts, enums by name, callables dropped, non-finite floats as strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if callable(v) and not isinstance(v, enum.Enum):
                continue
            out[f.name] = to_jsonable(v)
        return out
    if isinstance(obj, enum.Enum):
        return obj.name
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj
