"""Edge Workbench panels: thin ipywidgets views over the `workbench` core.

Imported as `workbench_widgets` (this folder is mapped to that name in
pyproject.toml) so it never shadows another package called `widgets`.
"""

from workbench_widgets.builder import BuilderPanel
from workbench_widgets.compare import ComparePanel
from workbench_widgets.convert import ConvertPanel
from workbench_widgets.explore import ExplorePanel
from workbench_widgets.mapping import MappingPanel
from workbench_widgets.run import RunPanel
from workbench_widgets.sweep import SweepPanel
from workbench_widgets.app import App, register_display  # noqa: E402 - uses the panels above

register_display()  # a displayed Workbench is the app

__all__ = ["BuilderPanel", "ComparePanel", "ConvertPanel", "ExplorePanel", "MappingPanel", "RunPanel", "SweepPanel", "App"]
