"""Edge Workbench core: re-author LLMs with litert-torch, step by step.

Nothing here imports ipywidgets or IPython; heavy libraries (torch, litert_torch,
tensorflow) load only when a step needs them, so `import workbench` stays fast. The
names below load on first use: `from workbench import layers` (what an emitted model
imports) loads that module alone.
"""

__all__ = ["Blueprint", "LayerSpec", "Problem", "Summary", "BlueprintError", "WorkbenchError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("Blueprint", "LayerSpec", "Problem", "Summary"):
        from workbench import blueprint

        return getattr(blueprint, name)
    if name in ("BlueprintError", "WorkbenchError"):
        from workbench import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
