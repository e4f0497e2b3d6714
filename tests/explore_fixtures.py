"""The explore tests' shared fixture (imported by test_explore and test_explore_panel)."""

from __future__ import annotations

import pytest

from conftest import copy_project

_MADE: dict = {}  # one export per session, whichever module asks first


@pytest.fixture(scope="session")
def explored(llama_project, tmp_path_factory):
    """A copy of the session project whose three graphs are exported once, and an Explorer
    on it (this process's Model Explorer server)."""
    if "explored" not in _MADE:
        from workbench.explore import Explorer

        root = copy_project(llama_project, tmp_path_factory.mktemp("explore"), "project")
        ex = Explorer(root)
        _MADE["explored"] = (root, ex, ex.export())
    return _MADE["explored"]
