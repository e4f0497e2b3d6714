"""Quantization recipes: litert-torch's names, and per-layer mixes of them, as JSON data.

    Recipe.parse("dynamic_int8")
    Recipe.parse({"default": "dynamic_int8", "feedforward": {"1": "dynamic_int4_block32"},
                  "attention": {"0": "fp16", "2": "fp16"}})
    Recipe.parse({"attention": "dynamic_int8", "feedforward": "dynamic_int4_block32"})  # embedding float

The model is converted in float and then quantized with ai-edge-quantizer under a recipe
built here from litert-torch's layer schemes (see `Recipe.ai_edge_recipe` for why not
through litert-torch's own translation). litert-torch silently ignores a layer index that
does not exist; we refuse it. "none" on a part keeps it float under any default.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from workbench.errors import WorkbenchError

if TYPE_CHECKING:
    from workbench.blueprint import Blueprint

# litert-torch's quantize names, exactly; "none" is float32.
SCHEMES = ("none", "dynamic_int8", "weight_only_int8", "fp16", "dynamic_int4_block32", "dynamic_int4_block128")
# Bytes per weight, plus scale bytes per weight, of each scheme (for size estimates).
_BYTES = {"none": (4.0, 0.0), "dynamic_int8": (1.0, None), "weight_only_int8": (1.0, None), "fp16": (2.0, 0.0),
          "dynamic_int4_block32": (0.5, 4 / 32), "dynamic_int4_block128": (0.5, 4 / 128)}
COMPONENTS = ("embedding", "attention", "feedforward")

LayerMap = Union[str, None, dict[int, str]]
# Tensor-name patterns of litert-torch 0.10's converter: `<Block class>_<i>/<module class>_<attr>`.
ATTENTION_RX = r"Block_{}/[\w.]*_atten_func"
FEEDFORWARD_RX = r"Block_{}/[\w.]*_ff(?:[/;]|$)"


def _layer_recipe(scheme: str):
    """litert-torch's LayerQuantRecipe for one of its scheme names."""
    from litert_torch.generative.quantize import quant_attrs as qa
    from litert_torch.generative.quantize import quant_recipe_utils as qu

    return {"dynamic_int8": lambda: qu.create_layer_quant_dynamic(),
            "weight_only_int8": lambda: qu.create_layer_quant_weight_only(),
            "fp16": lambda: qu.create_layer_quant_fp16(),
            "dynamic_int4_block32": lambda: qu.create_layer_quant_dynamic(qa.Dtype.INT4, qa.Granularity.BLOCKWISE_32),
            "dynamic_int4_block128": lambda: qu.create_layer_quant_dynamic(qa.Dtype.INT4,
                                                                           qa.Granularity.BLOCKWISE_128),
            }[scheme]()


class RecipeError(WorkbenchError):
    """A recipe that names an unknown scheme, a missing layer, or a mix litert-torch cannot express."""


def _scheme(value: Any, where: str) -> Optional[str]:
    if value is None:
        return None
    if value not in SCHEMES:
        raise RecipeError(f"{where}: unknown quantization scheme {value!r}",
                          hint=f"use one of litert-torch's names: {', '.join(SCHEMES)}")
    return value


@dataclasses.dataclass
class Recipe:
    """Which litert-torch scheme each part of the model gets."""

    default: Optional[str] = "dynamic_int8"
    embedding: Optional[str] = None
    attention: LayerMap = None
    feedforward: LayerMap = None

    @classmethod
    def parse(cls, spec: Union[str, dict, Path, "Recipe"]) -> "Recipe":
        """A recipe from a scheme name, a dict, a JSON file (path or text), or a Recipe."""
        if isinstance(spec, Recipe):
            return spec
        if isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith(".json")):
            try:
                spec = json.loads(Path(spec).read_text())
            except FileNotFoundError:
                raise RecipeError(f"no recipe file {str(spec)!r}", hint="give a scheme name or an existing .json") \
                    from None
            except json.JSONDecodeError as e:
                raise RecipeError(f"recipe file {spec} is not valid JSON ({e})", hint="fix the file") from None
        if isinstance(spec, str):
            return cls(default=_scheme(spec, "recipe"))
        if not isinstance(spec, dict):
            raise RecipeError(f"a recipe is a scheme name or a dict, not {type(spec).__name__}",
                              hint='e.g. "dynamic_int8" or {"default": "dynamic_int8", "feedforward": {...}}')
        unknown = set(spec) - {"default", "embedding", "attention", "feedforward"}
        if unknown:
            raise RecipeError(f"unknown recipe keys: {', '.join(sorted(unknown))}",
                              hint="keys: default, embedding, attention, feedforward")
        out = cls(default=_scheme(spec.get("default"), "default"), embedding=_scheme(spec.get("embedding"),
                                                                                        "embedding"))
        for comp in ("attention", "feedforward"):
            v = spec.get(comp)
            if isinstance(v, dict):
                layers = {}
                for k, s in v.items():
                    try:
                        layers[int(k)] = _scheme(s, f"{comp}[{k}]")
                    except ValueError:
                        raise RecipeError(f"{comp}: layer {k!r} is not a layer number",
                                          hint="key per-layer schemes by layer index, e.g. {\"0\": \"fp16\"}") \
                            from None
                v = layers
            else:
                v = _scheme(v, comp)
            setattr(out, comp, v)
        return out

    @property
    def name(self) -> str:
        """The litert-torch name when the recipe is one, else "mixed"."""
        if not (self.embedding or self.attention or self.feedforward):
            return self.default or "none"
        return "mixed"

    def to_json(self) -> Any:
        if self.name != "mixed":
            return self.name
        d: dict[str, Any] = {"default": self.default}
        if self.embedding:
            d["embedding"] = self.embedding
        for comp in ("attention", "feedforward"):
            v = getattr(self, comp)
            if v:
                d[comp] = {str(k): s for k, s in v.items()} if isinstance(v, dict) else v
        return d

    def scheme_of(self, component: str, layer: Optional[int] = None) -> str:
        """The scheme a component (of one layer) ends up with; "none" is float."""
        v = getattr(self, component, None)
        if isinstance(v, dict):
            v = v.get(layer) if layer is not None else None
        return v or self.default or "none"

    def validate(self, bp: "Blueprint") -> None:
        """Refuses layer numbers the model lacks."""
        n = bp.num_layers
        for comp in ("attention", "feedforward"):
            v = getattr(self, comp)
            if isinstance(v, dict):
                bad = sorted(i for i in v if not 0 <= i < n)
                if bad:
                    raise RecipeError(f"{comp} names layer(s) {bad}, but the model has {n} layers (0..{n - 1})",
                                      hint="litert-torch would silently ignore them: use layers that exist")


    def ai_edge_recipe(self, tied_head: bool = False):
        """The ai-edge-quantizer recipe that quantizes a float .tflite as this recipe says.

        litert-torch 0.10's own translation (quantize/translate_recipe.py) matches layers
        by `transformer_blocks[i]/...attention` and `transformer_block/...`, names its
        converter no longer writes (tensors are named `...TransformerBlock_1/...
        CausalSelfAttention_atten_func/...`), so its per-layer and per-component recipes
        silently quantize nothing. These regexes match the names it does write. Later
        rules win in ai-edge-quantizer, so the order is default, components, layers; a
        part set to "none" gets NO_QUANTIZE and stays float even under a default.
        """
        from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager
        from litert_torch.quantize import translate_recipe

        rm = recipe_manager.RecipeManager()

        def put(scheme: Optional[str], regex: str) -> None:
            if scheme is None:
                return
            if scheme == "none":
                rm.add_quantization_config(regex=regex, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                           algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
                return
            translate_recipe._set_quant_config(rm, _layer_recipe(scheme), regex)

        put(self.default, ".*")
        if self.embedding:
            put(self.embedding, "Embedding_tok_embedding")
            if tied_head:  # the head reads the embedding's weight: keep them alike
                put(self.embedding, "Linear_lm_head")
        for comp, rx in (("attention", ATTENTION_RX), ("feedforward", FEEDFORWARD_RX)):
            v = getattr(self, comp)
            if isinstance(v, str):
                put(v, rx.format(r"\d+"))
        for comp, rx in (("attention", ATTENTION_RX), ("feedforward", FEEDFORWARD_RX)):
            v = getattr(self, comp)
            if isinstance(v, dict):
                for i, scheme in sorted(v.items()):
                    put(scheme, rx.format(i))
        return rm.get_quantization_recipe()

    def estimate_bytes(self, bp: "Blueprint", kv: Optional[int] = None) -> int:
        """Estimated .tflite size: each part's weights at its scheme's bytes, plus scales;
        norms and biases stay float32; plus the causal-mask constant (4·kv² bytes) and the
        graph itself (~90 KB a layer of ops and tensor names, measured with litert-torch
        0.10; it dominates only for tiny models)."""
        kv = kv or bp.kv_cache_length
        total = 4.0 * kv * kv + 90_000 * bp.num_layers + 20_000
        h = bp.hidden_size

        def cost(n_weights: int, rows: int, scheme: str) -> float:
            per, scale = _BYTES[scheme]
            return n_weights * per + (rows * 4 if scale is None else n_weights * scale)

        total += cost(bp.vocab_size * h, bp.vocab_size, self.scheme_of("embedding"))
        s = bp.summary()
        for i in range(bp.num_layers):
            ls, hd = bp.layer_spec(i), bp.head_dim(i)
            q, kv = ls.num_heads * hd, ls.num_kv_heads * hd
            total += cost(h * (q + 2 * kv) + q * h, q + 2 * kv + h, self.scheme_of("attention", i))
            n_ff = (3 if ls.ff_type != "sequential" else 2) * h * ls.intermediate_size
            total += cost(n_ff, 2 * ls.intermediate_size + h, self.scheme_of("feedforward", i))
        if not bp.tie_embeddings:
            total += cost(bp.vocab_size * h, bp.vocab_size, self.default or "none")
        total += 4 * s.params_by_block["norms"]
        return int(math.ceil(total))

    def describe(self) -> str:
        if self.name != "mixed":
            return self.name
        parts = [f"default {self.default or 'float'}"]
        for comp in COMPONENTS:
            v = getattr(self, comp)
            if isinstance(v, dict):
                parts.append(f"{comp} " + ", ".join(f"L{i}={s}" for i, s in sorted(v.items())))
            elif v:
                parts.append(f"{comp} {v}")
        return "; ".join(parts)
