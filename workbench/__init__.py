"""Edge Workbench core: re-author LLMs with litert-torch, step by step.

Nothing here imports ipywidgets or IPython; heavy libraries (torch, litert_torch,
tensorflow) load only when a step needs them, so `import workbench` stays fast.
"""

from workbench.blueprint import Blueprint, LayerSpec, Problem, Summary
from workbench.errors import BlueprintError, WorkbenchError

__all__ = ["Blueprint", "LayerSpec", "Problem", "Summary", "BlueprintError", "WorkbenchError"]
__version__ = "0.1.0"
