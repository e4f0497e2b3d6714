"""Model Explorer inline: the graphs of a model's three forms side by side, served safely.

- `explorer`: `Explorer` (export the graphs, show them in a cell, overlays, sync mappings),
  `ExploreServer` and the view's HTML;
- `server`: our Model Explorer server process and its guard (`python -m workbench.explore.server`);
- `graphs`: the original and re-authored graphs as `.pt2`, exported in a child process and
  cached by content (`python -m workbench.explore.graphs`);
- `overlays`: node-data files (per-layer error, quantization, sizes) and sync mappings.
"""

__all__ = ["Explorer", "ExploreError", "ExploreServer", "ExploreView", "LAYOUTS", "OVERLAYS", "shared_server"]


def __getattr__(name: str):
    # Lazy, so `python -m workbench.explore.server` (or .graphs, .overlays) runs its module
    # once, without the package importing it first.
    if name in __all__:
        from workbench.explore import explorer

        return getattr(explorer, name)
    raise AttributeError(f"module 'workbench.explore' has no attribute {name!r}")
