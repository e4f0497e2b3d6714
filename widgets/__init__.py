"""Edge Workbench panels: thin ipywidgets views over the `workbench` core.

Imported as `workbench_widgets` (this folder is mapped to that name in
pyproject.toml) so it never shadows another package called `widgets`.
"""

from workbench_widgets.builder import BuilderPanel

__all__ = ["BuilderPanel"]
