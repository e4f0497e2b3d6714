"""The few modules we add beside litert-torch's generative layers.

litert-torch's `DecoderOnlyModel` builds RoPE from layer 0 for every layer, has no
sliding-window masks, fixes the attention scale at 1/sqrt(head_dim), applies no
final logit soft-cap and always places the second norm before the feed-forward.
Families that need any of these (Gemma 2/3, Qwen2 with sliding layers, ...) get the
smallest subclass that adds it. Module names stay litert-torch's
(`transformer_blocks[i].atten_func.qkv_projection`, ...) so its loader and its
quantization recipes keep matching them. A Blueprint that needs none of this is
built from litert-torch's own classes alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import nn

# torch and litert-torch only: the Python a model needs when its code uses these layers
# (`from workbench import layers` loads this file, the package's lazy __init__ and the
# stdlib-only `_quiet`, nothing else; a copy of this file beside the emitted model works
# the same, only louder on its first import).
try:
    from workbench._quiet import import_stack
except ImportError:  # a copy outside the workbench
    pass
else:
    import_stack()
from litert_torch.generative.layers import attention, builder
from litert_torch.generative.layers import attention_utils
from litert_torch.generative.layers import kv_cache as kv_utils
from litert_torch.generative.layers import model_config as cfg
from litert_torch.generative.layers import rotary_position_embedding as rope_lib
from litert_torch.generative.layers import sdpa_with_kv_update
from litert_torch.generative.utilities import model_builder


@dataclasses.dataclass
class AttentionConfig(cfg.AttentionConfig):
    """litert-torch's AttentionConfig plus a query scale of the model's own.

    litert-torch's attention always scales scores by 1/sqrt(head_dim); Gemma 2/3 use
    query_pre_attn_scalar**-0.5 instead. None keeps litert-torch's default.
    """

    scale: Optional[float] = None


@dataclasses.dataclass
class TransformerBlockConfig(cfg.TransformerBlockConfig):
    """litert-torch's TransformerBlockConfig plus Gemma 2's norm placement.

    post_norms: normalise the attention output (post_attention_norm_config) and the
    feed-forward output (ff_config.post_ff_norm_config) before each residual add,
    with the feed-forward's own pre-norm in front of it, as in Gemma 2/3.
    """

    post_norms: bool = False


def build_rope(input_pos: torch.Tensor, n_elem: int, base: float = 10_000, scaling: Optional[dict] = None):
    """cos/sin for RoPE, computed the way transformers computes them.

    A drop-in for `ModelConfig.build_rope` (same signature as litert-torch's
    `rotary_position_embedding.build_rope`) that also applies transformers'
    `linear` and `llama3` frequency scaling.
    """
    if n_elem <= 0:
        return None, None
    inv_freq = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.int64).float() / n_elem))
    if scaling:
        kind = scaling.get("rope_type", "default")
        if kind == "linear":
            inv_freq = inv_freq / scaling["factor"]
        elif kind == "llama3":
            inv_freq = _llama3_inv_freq(inv_freq, scaling)
        elif kind != "default":
            raise ValueError(f"rope_type {kind!r} is not supported")
    radians = input_pos.float().unsqueeze(-1) * inv_freq.unsqueeze(0)
    return torch.cos(radians).unsqueeze(0), torch.sin(radians).unsqueeze(0)


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


class ScaledAttention(attention.CausalSelfAttention):
    """CausalSelfAttention with `config.scale` in place of 1/sqrt(head_dim).

    litert-torch's SDPA helpers take no scale from the config, so the queries are
    multiplied by scale * sqrt(head_dim) after RoPE: softmax(q k^T * scale) exactly.
    Built with qkv_transpose_before_split, as every Blueprint is.
    """

    def forward(self, x, rope=None, mask=None, input_pos=None, kv_cache=None, lora=None):
        c = self.config
        b, t, _ = x.size()
        qkv = self.qkv_projection(x).view(b, t, -1, c.head_dim)
        g = c.num_query_groups
        q, k, v = qkv.split((c.num_heads, g, g), dim=-2)
        q, k, v = self.query_norm(q), self.key_norm(k), self.value_norm(v)
        if rope is not None:
            q, k = rope_lib.apply_rope_inline(q, k, *rope)
        q = q * (c.scale * math.sqrt(c.head_dim))
        out, kv = sdpa_with_kv_update.sdpa_with_kv_update(q, k, v, kv_cache, input_pos, mask, c, self.enable_hlfb)
        y = self.output_projection(out)
        return y if kv is None else (y, kv)


class Block(attention.TransformerBlock):
    """TransformerBlock with the scaled attention and Gemma 2's post-norms when asked."""

    def __init__(self, config: cfg.TransformerBlockConfig, model_config: cfg.ModelConfig) -> None:
        nn.Module.__init__(self)  # as TransformerBlock.__init__, choosing the attention class
        dim = model_config.embedding_dim
        attn_cls = ScaledAttention if getattr(config.attn_config, "scale", None) else attention.CausalSelfAttention
        self.pre_atten_norm = builder.build_norm(dim, config.pre_attention_norm_config)
        self.atten_func = attn_cls(dim, config.attn_config, model_config.enable_hlfb)
        self.post_atten_norm = builder.build_norm(dim, config.post_attention_norm_config)
        self.ff = builder.build_ff(dim, config.ff_config)
        self.config = config

    def forward(self, x, rope=None, mask=None, input_pos=None, kv_cache=None, lora=None):
        if not getattr(self.config, "post_norms", False):
            return super().forward(x, rope, mask, input_pos, kv_cache, lora)
        out = self.atten_func(self.pre_atten_norm(x), rope, mask, input_pos, kv_cache, lora)
        attn_out, kv = out if kv_cache is not None else (out, None)
        x = x + self.post_atten_norm(attn_out)
        x = x + self.ff(x)  # the FF applies its own pre- and post-norms
        return x if kv is None else (x, kv)


class Decoder(model_builder.DecoderOnlyModel):
    """DecoderOnlyModel with per-layer RoPE, sliding-window masks and a final soft-cap."""

    def __init__(self, config: cfg.ModelConfig, mask_cache_size: int = 0):
        nn.Module.__init__(self)  # as DecoderOnlyModel.__init__, with our Block
        self.tok_embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=0)
        self.lm_head = nn.Linear(config.embedding_dim, config.vocab_size, bias=config.lm_head_use_bias)
        if config.lm_head_share_weight_with_embedding:
            self.lm_head.weight.data = self.tok_embedding.weight.data
        self.transformer_blocks = nn.ModuleList(Block(config.block_config(i), config) for i in range(config.num_layers))
        self.final_norm = builder.build_norm(config.embedding_dim, config.final_norm_config)
        self.config = config
        self.build_mask_cache(mask_cache_size)

    def build_mask_cache(self, mask_cache_size: int):
        super().build_mask_cache(mask_cache_size)
        self.window_mask_caches = {}
        if mask_cache_size > 0:
            for i in range(self.config.num_layers):
                w = self.config.block_config(i).attn_config.sliding_window_size
                if w and w not in self.window_mask_caches:
                    self.window_mask_caches[w] = attention_utils.build_sliding_window_mask_cache(mask_cache_size, w)

    def _layer_mask(self, i: int, input_pos: torch.Tensor, kv_len: int, mask):
        given = mask[i] if isinstance(mask, list) else mask
        w = self.config.block_config(i).attn_config.sliding_window_size
        if given is not None and not w:
            return given
        cache = self.window_mask_caches[w] if w else self.mask_cache
        assert cache is not None, "Mask cache must be built."
        own = cache.index_select(2, input_pos)[:, :, :, :kv_len]
        return own if given is None else given + own

    @torch.inference_mode
    def forward(self, tokens, input_pos, kv_cache, mask=None, lora=None, export_config=None):
        _, seq_len = tokens.size()
        assert self.config.max_seq_len >= seq_len, (
            f"Cannot forward sequence of length {seq_len}, max seq length is only {self.config.max_seq_len}"
        )
        ropes: dict[tuple, tuple] = {}
        layer_ropes, masks = [], []
        for i in range(self.config.num_layers):
            a = self.config.block_config(i).attn_config
            key = (int(a.rotary_percentage * a.head_dim), a.rotary_base)
            if key not in ropes:
                ropes[key] = self.config.build_rope(input_pos, *key)
            layer_ropes.append(ropes[key])
            masks.append(self._layer_mask(i, input_pos, kv_cache.caches[i].get_max_seq_len(), mask))
        return self._forward_with_embeds(
            self.tok_embedding(tokens), layer_ropes, masks, input_pos, kv_cache, lora, export_config
        )

    def _forward_with_embeds(self, input_embeds, rope, mask, input_pos, kv_cache, lora=None, export_config=None):
        x = input_embeds
        if self.config.embedding_scale is not None:
            x = x * self.config.embedding_scale
        entries = []
        for i, block in enumerate(self.transformer_blocks):
            r = rope[i] if isinstance(rope, list) else rope
            m = mask[i] if isinstance(mask, list) else mask
            x, kv = block(x, r, m, input_pos, kv_cache.caches[i], lora.adapters[i] if lora else None)
            entries.append(kv)
        updated = kv_utils.KVCache(tuple(entries))
        if export_config is not None and torch.numel(input_pos) > 1 and not export_config.output_logits_on_prefill:
            return {"kv_cache": updated}
        logits = self.lm_head(self.final_norm(x))
        cap = self.config.final_logit_softcap
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return {"logits": logits, "kv_cache": updated}


def logits(model: nn.Module, tokens, kv_cache_length: Optional[int] = None) -> torch.Tensor:
    """Runs a prompt through a re-authored model in one prefill; returns (1, T, vocab) logits.

    `tokens` is a list of ids or a (T,) / (1, T) tensor. The KV cache is sized to
    the prompt unless `kv_cache_length` says otherwise.
    """
    t = torch.as_tensor(tokens, dtype=torch.int).reshape(1, -1)
    kv = kv_utils.KVCache.from_model_config(kv_cache_length or t.shape[1], model.config)
    with torch.inference_mode():
        return model(t, torch.arange(t.shape[1], dtype=torch.int), kv)["logits"]


def count_params(model: nn.Module) -> int:
    """Parameters of a built model, tied weights once.

    litert-torch ties the head by sharing the embedding's storage between two
    Parameter objects, so counting by object would count it twice.
    """
    seen: dict[int, int] = {}
    for p in model.parameters():
        seen.setdefault(p.data_ptr(), p.numel())
    return sum(seen.values())


def module_tree(model: nn.Module, depth: int = 2) -> list[tuple[str, str, int]]:
    """(path, class name, parameters) of the model's modules down to `depth`, paths as
    litert-torch names them (`transformer_blocks.0.atten_func`), ready to paste into code."""
    rows = []
    for name, mod in model.named_modules():
        level = 0 if not name else name.count(".") + 1
        if 0 < level <= depth:
            n = sum(p.numel() for p in mod.parameters())
            rows.append((name, type(mod).__name__, n))
    return rows


def generate_greedy(model: nn.Module, tokens, max_new_tokens: int, kv_cache_length: Optional[int] = None,
                    stop: Optional[set] = None) -> list[int]:
    """Greedy decoding through litert-torch's KV cache: one prefill, then one decode step
    per token (as the converted model's `prefill`/`decode` signatures run)."""
    ids = [int(t) for t in torch.as_tensor(tokens).reshape(-1).tolist()]
    kv_len = kv_cache_length or len(ids) + max_new_tokens
    kv = kv_utils.KVCache.from_model_config(kv_len, model.config)
    out: list[int] = []
    with torch.inference_mode():
        res = model(torch.tensor([ids], dtype=torch.int), torch.arange(len(ids), dtype=torch.int), kv)
        for step in range(max_new_tokens):
            nxt = int(res["logits"][0, -1].argmax())
            out.append(nxt)
            if (stop and nxt in stop) or step == max_new_tokens - 1:
                break
            pos = len(ids) + step
            res = model(torch.tensor([[nxt]], dtype=torch.int), torch.tensor([pos], dtype=torch.int),
                        res["kv_cache"])
    return out
