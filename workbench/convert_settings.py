"""What a conversion is asked to do, as one frozen value: convert, sweeps, manifests and re-runs share it.

    s = ConvertSettings(recipe="dynamic_int8", prefill=(8, 64), kv=1024)
    s = s.resolve(blueprint)         # every default filled in for this model, or a ConversionError
    s.to_json()                      # what the manifest records under "settings"
    ConvertSettings.from_json(man["settings"])   # the same settings again (a re-run)

`resolve` is the one place a conversion's settings are checked against a model (prefill
lengths, the KV cache length, the KV layout, the recipe's layers); `convert()` and
`sweep.prepare` both call it, so both refuse the same input with the same words.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Union

from workbench.errors import WorkbenchError
from workbench.recipe import Recipe

PATHS = ("reauthored", "export_hf")
# KV cache layouts of the re-authored path (litert-torch's kv_cache.KV_LAYOUT_*): "default"
# (litert-torch's) K = V = [1, kv, heads, dim]; "transposed" K [1, heads, kv, dim], V [1, heads,
# dim, kv], as litert-torch's direct export (export_hf) always lays it out. Transposed is ours:
# decode ran 14-26% faster with it at 111M int8, 3% at 1.1B (benchmarks/run_speed.py; README).
KV_LAYOUTS = ("default", "transposed")
DEFAULT_KV_LAYOUT = "transposed"
# ai-edge-quantizer's validate keeps every tensor: the error view is on by default below this size
ANALYZE_BELOW_PARAMS = 300_000_000


class ConversionError(WorkbenchError):
    """A conversion that was refused, failed, was killed or was cancelled."""

    def __init__(self, message: str, hint: str = "", *, stage: str = "", signal_name: str = "",
                 log_tail: str = "", peak_rss_bytes: int = 0) -> None:
        super().__init__(message, hint)
        self.stage, self.signal_name, self.log_tail, self.peak_rss_bytes = stage, signal_name, log_tail, peak_rss_bytes


def default_kv(bp) -> int:
    """The KV cache length a conversion takes when none is given: 1024 positions, or the
    model's max_seq_len when it holds fewer."""
    return min(1024, bp.max_seq_len)


@dataclasses.dataclass(frozen=True)
class ConvertSettings:
    """A conversion's settings. None means "the default for the model" until `resolve` fills it.

    `recipe`: a quantize name, a per-layer recipe (dict, JSON file or Recipe); `prefill`: the
    prefill signatures' lengths; `kv`: the KV cache length (default `default_kv`); `path`:
    "reauthored" or "export_hf" (litert-torch's direct export); `kv_layout` (re-authored
    only): "default" or "transposed"; `threads`: the check's threads (default: every core);
    `check_steps`: decode steps the check compares; `analyze`: the quantization-error view
    (default below 300M parameters); `low_memory`: the float model written straight to a
    file and quantized from file to file (False quantizes inside litert-torch's converter)."""

    recipe: Union[str, dict, Path, Recipe] = "dynamic_int8"
    prefill: tuple[int, ...] = (8,)
    kv: Optional[int] = None
    path: str = "reauthored"
    kv_layout: Optional[str] = None
    threads: Optional[int] = None
    check_steps: int = 6
    analyze: Optional[bool] = None
    low_memory: bool = True

    def __post_init__(self) -> None:
        p = self.prefill
        try:
            lengths = tuple(sorted({int(x) for x in ([p] if isinstance(p, (int, str)) else p)}))
        except (TypeError, ValueError):
            raise ConversionError(f"prefill lengths {p!r} are not whole numbers", hint="e.g. prefill=[8, 64]"
                                  ).with_cli("e.g. --prefill 8,64") from None
        object.__setattr__(self, "prefill", lengths)
        object.__setattr__(self, "recipe", Recipe.parse(self.recipe))
        if self.kv is not None:
            object.__setattr__(self, "kv", int(self.kv))

    def replace(self, **changes: Any) -> "ConvertSettings":
        return dataclasses.replace(self, **changes)

    @property
    def recipe_label(self) -> str:
        """The recipe's name in file names: a per-layer mix is named by its digest."""
        from workbench._io import digest

        r = self.recipe
        return r.name if r.name != "mixed" else f"mixed-{digest(r.to_json())[:6]}"

    def resolve(self, bp) -> "ConvertSettings":
        """These settings for `bp`, every default filled in; refuses what the model cannot take."""
        path, kv_layout = self.path, self.kv_layout
        if path not in PATHS:
            raise ConversionError(f"unknown conversion path {path!r}", hint=f"choose one of {', '.join(PATHS)}")
        if kv_layout is not None and path == "export_hf":
            raise ConversionError(f"kv_layout={kv_layout!r} applies to the re-authored path only",
                                  hint="leave kv_layout unset with path='export_hf': litert-torch's direct export "
                                       "always lays the cache out transposed (K [1, heads, kv, dim], "
                                       "V [1, heads, dim, kv])")
        if kv_layout is not None and kv_layout not in KV_LAYOUTS:
            raise ConversionError(f"unknown kv_layout {kv_layout!r}", hint=f"choose one of {', '.join(KV_LAYOUTS)}")
        alibi = any(bp.layer_spec(i).alibi for i in range(bp.num_layers))
        if kv_layout == "transposed" and alibi and path == "reauthored":
            raise ConversionError("litert-torch 0.10's transposed KV cache cannot carry ALiBi biases (Falcon-RW): "
                                  "its export fails on a shape mismatch", hint="use kv_layout='default' for this model")
        # litert-torch's transposed attention has no ALiBi path: such models keep the default layout
        kv_layout = "transposed" if path == "export_hf" else (kv_layout or ("default" if alibi else DEFAULT_KV_LAYOUT))
        bp._raise_problems()
        kv = default_kv(bp) if self.kv is None else self.kv
        if kv < 2 or kv > bp.max_seq_len:
            raise ConversionError(f"kv {kv}: the KV cache must hold between 2 and the model's max_seq_len "
                                  f"({bp.max_seq_len}) tokens", hint=f"use kv between 2 and {bp.max_seq_len}"
                                  ).with_cli(f"give --kv between 2 and {bp.max_seq_len} (default {default_kv(bp)})")
        prefill = self.prefill
        if not prefill or prefill[0] < 1:
            raise ConversionError(f"prefill lengths {list(prefill)} must be positive", hint="e.g. prefill=[8, 64]"
                                  ).with_cli("e.g. --prefill 8,64")
        if prefill[-1] > kv:
            raise ConversionError(f"prefill length {prefill[-1]} is longer than the KV cache ({kv})",
                                  hint=f"use prefill lengths <= kv, or raise kv to at least {prefill[-1]}").with_cli(
                f"give --prefill lengths <= {kv}, or --kv {prefill[-1]} or more")
        self.recipe.validate(bp)
        analyze = (self.analyze if self.analyze is not None else bp.summary().params < ANALYZE_BELOW_PARAMS) \
            and self.recipe.name != "none" and path == "reauthored"
        return self.replace(kv=kv, kv_layout=kv_layout, analyze=bool(analyze))

    def to_json(self) -> dict:
        return {"recipe": self.recipe.to_json(), "prefill": list(self.prefill), "kv": self.kv, "path": self.path,
                "kv_layout": self.kv_layout, "threads": self.threads, "check_steps": self.check_steps,
                "analyze": self.analyze, "low_memory": self.low_memory}

    @classmethod
    def from_json(cls, d: dict) -> "ConvertSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_manifest(cls, man: dict) -> "ConvertSettings":
        """The settings a recorded conversion was made with (manifests before `settings` was
        recorded give their recipe, lengths, path and layout; the rest takes its default)."""
        if isinstance(man.get("settings"), dict):
            return cls.from_json(man["settings"])
        return cls(recipe=man["recipe"], prefill=tuple(man.get("prefill", (8,))), kv=man.get("kv"),
                   path=man.get("path", "reauthored"),
                   kv_layout=man.get("kv_layout") if man.get("path", "reauthored") == "reauthored" else None)


__all__ = ["ConvertSettings", "ConversionError", "default_kv", "PATHS", "KV_LAYOUTS", "DEFAULT_KV_LAYOUT"]
