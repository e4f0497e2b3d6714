"""Session fixtures of the overlay tests (#14), shared by test_overlays and
test_browser_explore: a quantized copy of the explored project, and a comparison with a
planted fault."""

from __future__ import annotations

import pytest

from conftest import copy_project

MIXED = {"default": "dynamic_int8", "feedforward": "dynamic_int4_block32"}
_MADE: dict = {}


@pytest.fixture(scope="session")
def quantized(explored, tmp_path_factory):
    """A copy of the explored project with a mixed int8/int4 conversion (its per-op error
    measured), and an Explorer on it: graphs come from the copied cache."""
    if "quantized" not in _MADE:
        from workbench.explore import Explorer
        from workbench.project import Workbench

        root, _, _ = explored
        copy = copy_project(root, tmp_path_factory.mktemp("overlays"), "quantized")
        wb = Workbench.open(copy)
        res = wb.convert(name="mixed", recipe=MIXED, prefill=[8], kv=32).result()
        wb.close()
        ex = Explorer(copy)
        _MADE["quantized"] = (copy, ex, ex.export(), res)
    return _MADE["quantized"]


@pytest.fixture(scope="session")
def faulty(explored):
    """A comparison of the project's model with layer 1's o_proj transposed (as the compare
    tests plant it): it first diverges at transformer_blocks.1.attention."""
    if "faulty" not in _MADE:
        from workbench.compare import compare
        from workbench.project import Workbench

        root, _, _ = explored
        wb = Workbench.open(root, readonly=True)
        m = wb.mapping
        model = m.load(kv_cache_length=64)
        w = model.transformer_blocks[1].atten_func.output_projection.weight
        w.data = w.data.T.contiguous()  # square (64 x 64): loads without a shape error
        c = compare(wb.checkpoint_path(), model, m, prompts=["Once upon a time there was a robot"], tol=1e-4,
                    max_new_tokens=2)
        d = c.first_divergence()
        assert (d.layer, d.point) == (1, "attention")
        _MADE["faulty"] = c
    return _MADE["faulty"]
