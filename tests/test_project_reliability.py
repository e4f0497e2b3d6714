"""Bad inputs a user can give a project: each gets a clear message, keeps the process alive
and loses no saved work (the tests read the files back).

BAD_INPUTS is the list; every entry has a test named test_bad_<id> below (a test checks
that the two agree). Inputs named in the other issues (a mapping with problems, prefill
longer than kv, an unknown recipe, ...) are here as they reach a project.
"""

from __future__ import annotations

import errno
import json
import os
import sys

import pytest

from tests.conftest import copy_project
from workbench.errors import WorkbenchError
from workbench.project import ProjectError, Workbench

BAD_INPUTS = {
    "corrupt_project_file": "workbench.json cut short (invalid JSON)",
    "project_file_not_an_object": "workbench.json holds a list",
    "project_file_of_another_kind": "workbench.json is some other tool's file",
    "newer_schema": "a project written by a newer Edge Workbench",
    "no_schema": "workbench.json without a schema version",
    "not_a_project": "a folder that is not a project",
    "missing_folder": "a project path that does not exist",
    "new_into_non_empty_folder": "Workbench.new into a folder holding other files",
    "new_over_a_project": "Workbench.new over an existing project",
    "new_from_missing_model": "Workbench.new from a model folder that does not exist",
    "new_from_folder_without_config": "Workbench.new from a folder without config.json",
    "corrupt_blueprint": "blueprint.json corrupt",
    "corrupt_mapping": "mapping.json corrupt",
    "corrupt_comparison": "one comparison's JSON corrupt",
    "corrupt_manifest": "one conversion's manifest corrupt",
    "missing_artefact": "a converted .tflite deleted",
    "half_written_artefact": "a converted .tflite cut short",
    "leftovers_of_a_killed_process": "temporary and partial files a killed process left",
    "moved_without_its_checkpoint": "a project moved to another folder while its checkpoint stayed behind",
    "read_only_folder": "a read-only project folder",
    "disk_full_while_saving": "the disk fills while a step is saved",
    "disk_full_while_converting": "the disk fills while a conversion is written",
    "locked_by_another_process": "a second kernel opens a project the first one holds",
    "opened_twice_in_one_process": "a notebook cell that opens the project is run again",
    "stale_conversion_used": "a conversion made before a blueprint edit used for a comparison",
    "compare_without_saved_mapping": "compare before the mapping was reviewed and saved",
    "blueprint_with_problems": "a blueprint edited into an impossible architecture",
    "mapping_with_problems": "a mapping with a wrong pattern saved and converted",
    "prefill_longer_than_kv": "a conversion whose prefill is longer than its KV cache",
    "unknown_recipe": "a recipe name litert-torch does not have",
    "recipe_for_missing_layer": "a per-layer recipe naming a layer the model lacks",
    "bad_result_name": "a result name that is a path",
    "unknown_conversion": "a conversion name that does not exist",
    "checkpoint_changed": "the checkpoint's weights changed after the mapping was saved",
}


def test_every_bad_input_has_its_test():
    tests = {n[len("test_bad_"):] for n in globals() if n.startswith("test_bad_")}
    assert tests == set(BAD_INPUTS) and len(BAD_INPUTS) >= 25


@pytest.fixture
def proj(llama_project, tmp_path):
    return copy_project(llama_project, tmp_path)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".workbench.lock"}


def _rewrite(path, text):
    path.write_text(text)
    return path.read_bytes()


# ---- the project file ---------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    ('{"kind": "edge-workbench/proj', "not valid JSON"),
])
def test_bad_corrupt_project_file(proj, content, message):
    before = _rewrite(proj / "workbench.json", content)
    with pytest.raises(ProjectError, match=message) as e:
        Workbench.open(proj)
    assert "git" in e.value.hint and (proj / "workbench.json").read_bytes() == before


def test_bad_project_file_not_an_object(proj):
    _rewrite(proj / "workbench.json", "[1, 2]")
    with pytest.raises(ProjectError, match="holds a list"):
        Workbench.open(proj)


def test_bad_project_file_of_another_kind(proj):
    _rewrite(proj / "workbench.json", '{"kind": "something-else", "schema": 1}')
    with pytest.raises(ProjectError, match="not an Edge Workbench project file"):
        Workbench.open(proj)


def test_bad_newer_schema(proj):
    data = json.loads((proj / "workbench.json").read_text())
    before = _rewrite(proj / "workbench.json", json.dumps({**data, "schema": 99}))
    files = _files(proj)
    with pytest.raises(ProjectError, match="newer Edge Workbench") as e:
        Workbench.open(proj)
    assert "nothing was changed" in e.value.hint and _files(proj) == files
    assert (proj / "workbench.json").read_bytes() == before


def test_bad_no_schema(proj):
    data = json.loads((proj / "workbench.json").read_text())
    data.pop("schema")
    _rewrite(proj / "workbench.json", json.dumps(data))
    with pytest.raises(ProjectError, match="no schema version"):
        Workbench.open(proj)


def test_bad_not_a_project(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ProjectError, match="not an Edge Workbench project") as e:
        Workbench.open(tmp_path)
    assert "Workbench.new" in e.value.hint and (tmp_path / "notes.txt").read_text() == "hello"


def test_bad_missing_folder(tmp_path):
    with pytest.raises(ProjectError, match="no project folder"):
        Workbench.open(tmp_path / "nope")


# ---- creating ---------------------------------------------------------------------
def test_bad_new_into_non_empty_folder(samples, tmp_path):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(ProjectError, match="not empty"):
        Workbench.new(tmp_path, from_hf=samples["llama"])
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


def test_bad_new_over_a_project(proj, samples):
    files = _files(proj)
    with pytest.raises(ProjectError, match="already a project") as e:
        Workbench.new(proj, from_hf=samples["qwen2"])
    assert "Workbench.open" in e.value.hint and _files(proj) == files


def test_bad_new_from_missing_model(tmp_path):
    with pytest.raises(WorkbenchError, match="does not exist"):
        Workbench.new(tmp_path / "p", from_hf=tmp_path / "no-model")
    assert not (tmp_path / "p").exists()


def test_bad_new_from_folder_without_config(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(WorkbenchError, match="no config.json"):
        Workbench.new(tmp_path / "p", from_hf=tmp_path / "m")
    assert not (tmp_path / "p").exists()


# ---- step files -------------------------------------------------------------------
def test_bad_corrupt_blueprint(proj):
    _rewrite(proj / "blueprint.json", "{not json")
    with Workbench.open(proj) as wb:
        assert any("blueprint.json" in p and "not valid JSON" in p for p in wb.problems)
        assert wb.status()["blueprint"] == "missing"
        assert wb.comparison("first").passed  # the other steps still read
        with pytest.raises(ProjectError, match="no usable blueprint") as e:
            wb.save_mapping()
        assert "git" in e.value.hint
    assert (proj / "blueprint.json").read_text() == "{not json"  # nothing overwritten


def test_bad_corrupt_mapping(proj):
    _rewrite(proj / "mapping.json", '{"kind": "edge-workbench/mapping", "schema": 1, "blue')
    with Workbench.open(proj) as wb:
        assert any(p.startswith("mapping.json") for p in wb.problems)
        assert wb.status()["mapping"] == "missing"
        assert wb.mapping.problems() == []  # the proposal stands in, and can be saved again
        wb.save_mapping()
        assert wb.status()["mapping"] == "fresh"


def test_bad_corrupt_comparison(proj):
    (proj / "comparisons" / "broken.json").write_text("{")
    with Workbench.open(proj) as wb:
        assert set(wb.comparisons) == {"first"}
        assert any("comparisons/broken.json" in p for p in wb.problems)
        assert "problems" in wb.status(detail=True) and wb.status()["comparisons"] == "fresh"


def test_bad_corrupt_manifest(proj):
    before = (proj / "conversions" / "fp32.tflite").read_bytes()
    _rewrite(proj / "conversions" / "fp32.json", "{")
    with Workbench.open(proj) as wb:
        assert wb.conversions == {} and any("conversions/fp32.json" in p for p in wb.problems)
        assert wb.status()["conversions"] == "missing"
    assert (proj / "conversions" / "fp32.tflite").read_bytes() == before


# ---- artefacts ----------------------------------------------------------------------
def test_bad_missing_artefact(proj):
    (proj / "conversions" / "fp32.tflite").unlink()
    with Workbench.open(proj) as wb:
        s = wb.status(detail=True)
        assert s["conversions"]["fp32"] == "missing" and "fp32.tflite is missing" in s["why"]["conversions/fp32"]
        with pytest.raises(ProjectError, match="missing") as e:
            wb.conversion_path("fp32")
        assert "convert again" in e.value.hint


def test_bad_half_written_artefact(proj):
    f = proj / "conversions" / "fp32.tflite"
    f.write_bytes(f.read_bytes()[:1000])
    with Workbench.open(proj) as wb:
        s = wb.status(detail=True)
        assert s["conversions"]["fp32"] == "missing" and "half-written" in s["why"]["conversions/fp32"]
        with pytest.raises(ProjectError, match="half-written"):
            wb.compare(tflite="fp32")


def test_bad_leftovers_of_a_killed_process(proj):
    (proj / "conversions" / ".fp32.tflite.partial-1a2b3c4d").write_bytes(b"\0" * 100)
    (proj / ".blueprint.json.tmp-deadbeef").write_text('{"half": ')
    with Workbench.open(proj) as wb:
        assert set(wb.conversions) == {"fp32"} and wb.status()["blueprint"] == "fresh"
        assert sorted(wb.status(detail=True)["leftovers"]) == [".blueprint.json.tmp-deadbeef",
                                                               "conversions/.fp32.tflite.partial-1a2b3c4d"]
        assert sorted(wb.clean_leftovers()) == [".blueprint.json.tmp-deadbeef", ".fp32.tflite.partial-1a2b3c4d"]
        assert wb.leftovers() == []


def test_bad_moved_without_its_checkpoint(samples, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(samples["qwen2"], model)
    wb = Workbench.new(tmp_path / "p", from_hf=model)
    wb.save_mapping()
    wb.close()
    shutil.move(str(tmp_path / "p"), str(tmp_path / "moved"))
    shutil.move(str(model), str(tmp_path / "model-elsewhere"))
    with Workbench.open(tmp_path / "moved") as wb:
        with pytest.raises(ProjectError, match="checkpoint is not at") as e:
            wb.checkpoint_path()
        assert "set_checkpoint" in e.value.hint
        assert wb.status()["mapping"] == "stale" and wb.blueprint.family == "qwen2"
        wb.set_checkpoint(tmp_path / "model-elsewhere")
        assert wb.status()["mapping"] == "fresh"


@pytest.fixture
def read_only_fs(monkeypatch):
    """A read-only file system under one folder. chmod would do, but root (CI) ignores
    file modes, so every way our code writes fails as on a read-only mount (EROFS)."""
    import builtins

    roots: list[str] = []

    def blocked(path) -> bool:
        return any(os.path.abspath(os.fspath(path)).startswith(r) for r in roots)

    def deny(path):
        raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))

    real_open, real_os_open, real_replace = builtins.open, os.open, os.replace

    def fake_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and isinstance(file, (str, os.PathLike)) and blocked(file):
            deny(file)
        return real_open(file, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and blocked(path):
            deny(path)
        return real_os_open(path, flags, *a, **k)

    def fake_replace(src, dst, *a, **k):
        if blocked(dst):
            deny(dst)
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "replace", fake_replace)
    return lambda root: roots.append(os.path.abspath(root))


def test_bad_read_only_folder(proj, read_only_fs):
    files = _files(proj)
    read_only_fs(proj)
    wb = Workbench.open(proj)
    assert wb.readonly and "not writable" in wb.notice
    assert wb.status()["comparisons"] == "fresh" and wb.comparison("first").passed
    wb.blueprint.set("kv_cache_length", 64)
    with pytest.raises(ProjectError, match="read-only"):
        wb.save_blueprint()
    with pytest.raises(ProjectError, match="read-only"):
        wb.compare()
    assert _files(proj) == files


def test_bad_disk_full_while_saving(proj, monkeypatch):
    from workbench import _io

    before = (proj / "blueprint.json").read_bytes()

    def half_then_full(f, data):
        f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    wb = Workbench.open(proj)
    wb.blueprint.set("kv_cache_length", 64)
    monkeypatch.setattr(_io, "_write_all", half_then_full)
    with pytest.raises(ProjectError, match="disk is full") as e:
        wb.save_blueprint()
    assert "previous version is intact" in e.value.message
    assert (proj / "blueprint.json").read_bytes() == before
    assert not list(proj.glob(".*.tmp-*"))
    monkeypatch.undo()
    wb.save_blueprint()  # space freed: the same call works, the edit was not lost
    assert json.loads((proj / "blueprint.json").read_text())["model"]["kv_cache_length"] == 64
    wb.close()


def test_bad_disk_full_while_converting(proj, monkeypatch):
    from workbench.convert import ConversionError

    monkeypatch.setenv("EWB_TEST_DISK_FULL", "1")
    files = _files(proj)
    with Workbench.open(proj) as wb:
        with pytest.raises(ConversionError, match="disk is full") as e:
            wb.convert("full", recipe="none", prefill=[8], kv=32, check_steps=0).result()
        assert "free space" in e.value.hint
        assert set(wb.conversions) == {"fp32"} and wb.leftovers() == []
    assert _files(proj) == files


def test_bad_locked_by_another_process(proj):
    import subprocess

    code = (f"import time; from workbench.project import Workbench; wb = Workbench.open({str(proj)!r}); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        wb = Workbench.open(proj)
        assert wb.readonly and f"pid {holder.pid}" in wb.notice
        with pytest.raises(ProjectError, match=f"pid {holder.pid}"):
            wb.save_mapping()
    finally:
        holder.kill()
        holder.wait()


def test_bad_opened_twice_in_one_process(proj):
    first = Workbench.open(proj)
    second = Workbench.open(proj)
    assert not second.readonly and first.readonly and "opened again" in first.notice
    with pytest.raises(ProjectError, match="opened again"):
        first.save_blueprint()
    second.save_blueprint()
    second.close()
    with Workbench.open(proj) as third:
        assert not third.readonly


# ---- using results ------------------------------------------------------------------
def test_bad_stale_conversion_used(proj):
    with Workbench.open(proj) as wb:
        wb.blueprint.set("kv_cache_length", 64)
        wb.save_blueprint()
        wb.save_mapping()
        with pytest.raises(ProjectError, match="conversion fp32 is stale") as e:
            wb.compare(tflite="fp32")
        assert "allow_stale" in e.value.hint


def test_bad_compare_without_saved_mapping(samples, tmp_path):
    with Workbench.new(tmp_path / "p", from_hf=samples["llama"]) as wb:
        with pytest.raises(ProjectError, match="no saved mapping") as e:
            wb.compare()
        assert "save_mapping" in e.value.hint and wb.comparisons == {}


def test_bad_blueprint_with_problems(proj):
    with Workbench.open(proj) as wb:
        wb.blueprint.set("num_kv_heads", 3)  # 4 heads: not a multiple
        wb.save_blueprint()  # work in progress is saved ...
        assert json.loads((proj / "blueprint.json").read_text())["layer"]["num_kv_heads"] == 3
        assert wb.status()["mapping"] == "stale"
        with pytest.raises(WorkbenchError, match="num_kv_heads"):  # ... and nothing is built from it
            wb.save_mapping()
    with Workbench.open(proj) as wb:
        assert wb.blueprint.layer.num_kv_heads == 3 and wb.comparison("first").passed


def test_bad_mapping_with_problems(proj, capsys):
    from workbench import cli
    from workbench.convert import ConversionError

    with Workbench.open(proj) as wb:
        wb.mapping.set("ff_up_proj", "model.layers.{}.mlp.nope")
        with pytest.raises(ConversionError, match="mapping has problems"):
            wb.convert(allow_stale=True, recipe="none", prefill=[8], kv=32)
        before = (proj / "mapping.json").read_bytes()
    # the CLI refuses to record a mapping with problems
    (proj / "mapping.json").unlink()
    bad = proj / "bad-mapping.json"
    data = json.loads(before)
    data["tensor_names"]["ff_up_proj"] = "model.layers.{}.mlp.nope"
    bad.write_text(json.dumps(data))
    assert cli.main(["map", "--project", str(proj), "--mapping", str(bad), "--save", "--json"]) == cli.EXIT_PROBLEMS
    out = json.loads(capsys.readouterr().out)
    assert out["saved"] is False and any("ff_up_proj" in p for p in out["problems"])
    assert not (proj / "mapping.json").exists()


def test_bad_prefill_longer_than_kv(proj):
    from workbench.convert import ConversionError

    with Workbench.open(proj) as wb:
        with pytest.raises(ConversionError, match="longer than the KV cache"):
            wb.convert(recipe="none", prefill=[64], kv=32)
        assert set(wb.conversions) == {"fp32"}


def test_bad_unknown_recipe(proj):
    with Workbench.open(proj) as wb:
        with pytest.raises(WorkbenchError, match="int3") as e:
            wb.convert(recipe="int3", prefill=[8], kv=32)
        assert "dynamic_int8" in e.value.hint


def test_bad_recipe_for_missing_layer(proj):
    with Workbench.open(proj) as wb:
        with pytest.raises(WorkbenchError, match=r"layer\(s\) \[7\]"):
            wb.convert(recipe={"default": "dynamic_int8", "attention": {"7": "fp16"}}, prefill=[8], kv=32)


def test_bad_bad_result_name(proj):
    with Workbench.open(proj) as wb:
        with pytest.raises(ProjectError, match="cannot name a result file"):
            wb.compare("../outside", max_new_tokens=1)
        assert not (proj.parent / "outside.json").exists()


def test_bad_unknown_conversion(proj):
    with Workbench.open(proj) as wb:
        with pytest.raises(ProjectError, match="no conversion named 'fp16'") as e:
            wb.conversion_path("fp16")
        assert "fp32" in e.value.hint


def test_bad_checkpoint_changed(proj):
    from safetensors.torch import load_file, save_file

    f = proj / "checkpoint" / "model.safetensors"
    state = load_file(f)
    first = sorted(state)[0]
    state[first] = state[first] + 1
    save_file(state, f, metadata={"format": "pt"})
    with Workbench.open(proj) as wb:
        s = wb.status(detail=True)
        assert s["steps"]["mapping"] == "stale" and "checkpoint changed" in s["why"]["mapping"]
        with pytest.raises(ProjectError, match="mapping is stale"):
            wb.convert(recipe="none", prefill=[8], kv=32)
