"""Projects: save and reopen exactly (in a fresh process, nothing recomputed), staleness,
moving, migration of loose files, the lock, and the CLI's --project."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import copy_project as _copy
from workbench import cli
from workbench.project import ProjectError, Workbench


def test_every_step_is_fresh_and_the_folder_is_for_git(llama_project):
    with Workbench.open(llama_project, readonly=True) as wb:
        assert wb.status() == {"blueprint": "fresh", "mapping": "fresh", "comparisons": "fresh",
                               "conversions": "fresh", "paths": "missing", "sweeps": "missing"}
    names = sorted(p.relative_to(llama_project).as_posix() for p in llama_project.rglob("*") if p.is_file()
                   and "checkpoint/" not in p.relative_to(llama_project).as_posix())
    assert names == [".gitignore", ".workbench.lock", "blueprint.json", "comparisons/first.json",
                     "conversions/fp32.json", "conversions/fp32.tflite", "mapping.json", "model.py", "workbench.json"]
    assert ".workbench.lock" in (llama_project / ".gitignore").read_text()
    text = "".join((llama_project / f).read_text() for f in ("workbench.json", "mapping.json"))
    assert str(llama_project) not in text.replace(str(llama_project) + "/checkpoint", "")  # no absolute project paths but
    assert json.loads((llama_project / "mapping.json").read_text())["checkpoint"] == "checkpoint"  # the fallback


def test_reopen_in_a_fresh_process_restores_everything_without_recomputing(llama_project, tmp_path):
    """Compare and convert are made to explode in the child: reopening must not need them."""
    code = textwrap.dedent(f"""
        import json, sys
        import workbench.compare, workbench.convert
        def boom(*a, **k):
            raise SystemExit("recomputed!")
        workbench.compare.compare = workbench.convert.convert = boom
        from workbench.project import Workbench
        wb = Workbench.open({str(llama_project)!r}, readonly=True)
        c = wb.comparison("first")
        print(json.dumps({{"status": wb.status(), "verdict": c.verdict(), "bp": wb.blueprint.to_json(),
                          "names": wb.mapping.tensor_names, "size": wb.conversions["fp32"]["size_bytes"],
                          "records": len(c.records), "figures": len(c.figures())}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    with Workbench.open(llama_project, readonly=True) as wb:
        assert got["status"] == wb.status()
        assert got["verdict"] == wb.comparison("first").verdict()
        assert got["bp"] == wb.blueprint.to_json()
        assert got["names"] == wb.mapping.tensor_names
        assert got["size"] == (llama_project / "conversions" / "fp32.tflite").stat().st_size
        assert got["records"] == len(wb.comparison("first").records) and got["figures"] == 2


def test_emitted_python_in_the_project_reproduces_the_model(llama_project):
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM

    from workbench import layers

    spec = importlib.util.spec_from_file_location("project_model", llama_project / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.build_model(str(llama_project / "checkpoint"), mask_cache_size=8)
    tokens = [1, 5, 9, 13, 17, 21]
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(llama_project / "checkpoint").eval()(torch.tensor([tokens])).logits
    assert (ref - layers.logits(model, tokens, 8)).abs().max().item() <= 1e-5


def test_a_moved_project_opens(llama_project, tmp_path):
    moved = _copy(llama_project, tmp_path, "elsewhere")
    shutil.move(str(moved), str(tmp_path / "renamed"))
    with Workbench.open(tmp_path / "renamed") as wb:
        assert wb.checkpoint_path().resolve() == (tmp_path / "renamed" / "checkpoint").resolve()
        assert set(wb.status().values()) == {"fresh", "missing"} and wb.status()["paths"] == "missing"


def test_upstream_edits_mark_downstream_stale_and_nothing_uses_it_silently(llama_project, tmp_path):
    root = _copy(llama_project, tmp_path)
    wb = Workbench.open(root)
    wb.blueprint.set("kv_cache_length", 64)
    wb.save_blueprint()
    s = wb.status(detail=True)
    assert s["steps"] == {"blueprint": "fresh", "mapping": "stale", "comparisons": "stale", "conversions": "stale",
                          "paths": "missing", "sweeps": "missing"}
    assert s["why"]["mapping"] == "made for another blueprint"
    with pytest.raises(ProjectError, match="mapping is stale"):
        wb.compare()
    with pytest.raises(ProjectError, match="mapping is stale"):
        wb.convert(recipe="none", prefill=[8], kv=32)
    with pytest.raises(ProjectError, match="conversion fp32 is stale"):
        wb.conversion_path("fp32")
    assert wb.conversion_path("fp32", allow_stale=True).is_file()
    wb.save_mapping()  # reviewed against the new blueprint
    assert wb.status() == {"blueprint": "fresh", "mapping": "fresh", "comparisons": "stale", "conversions": "stale",
                          "paths": "missing", "sweeps": "missing"}
    # a mapping edit is upstream of results too
    wb.blueprint.set("kv_cache_length", 32)
    wb.save_blueprint()
    wb.save_mapping()
    wb.compare("again", max_new_tokens=1)
    assert wb.status(detail=True)["comparisons"]["again"] == "fresh"
    wb.mapping.set("transformer_blocks.0.ff.w3.weight", "model.layers.0.mlp.up_proj.weight")
    wb.save_mapping()
    assert wb.status(detail=True)["comparisons"]["again"] == "stale"
    wb.close()


def test_rerun_makes_stale_steps_again_with_their_recorded_settings(llama_project, tmp_path, capsys):
    """What the app's Re-run buttons do, as a call and a CLI command: the newest result's own
    settings, on the blueprint and mapping as they are now, under the same name."""
    root = _copy(llama_project, tmp_path)
    wb = Workbench.open(root)
    before = wb.conversions["fp32"]
    with pytest.raises(ProjectError, match="no paths to re-run"):
        wb.rerun("paths")
    with pytest.raises(ProjectError, match="'blueprint' is not a step that can be re-run"):
        wb.rerun("blueprint")
    wb.blueprint.set("kv_cache_length", 64)
    wb.save_blueprint()
    assert wb.status()["mapping"] == "stale" and wb.newest("comparisons") == "first"
    assert wb.rerun("mapping") is None and wb.status()["mapping"] == "fresh"
    kw = wb.rerun_settings("comparisons")
    assert kw == {"name": "first", "prompts": wb.comparisons["first"]["result"]["prompts"],
                  "tol": wb.comparisons["first"]["result"]["tol"], "max_new_tokens": 2, "tflite": None}
    c = wb.rerun("comparisons")
    assert c.passed and wb.status(detail=True)["comparisons"] == {"first": "fresh"}
    settings = wb.rerun_settings("conversions")["settings"]
    assert (settings.recipe_label, settings.prefill, settings.kv) == ("none", (8,), 32)
    wb.close()
    # the CLI form: the conversion made again under its name, from the new blueprint
    assert cli.main(["rerun", "conversions", "--project", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["path"].endswith("fp32.tflite") and out["check"]["top1_agreement"] == 1.0
    wb = Workbench.open(root, readonly=True)
    after = wb.conversions["fp32"]
    assert after["inputs"]["blueprint"] == wb.blueprint.fingerprint() != before["inputs"]["blueprint"]
    assert after["settings"] == before["settings"] and wb.status()["conversions"] == "fresh"
    assert wb.newest("conversions") == wb.latest_conversion() == "fp32"
    wb.close()
    assert cli.main(["rerun", "sweeps", "--project", str(root)]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert "no sweeps to re-run" in err and "edge-workbench sweep --project" in err


def test_a_changed_checkpoint_marks_the_mapping_stale(llama_project, tmp_path):
    from safetensors.torch import load_file, save_file

    root = _copy(llama_project, tmp_path)
    f = root / "checkpoint" / "model.safetensors"
    state = load_file(f)
    name = sorted(state)[0]
    state[name] = state[name] * 2
    save_file(state, f, metadata={"format": "pt"})
    with Workbench.open(root, readonly=True) as wb:
        s = wb.status(detail=True)
        assert s["steps"]["mapping"] == "stale" and "checkpoint" in s["why"]["mapping"]
        assert s["steps"]["conversions"] == "stale"


def _hold(root, seconds=60):
    code = (f"import time; from workbench.project import Workbench; wb = Workbench.open({str(root)!r}); "
            f"print('held', flush=True); time.sleep({seconds})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_kernel_gets_the_project_read_only(llama_project, tmp_path):
    root = _copy(llama_project, tmp_path)
    holder = _hold(root)
    try:
        wb = Workbench.open(root)
        assert wb.readonly and f"pid {holder.pid}" in wb.notice
        assert wb.status()["mapping"] == "fresh"  # reading works
        before = (root / "blueprint.json").read_bytes()
        with pytest.raises(ProjectError, match="read-only") as e:
            wb.save_blueprint()
        assert f"pid {holder.pid}" in e.value.message
        assert (root / "blueprint.json").read_bytes() == before
        with pytest.raises(ProjectError, match=f"pid {holder.pid}"):
            Workbench.open(root, readonly=False)
        assert cli.main(["compare", "--project", str(root), "--json"]) == cli.EXIT_ERROR
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops a dead holder's lock: no stale-lock cleanup needed
    with Workbench.open(root) as wb:
        assert not wb.readonly


def test_loose_files_from_before_projects_are_migrated(samples, tmp_path):
    """Schema 0: what Edge Workbench saved before projects — mapping.json from
    Mapping.save and conversions in out/ — opens as a project."""
    from workbench import Blueprint
    from workbench.mapping import Mapping

    root = tmp_path / "old"
    root.mkdir()
    Mapping.propose(Blueprint.from_hf(samples["gemma"]), samples["gemma"]).save(root / "mapping.json")
    wb = Workbench.open(root)
    assert json.loads((root / "workbench.json").read_text())["migrated_from"] == 0
    assert wb.status()["blueprint"] == "fresh" and wb.status()["mapping"] == "fresh"
    assert wb.blueprint.family == "gemma"
    wb.close()
    with Workbench.open(root) as again:  # now a schema-1 project
        assert again.status()["mapping"] == "fresh"


def test_cli_new_status_and_project_steps(samples, tmp_path, capsys):
    root = tmp_path / "cli-project"
    assert cli.main(["new", str(root), "--from", str(samples["qwen2"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"]["mapping"] == "missing"
    assert cli.main(["blueprint", "--project", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["family"] == "qwen2"
    assert cli.main(["map", "--project", str(root), "--json"]) == 0  # reviewed, not recorded
    assert json.loads(capsys.readouterr().out)["saved"] is False
    assert cli.main(["map", "--project", str(root), "--save", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["saved"] is True
    assert cli.main(["compare", "--project", str(root), "--name", "c1", "--max-new", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True
    assert cli.main(["status", "--project", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == {"blueprint": "fresh", "mapping": "fresh", "comparisons": "fresh", "conversions": "missing",
                            "paths": "missing", "sweeps": "missing"}
    assert out["comparisons"] == {"c1": "fresh"}
    assert cli.main(["compare", str(samples["qwen2"]), "--project", str(root), "--json"]) == cli.EXIT_ERROR
    assert "not both" in json.loads(capsys.readouterr().out)["error"]


def test_panels_on_a_project_record_their_results_and_refuse_stale_inputs(llama_project, tmp_path):
    from workbench_widgets import ComparePanel, ConvertPanel

    root = _copy(llama_project, tmp_path)
    with Workbench.open(root) as wb:
        cp = ComparePanel.for_project(wb)
        cp.max_new.value = 1
        assert cp.run() is not None and cp.passed
        assert len(wb.comparisons) == 2 and wb.status()["comparisons"] == "fresh"
        panel = ConvertPanel.for_project(wb)
        assert panel.out.disabled and panel.out.value == str(root / "conversions")
        panel.recipe.value, panel.kv.value = "dynamic_int8", 32
        panel.convert()
        res = panel.wait(300)
        assert res is not None and res.path.parent == root / "conversions"
        assert wb.status(detail=True)["conversions"][res.path.stem] == "fresh"
        wb.blueprint.set("kv_cache_length", 64)
        wb.save_blueprint()
        assert panel.convert() is None and "stale" in panel.card.value
        assert cp.run() is None and "stale" in cp.verdict_html.value


def test_builder_and_mapping_panels_on_a_project(llama_project, tmp_path):
    from workbench_widgets import BuilderPanel, MappingPanel

    root = _copy(llama_project, tmp_path)
    with Workbench.open(root) as wb:
        builder = BuilderPanel.for_project(wb)
        builder.debounce_s = 0
        builder.set("kv_cache_length", 16)
        builder.save_button.click()
        assert json.loads((root / "blueprint.json").read_text())["model"]["kv_cache_length"] == 16
        assert "Stale now: mapping" in builder.message.value and wb.status()["mapping"] == "stale"
        mp = MappingPanel.for_project(wb)
        assert mp.save_path.disabled
        mp.save_button.click()
        assert "Saved to the project" in mp.message.value and wb.status()["mapping"] == "fresh"
        assert wb.status()["comparisons"] == "stale"  # computed from the older blueprint
