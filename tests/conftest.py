"""Shared fixtures: the shipped samples and their transformers twins, loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = {name: ROOT / "sample_models" / f"{name}-tiny" for name in ("llama", "qwen2", "gemma")}


@pytest.fixture(scope="session")
def samples() -> dict[str, Path]:
    return SAMPLES


@pytest.fixture(scope="session")
def hf_models():
    """transformers' own model of each sample, in fp32 eval mode (loaded on first use)."""
    from workbench._quiet import import_stack

    import_stack()
    from transformers import AutoModelForCausalLM

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = AutoModelForCausalLM.from_pretrained(SAMPLES[name], dtype="float32").eval()
        return cache[name]

    return get


def make_hf_checkpoint(tmp: Path, config, seed: int = 0) -> Path:
    """Saves a tiny random transformers model (every parameter perturbed) to `tmp`."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp)
    return tmp


@pytest.fixture(scope="session")
def llama_project(samples, tmp_path_factory):
    """A project with every step done once: blueprint, saved mapping, a comparison and a
    conversion (made through the CLI's --project, so that path is covered too)."""
    from workbench import cli
    from workbench.project import Workbench

    root = tmp_path_factory.mktemp("projects") / "llama-project"
    wb = Workbench.new(root, from_hf=samples["llama"], copy_checkpoint=True)
    wb.save_mapping()
    wb.compare("first", max_new_tokens=2)
    wb.close()
    assert cli.main(["convert", "--project", str(root), "--recipe", "none", "--prefill", "8", "--kv", "32",
                     "--name", "fp32", "--json"]) == 0
    return root


def copy_project(project: Path, tmp_path: Path, name: str = "copy") -> Path:
    """A copy of a project to break or edit (without the holder's lock file)."""
    import shutil

    dst = tmp_path / name
    shutil.copytree(project, dst, ignore=shutil.ignore_patterns(".workbench.lock"))
    return dst


SWEEP_RECIPES = "none,dynamic_int8,fp16,int8_ff_int4,int8_edges_fp16@export_hf"


@pytest.fixture(scope="session")
def swept(llama_project, tmp_path_factory):
    """A copy of the llama project swept through the CLI (4 recipes, and one export_hf row
    litert-torch refuses), with its --json output."""
    import contextlib
    import io
    import json

    from workbench import cli

    root = copy_project(llama_project, tmp_path_factory.mktemp("sweep"), "swept")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.main(["sweep", "--project", str(root), "--recipes", SWEEP_RECIPES, "--prefill", "8", "--kv", "32",
                         "--json"])
    assert code == 0, buf.getvalue()
    return root, json.loads(buf.getvalue())


# ---- Model Explorer (#13, #14): one export per session, shared by every module that asks ----
QUANTIZED_RECIPE = {"default": "dynamic_int8", "feedforward": "dynamic_int4_block32"}


@pytest.fixture(scope="session")
def explored(llama_project, tmp_path_factory):
    """A copy of the session project whose three graphs are exported once, and an Explorer
    on it (this process's Model Explorer server)."""
    from workbench.explore import Explorer

    root = copy_project(llama_project, tmp_path_factory.mktemp("explore"), "project")
    ex = Explorer(root)
    return root, ex, ex.export()


@pytest.fixture(scope="session")
def quantized(explored, tmp_path_factory):
    """A copy of the explored project with a mixed int8/int4 conversion (its per-op error
    measured), and an Explorer on it: graphs come from the copied cache."""
    from workbench.explore import Explorer
    from workbench.project import Workbench

    root, _, _ = explored
    copy = copy_project(root, tmp_path_factory.mktemp("overlays"), "quantized")
    wb = Workbench.open(copy)
    res = wb.convert(name="mixed", recipe=QUANTIZED_RECIPE, prefill=[8], kv=32).result()
    wb.close()
    ex = Explorer(copy)
    return copy, ex, ex.export(), res


@pytest.fixture(scope="session")
def faulty(explored):
    """A comparison of the project's model with layer 1's o_proj transposed (as the compare
    tests plant it): it first diverges at transformer_blocks.1.attention."""
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
    return c
