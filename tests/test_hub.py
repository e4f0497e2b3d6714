"""Hub ids (`org/name[@rev]`) wherever a model folder is taken, all offline: a fake cache in
huggingface_hub's layout under HF_HOME, and the Hub's functions mocked for the online path
(HF_ENDPOINT points at a closed local port, so nothing unmocked could reach a network)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from workbench import Blueprint, hub
from workbench.hub import HubError

LLAMA = hashlib.sha1(b"llama").hexdigest()
GEMMA = hashlib.sha1(b"gemma").hexdigest()
ROOT = Path(__file__).resolve().parent.parent


def add_snapshot(cache: Path, repo_id: str, commit: str, src: Path, files=None, refs=()) -> Path:
    """A snapshot in the hub's cache layout: blobs by content hash, snapshot files linked to them."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for name in files if files is not None else sorted(p.name for p in src.iterdir()):
        data = (src / name).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snap / name
        if not link.exists():
            link.symlink_to(os.path.relpath(blob, snap))
    for ref in refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def cache(tmp_path, monkeypatch, samples) -> Path:
    """HF_HOME/hub holding acme/llama-tiny (main -> the llama sample; v1 -> the gemma sample),
    offline."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # closed: a stray request fails at once
    monkeypatch.setattr(hub, "_RESOLVED", {})
    c = home / "hub"
    add_snapshot(c, "acme/llama-tiny", LLAMA, samples["llama"], refs=["main"])
    add_snapshot(c, "acme/llama-tiny", GEMMA, samples["gemma"], refs=["v1"])
    return c


def snap(cache: Path, commit: str, repo_id: str = "acme/llama-tiny") -> Path:
    return cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / commit


# ---- ids ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("Qwen/Qwen2.5-0.5B-Instruct", ("Qwen/Qwen2.5-0.5B-Instruct", "main")),
    ("TinyLlama/TinyLlama-1.1B-Chat-v1.0@v1.0", ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "v1.0")),
    (f"acme/llama-tiny@{LLAMA[:8]}", ("acme/llama-tiny", LLAMA[:8])),
    ("gpt2", None),                         # a bare name: a (missing) folder, not an id
    ("/abs/path", None), ("./rel/dir", None), ("a/b/c", None), ("models/config.json", None),
    ("a--b/c", None), ("org/name.", None),
])
def test_what_reads_as_a_hub_id(text, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.parse(text) == expected


def test_an_existing_folder_always_wins_over_an_id_of_the_same_spelling(cache, samples, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(samples["qwen2"], tmp_path / "acme" / "llama-tiny")
    assert not hub.is_hub_id("acme/llama-tiny")
    assert hub.resolve("acme/llama-tiny") == Path("acme/llama-tiny")
    assert Blueprint.from_hf("acme/llama-tiny").family == "qwen2"  # the folder, not the cached llama


# ---- offline: the cache ---------------------------------------------------------------
def test_blueprint_from_a_cached_id_offline(cache, samples):
    bp = Blueprint.from_hf("acme/llama-tiny")
    local = Blueprint.from_hf(samples["llama"])
    assert bp.to_json()["model"] == local.to_json()["model"] and bp.layer == local.layer
    assert bp.source == f"acme/llama-tiny@{LLAMA[:12]}"
    assert hub.resolve("acme/llama-tiny") == snap(cache, LLAMA)


@pytest.mark.parametrize("rev, commit, family", [("v1", GEMMA, "gemma"), (GEMMA[:9], GEMMA, "gemma"),
                                                 (LLAMA, LLAMA, "llama"), ("main", LLAMA, "llama")])
def test_a_cached_revision_resolves_by_branch_commit_or_prefix(cache, rev, commit, family):
    src = hub.snapshot("acme/llama-tiny", rev)
    assert (src.commit, src.path) == (commit, snap(cache, commit))
    assert Blueprint.from_hf(f"acme/llama-tiny@{rev}").family == family


def test_a_missing_id_offline_is_one_clear_error(cache):
    with pytest.raises(HubError) as e:
        Blueprint.from_hf("nobody/nothing")
    assert "nobody/nothing is not in the Hugging Face cache" in e.value.message
    assert "HF_HUB_OFFLINE" in e.value.message and "HF_HUB_OFFLINE" in e.value.hint
    assert "\n" not in e.value.message


def test_a_missing_revision_offline_names_the_cached_ones(cache):
    with pytest.raises(HubError) as e:
        hub.resolve("acme/llama-tiny@v2")
    assert "revision 'v2'" in e.value.message and "main" in e.value.message and "v1" in e.value.message


def test_a_partly_cached_snapshot_gives_its_blueprint_but_not_its_weights(cache, samples):
    add_snapshot(cache, "acme/half", LLAMA, samples["llama"], files=["config.json"], refs=["main"])
    assert Blueprint.from_hf("acme/half").family == "llama"  # config.json is all a Blueprint needs
    from workbench.checkpoint import Checkpoint

    with pytest.raises(HubError, match="only partly in the Hugging Face cache"):
        Checkpoint.open("acme/half")


def test_mapping_compare_convert_and_sweep_take_an_id(cache, samples, tmp_path):
    from workbench.compare import compare
    from workbench.convert import ConversionError, convert
    from workbench.mapping import Mapping
    from workbench.sweep import prepare

    bp = Blueprint.from_hf("acme/llama-tiny")
    m = Mapping.propose(bp, "acme/llama-tiny")
    assert m.checkpoint.root == snap(cache, LLAMA)
    assert not m.problems() and not m.unused()
    c = compare("acme/llama-tiny", bp, m, prompts=["Once upon a time"], max_new_tokens=2)
    assert c.passed and c.records
    with pytest.raises(ConversionError, match="prefill"):  # refused after reading the id, before any child
        convert("acme/llama-tiny", prefill=[64], kv=16, out=tmp_path / "out")
    s = prepare("acme/llama-tiny", ["none"], kv=32, out=tmp_path / "sweep")
    assert s.settings["checkpoint"] == str(snap(cache, LLAMA))


def test_a_project_records_the_id_and_commit_and_finds_the_snapshot_again(cache, tmp_path, monkeypatch):
    from workbench.project import Workbench

    wb = Workbench.new(tmp_path / "proj", from_hf="acme/llama-tiny@v1")
    assert wb.blueprint.family == "gemma"
    rec = json.loads((tmp_path / "proj" / "workbench.json").read_text())["checkpoint"]
    assert rec["hub"] == {"id": "acme/llama-tiny", "revision": "v1", "commit": GEMMA}
    assert wb.checkpoint_path().resolve() == snap(cache, GEMMA)
    wb.close()
    # the cache moves (another HF_HOME): the project finds its commit there, by id
    moved = tmp_path / "elsewhere"
    shutil.move(str(cache.parent), str(moved))
    monkeypatch.setenv("HF_HOME", str(moved))
    wb = Workbench.open(tmp_path / "proj")
    assert wb.checkpoint_path() == moved / "hub" / snap(cache, GEMMA).relative_to(cache)
    assert not wb.mapping.problems()
    # gone from every cache: one error naming the places, the id, and set_checkpoint
    shutil.rmtree(moved)
    from workbench.project import ProjectError

    with pytest.raises(ProjectError) as e:
        wb.checkpoint_path()
    assert "by its Hub id" in e.value.message and "acme/llama-tiny" in e.value.message
    assert "set_checkpoint" in e.value.hint and "set-checkpoint" in e.value.cli_hint
    wb.close()


# ---- online, with the Hub's functions mocked ------------------------------------------
class FakeHub:
    """model_info and hf_hub_download over a listing; downloads copy from `src` into the cache."""

    def __init__(self, monkeypatch, cache: Path, listing: dict[str, int], src: Path, commit: str = LLAMA,
                 contents=None, info_error=None, download_error=None):
        self.cache, self.listing, self.src, self.commit = cache, listing, src, commit
        self.contents = contents or {}
        self.fetched: list[str] = []
        self.info_error, self.download_error = info_error, download_error
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        import huggingface_hub

        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", self.model_info)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.hf_hub_download)

    def model_info(self, repo_id, revision=None, files_metadata=False, **kw):
        if self.info_error is not None:
            raise self.info_error
        from huggingface_hub.hf_api import RepoSibling

        return types.SimpleNamespace(sha=self.commit, siblings=[RepoSibling(n, s) for n, s in self.listing.items()])

    def hf_hub_download(self, repo_id, filename, *, revision, cache_dir, tqdm_class=None, **kw):
        assert revision == self.commit and Path(cache_dir) == self.cache
        if self.download_error is not None:
            raise self.download_error
        self.fetched.append(filename)
        size = self.listing[filename]
        if tqdm_class is not None:
            bar = tqdm_class(total=size, initial=0, desc=filename)
            bar.update(size // 2)
            bar.update(size - size // 2)
            bar.close()
        repo = self.cache / ("models--" + repo_id.replace("/", "--"))
        path = repo / "snapshots" / revision / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        if filename in self.contents:
            path.write_text(self.contents[filename])
        else:
            shutil.copy(self.src / filename, path)
        return str(path)


def _listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir()}


def test_online_fetches_only_what_is_needed_with_progress_then_resolves_offline(cache, samples, monkeypatch):
    listing = {**_listing(samples["llama"]), "pytorch_model.bin": 999, "README.md": 10, "onnx/model.onnx": 5,
               "original/consolidated.00.pth": 7}
    fake = FakeHub(monkeypatch, cache, listing, samples["llama"], commit=GEMMA.replace("a", "b"))
    calls = []
    src = hub.snapshot("acme/new-model", progress=lambda *a: calls.append(a))
    assert sorted(fake.fetched) == sorted(_listing(samples["llama"]))  # no .bin, README, subfolders
    assert fake.fetched[0] == "config.json"
    total = sum(_listing(samples["llama"]).values())
    assert calls[-1][:3] == ("download acme/new-model", total, total)
    assert all(c[2] == total and 0 <= c[1] <= total for c in calls)
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)  # never goes back
    assert (src.path / "model.safetensors").is_file()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # refs/main was written: the id now resolves offline
    assert hub.snapshot("acme/new-model").path == src.path


def test_online_config_only_for_a_blueprint_with_a_default_bar(cache, samples, monkeypatch, capsys):
    fake = FakeHub(monkeypatch, cache, _listing(samples["qwen2"]), samples["qwen2"], commit="c" * 40)
    assert Blueprint.from_hf("acme/qwen").family == "qwen2"
    assert sorted(fake.fetched) == ["config.json", "generation_config.json"]
    assert "download acme/qwen" in capsys.readouterr().err  # no callback: tqdm's bar, as from_pretrained's


def test_online_sharded_fetches_the_index_shards_only(cache, monkeypatch, tmp_path):
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    listing = {"config.json": 2, "tokenizer.json": 2, "model.safetensors.index.json": 90,
               "model-00001-of-00002.safetensors": 100, "model-00002-of-00002.safetensors": 100,
               "consolidated.safetensors": 200, "pytorch_model.bin": 200}
    contents = {k: "{}" for k in listing}
    contents["model.safetensors.index.json"] = json.dumps(index)
    fake = FakeHub(monkeypatch, cache, listing, tmp_path, commit="d" * 40, contents=contents)
    hub.snapshot("acme/big")
    assert fake.fetched == ["config.json", "tokenizer.json", "model.safetensors.index.json",
                            "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_bin_only_when_there_are_no_safetensors():
    assert hub.needed_files(["config.json", "pytorch_model.bin", "tokenizer.json"]) == \
        ["config.json", "tokenizer.json", "pytorch_model.bin"]
    assert hub.needed_files(["config.json", "pytorch_model.bin", "model.safetensors"])[-1] == "model.safetensors"


def _http_error(cls, status: int):
    import httpx

    return cls("refused", response=httpx.Response(status, request=httpx.Request("GET", "http://127.0.0.1:9/api")))


@pytest.mark.parametrize("error, message, hint", [
    ("gated", "acme/gated is gated", "hf auth login"),
    ("missing", "no model 'acme/gated' on the Hugging Face Hub", "hf auth login"),
    ("revision", "has no revision", "@main"),
])
def test_online_hub_refusals_are_one_line_with_the_fix(cache, samples, monkeypatch, error, message, hint):
    from huggingface_hub import errors as E

    exc = {"gated": _http_error(E.GatedRepoError, 403), "missing": _http_error(E.RepositoryNotFoundError, 404),
           "revision": _http_error(E.RevisionNotFoundError, 404)}[error]
    FakeHub(monkeypatch, cache, {}, samples["llama"], info_error=exc)
    with pytest.raises(HubError) as e:
        hub.resolve("acme/gated")
    assert message in e.value.message and hint in e.value.hint and "\n" not in e.value.message
    assert "huggingface.co/acme/gated" in e.value.hint or error != "gated"


def test_a_gated_model_lists_its_files_but_refuses_them(cache, samples, monkeypatch):
    from huggingface_hub import errors as E

    FakeHub(monkeypatch, cache, _listing(samples["llama"]), samples["llama"],
            download_error=_http_error(E.GatedRepoError, 403))
    with pytest.raises(HubError) as e:
        Blueprint.from_hf("meta/gated-llama")
    assert e.value.message == "meta/gated-llama is gated: its files need an accepted licence and a login"
    assert "https://huggingface.co/meta/gated-llama" in e.value.hint and "hf auth login" in e.value.hint


def test_online_unreachable_falls_back_to_the_cache_else_says_so(cache, samples, monkeypatch):
    import httpx

    FakeHub(monkeypatch, cache, {}, samples["llama"], info_error=httpx.ConnectError("connection refused"))
    assert hub.resolve("acme/llama-tiny") == snap(cache, LLAMA)
    with pytest.raises(HubError) as e:
        hub.resolve("acme/elsewhere")
    assert "the Hub cannot be reached: connection refused" in e.value.message
    assert "check the connection" in e.value.hint


# ---- the command line -----------------------------------------------------------------
def test_cli_takes_an_id_for_hf_dir(cache, capsys):
    from workbench import cli

    assert cli.main(["blueprint", "acme/llama-tiny@v1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["family"] == "gemma" and out["blueprint"]["source"] == f"acme/llama-tiny@{GEMMA[:12]}"
    assert cli.main(["map", "acme/llama-tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["problems"] == [] and out["unused"] == []


def test_cli_new_records_the_id(cache, tmp_path, capsys):
    from workbench import cli

    assert cli.main(["new", str(tmp_path / "p"), "--from", "acme/llama-tiny", "--json"]) == 0
    rec = json.loads((tmp_path / "p" / "workbench.json").read_text())["checkpoint"]
    assert rec["hub"] == {"id": "acme/llama-tiny", "revision": "main", "commit": LLAMA}


def test_cli_missing_id_offline_exits_1_with_the_fix(cache, capsys):
    from workbench import cli

    assert cli.main(["map", "nobody/nothing", "--json"]) == 1
    captured = capsys.readouterr()
    err = json.loads(captured.out)
    assert "nobody/nothing is not in the Hugging Face cache" in err["error"] and "HF_HUB_OFFLINE" in err["hint"]
    assert "Traceback" not in captured.err


def test_cli_download_progress_on_stderr(cache, samples, monkeypatch, capsys):
    from workbench import cli

    fake = FakeHub(monkeypatch, cache, _listing(samples["llama"]), samples["llama"], commit="e" * 40)
    assert cli.main(["blueprint", "acme/fresh", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["family"] == "llama"
    assert "download acme/fresh" in captured.err and "config.json" in captured.err
    assert sorted(fake.fetched) == ["config.json", "generation_config.json"]


def test_the_console_entry_point_takes_an_id(cache):
    env = {**os.environ, "HF_HOME": str(cache.parent), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "blueprint", "acme/llama-tiny", "--json"],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["family"] == "llama"
    r = subprocess.run([sys.executable, "-m", "workbench.cli", "blueprint", "nobody/nothing"],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 1 and "not in the Hugging Face cache" in r.stderr and "Traceback" not in r.stderr


# ---- the panels -----------------------------------------------------------------------
def test_builder_panel_loads_an_id_typed_in(cache, samples):
    from workbench_widgets import BuilderPanel

    panel = BuilderPanel.from_hf(samples["llama"])
    panel.hf_source.value = "acme/llama-tiny@v1"
    panel.load_hf_button.click()
    assert panel.blueprint.family == "gemma"
    assert panel.blueprint.source == f"acme/llama-tiny@{GEMMA[:12]}"
    assert panel.fields["num_kv_heads"].value == panel.blueprint.layer.num_kv_heads
    assert "Loaded acme/llama-tiny@" in panel.message.value
    panel.hf_source.value = "nobody/nothing"
    panel.load_hf_button.click()
    assert panel.blueprint.family == "gemma"  # unchanged
    assert "not in the Hugging Face cache" in panel.message.value


def test_builder_panel_download_bar(cache, samples, monkeypatch):
    from workbench_widgets import BuilderPanel

    FakeHub(monkeypatch, cache, _listing(samples["qwen2"]), samples["qwen2"], commit="f" * 40)
    panel = BuilderPanel.from_hf(samples["llama"])
    seen = []
    panel.download.observe(lambda ch: seen.append((panel.download.value, panel.download.max)), names="value")
    panel.hf_source.value = "acme/qwen-online"
    panel.load_hf_button.click()
    assert panel.blueprint.family == "qwen2"
    total = sum(v for k, v in _listing(samples["qwen2"]).items() if k in ("config.json", "generation_config.json"))
    assert seen and seen[-1] == (total, total)
    assert panel.download.layout.visibility == "hidden"  # shown only while downloading



# ---- run and bundle: a tokenizer by id --------------------------------------------------
def test_runner_and_bundle_take_a_tokenizer_by_id(cache, samples, llama_project, tmp_path, capsys):
    from workbench import cli
    from workbench.bundle import bundle
    from workbench.runner import Runner

    tflite = llama_project / "conversions" / "fp32.tflite"
    by_id = Runner(tflite, tokenizer="acme/llama-tiny")
    local = Runner(tflite, tokenizer=samples["llama"])
    assert by_id.tokenizer_dir == snap(cache, LLAMA)
    assert by_id.generate("Once upon a time", max_new_tokens=3).ids == \
        local.generate("Once upon a time", max_new_tokens=3).ids
    with pytest.raises(HubError, match="nobody/nothing is not in the Hugging Face cache"):
        bundle(tflite, "nobody/nothing", out=tmp_path / "b.litertlm")
    assert cli.main(["run", str(tflite), "--tokenizer", "acme/llama-tiny", "--prompt", "Once", "--max-new", "2",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ids"] == local.generate("Once", max_new_tokens=2).ids


def test_compare_panel_takes_an_id(cache):
    from workbench_widgets.compare import ComparePanel

    panel = ComparePanel("acme/llama-tiny", Blueprint.from_hf("acme/llama-tiny"))
    panel.max_new.value = 2
    panel.button.click()
    assert panel.passed and panel.comparison.records
    panel = ComparePanel("nobody/nothing", Blueprint.from_hf("acme/llama-tiny"))
    panel.button.click()
    assert not panel.passed and "nobody/nothing is not in the Hugging Face cache" in panel.verdict_html.value


def test_export_hf_is_given_the_ids_snapshot(cache, tmp_path):
    """litert-torch's export_hf reads a folder: the job hands it the cached snapshot (the
    conversion itself is the export_hf tests' business; cancelled here to spare CI a minute)."""
    from workbench.convert import convert

    job = convert("acme/llama-tiny", recipe="none", prefill=[8], kv=32, out=tmp_path, path="export_hf")
    try:
        assert job.spec["checkpoint"] == str(snap(cache, LLAMA).resolve())
        assert job.settings.path == "export_hf"
    finally:
        job.cancel()
    assert not list(tmp_path.glob("*.tflite"))


def test_explorer_takes_an_id(cache, tmp_path):
    from workbench.explore import Explorer

    ex = Explorer("acme/llama-tiny", graphs_dir=tmp_path / "g")
    assert ex._hf == snap(cache, LLAMA).resolve() and ex.available() == ["original", "reauthored"]


def test_cli_new_names_the_id_it_was_made_from(cache, tmp_path, capsys):
    from workbench import cli

    assert cli.main(["new", str(tmp_path / "p"), "--from", "acme/llama-tiny"]) == 0
    assert f"created {tmp_path / 'p'} from acme/llama-tiny" in capsys.readouterr().out
