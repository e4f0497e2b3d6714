"""Emits the re-authoring as Python a person can read, run and keep.

The module has the shape of litert-torch's own examples (tiny_llama.py): TENSOR_NAMES,
a ModelConfig factory, and build_model(checkpoint_path). Config objects are written
as constructor calls that name only the fields that differ from their defaults.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from workbench.blueprint import Blueprint

_INDENT = "    "


def _class_name(obj: Any) -> str:
    mod = type(obj).__module__
    if mod.endswith("model_config"):
        return f"cfg.{type(obj).__name__}"
    if mod == "workbench.layers":
        return f"layers.{type(obj).__name__}"
    raise TypeError(f"cannot emit {type(obj)}")


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def render(obj: Any, names: dict[str, Any], depth: int = 1) -> str:
    """Python source for a config value; values equal to an entry of `names` use its name."""
    for name, value in names.items():
        if type(obj) is type(value) and obj == value:
            return name
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        args = []
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if f.name == "build_rope":
                if isinstance(v, functools.partial):
                    args.append(f"build_rope=functools.partial(layers.build_rope, scaling={v.keywords['scaling']!r})")
                continue
            default = _default_of(f)
            if default is not dataclasses.MISSING and type(v) is type(default) and v == default:
                continue
            args.append(f"{f.name}={render(v, names, depth + 1)}")
        pad = _INDENT * depth
        inner = "".join(f"\n{pad}{a}," for a in args)
        return f"{_class_name(obj)}({inner}\n{_INDENT * (depth - 1)})"
    if isinstance(obj, enum.Enum):
        return f"cfg.{type(obj).__name__}.{obj.name}"
    if isinstance(obj, list):
        return "[" + ", ".join(render(v, names, depth) for v in obj) + "]"
    return repr(obj)


def tensor_names_source(names: dict[str, Optional[str]]) -> str:
    lines = "".join(f'\n{_INDENT}{k}={v!r},' for k, v in names.items() if v is not None)
    return f"TENSOR_NAMES = loading_utils.ModelLoader.TensorNames({lines}\n)"


def checkpoint_loader_source(mapping) -> str:
    """A custom_loader for litert-torch's ModelLoader that renames per-row edits to the
    names the patterns expect, transposes sources stored transposed, and drops buffers."""
    renames = {}
    for e in mapping.table():
        if e.target in mapping.rows:
            t = next(t for t in mapping._targets if t.param == e.target)
            expected = mapping._source_name(t.key if t.key != "qkv" else "attn_fused_qkv_proj", t.layer, t.suffix)
            renames[expected] = e.source
    transposed = sorted({mapping.tensor_names[k] for k in mapping.transposed if mapping.tensor_names.get(k)})
    from workbench.mapping import qkv_groups

    grouped = {mapping.tensor_names[k]: [qkv_groups(mapping.blueprint, i) for i in range(mapping.blueprint.num_layers)]
               for k in mapping.grouped if mapping.tensor_names.get(k)}
    return f'''
# Names the patterns expect <- the tensors that hold them (edited rows of the mapping).
RENAMES = {renames!r}
# Patterns whose tensors the checkpoint stores transposed.
TRANSPOSED = {tuple(transposed)!r}
# Fused QKV patterns stored per KV group ([q.., k, v] per group): (groups, q per group, head_dim) by layer.
GROUPED = {grouped!r}


def load_checkpoint(path: str) -> dict:
    """Reads the checkpoint as litert-torch's ModelLoader expects it."""
    import re

    state = loading_utils.load_safetensors(path)
    for want, have in RENAMES.items():
        state[want] = state.pop(have)
    for pattern in TRANSPOSED:
        rx = re.compile(re.escape(pattern).replace(r"\{{\}}", r"\d+") + r"\.weight$")
        for name in [n for n in state if rx.match(n)]:
            state[name] = state[name].T.contiguous()
    for pattern, shapes in GROUPED.items():
        for layer, (groups, q_per_kv, head_dim) in enumerate(shapes):
            for suffix in ("weight", "bias"):
                name = f"{{pattern.format(layer)}}.{{suffix}}"
                if name in state:
                    t = state[name]
                    g = t.reshape(groups, q_per_kv + 2, head_dim, *t.shape[1:])
                    state[name] = torch.cat([g[:, :q_per_kv].reshape(-1, *t.shape[1:]),
                                             g[:, q_per_kv].reshape(-1, *t.shape[1:]),
                                             g[:, q_per_kv + 1].reshape(-1, *t.shape[1:])]).contiguous()
    return {{k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}}
'''


def blueprint_module(bp: "Blueprint", tensor_names: Optional[dict] = None, mapping=None) -> str:
    from workbench import configs

    mc = configs.model_config(bp)
    blocks = [configs.block_config(bp, i) for i in range(bp.num_layers)]
    kinds: list[Any] = []
    for b in blocks:
        if b not in kinds:
            kinds.append(b)
    norms = {"NORM_CONFIG": configs.norm_config(bp.layer)}
    own = bp.needs_own_layers() or any(type(b).__module__ == "workbench.layers" for b in kinds)
    uses_layers = own or isinstance(mc.build_rope, functools.partial)

    body: list[str] = []
    if len(kinds) == 1:
        body.append(f"    return {render(kinds[0], norms, 2)}")
    else:
        common = max(kinds, key=blocks.count)
        for k in kinds:
            if k is common:
                continue
            idx = tuple(i for i, b in enumerate(blocks) if b == k)
            body.append(f"    if idx in {idx!r}:\n        return {render(k, norms, 3)}")
        body.append(f"    return {render(common, norms, 2)}")
    block_fn = "\n".join(body)
    block_arg = "get_block_config(0)" if len(kinds) == 1 else f"[get_block_config(i) for i in range({bp.num_layers})]"
    model_fields = render(dataclasses.replace(mc, block_configs=[]), norms, 2).replace(
        "block_configs=[],", f"block_configs={block_arg},")
    # block_configs=[] is not the default, so it is always present in the rendering above.

    names = tensor_names or bp.tensor_names()
    custom = mapping is not None and (mapping.rows or mapping.transposed or mapping.grouped)
    loader = checkpoint_loader_source(mapping) if custom else ""
    model_class = "layers.Decoder" if own else "model_builder.DecoderOnlyModel"
    imports = ["import functools\n" if isinstance(mc.build_rope, functools.partial) else "",
               "import litert_torch.generative.layers.model_config as cfg",
               "from litert_torch.generative.utilities import model_builder",
               "import litert_torch.generative.utilities.loader as loading_utils",
               "import torch"]
    if uses_layers:
        imports.append("\n# Edge Workbench's additions to litert-torch's layers (see workbench/layers.py).\n"
                       "from workbench import layers")
    why = ("litert-torch's DecoderOnlyModel cannot express this model (per-layer RoPE, sliding windows, "
           "attention scale, post-norms or a final soft-cap), so it uses workbench.layers.Decoder, "
           "a small subclass of it." if own else "Built from litert-torch's DecoderOnlyModel.")
    return f'''"""{bp.name or bp.family} ({bp.family}) re-authored for litert-torch by Edge Workbench.

Source: {bp.source or "(none)"}; architecture fingerprint {bp.fingerprint()}.
{why}
"""

{chr(10).join(i for i in imports if i)}

{tensor_names_source(names)}
{loader}
NORM_CONFIG = {render(norms["NORM_CONFIG"], {}, 1)}


def get_block_config(idx: int) -> cfg.TransformerBlockConfig:
    """The config of transformer block `idx`."""
{block_fn}


def get_model_config() -> cfg.ModelConfig:
    return {model_fields}


def build_model(checkpoint_path: str, mask_cache_size: int = {bp.kv_cache_length}) -> torch.nn.Module:
    """Builds the model and loads its weights from a checkpoint folder or file."""
    return model_builder.build_decoder_only_model(
        checkpoint_path=checkpoint_path,
        config=get_model_config(),
        tensor_names=TENSOR_NAMES,
        model_class={model_class},{"""
        custom_loader=load_checkpoint,""" if custom else ""}
        mask_cache_size=mask_cache_size,
    )
'''
