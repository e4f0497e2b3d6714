"""Recipe sweeps: locally in a project (through the CLI), on a real Dask LocalCluster,
interrupted and resumed, and the refusals (bad recipes, a dead scheduler, too little memory)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from conftest import SWEEP_RECIPES as RECIPES
from conftest import copy_project
from workbench import cli
from workbench.sweep import Sweep, SweepError, plan, prepare, sweep


def test_cli_sweep_rows_and_pareto(swept):
    root, out = swept
    rows = {r["label"]: r for r in out["rows"]}
    assert list(rows) == ["none", "dynamic_int8", "fp16", "int8_ff_int4", "int8_edges_fp16@export_hf"]
    ok = {k: r for k, r in rows.items() if r["status"] == "ok"}
    assert set(ok) == {"none", "dynamic_int8", "fp16", "int8_ff_int4"}
    # a failed recipe is a row with its error, not a lost sweep
    bad = rows["int8_edges_fp16@export_hf"]
    assert bad["status"] == "error" and "per-layer mix" in bad["error"] and bad["hint"]
    # every field of the table, measured
    for r in ok.values():
        for key in ("size_bytes", "seconds", "peak_rss_bytes", "decode_tok_s", "prefill_tok_s", "err_fp32",
                    "top1_fp32", "err_hf", "top1_hf", "perplexity"):
            assert r[key] is not None and r[key] >= 0, (r["label"], key)
        assert (root / "conversions" / r["file"]).is_file()
    # sizes fall with the bits; float is exact, quantized is not
    size = {k: r["size_bytes"] for k, r in ok.items()}
    assert size["none"] > size["fp16"] > size["dynamic_int8"] > size["int8_ff_int4"]
    assert ok["none"]["err_fp32"] < 1e-4 and ok["none"]["top1_hf"] == 1.0
    assert ok["int8_ff_int4"]["err_fp32"] > ok["dynamic_int8"]["err_fp32"] > ok["fp16"]["err_fp32"]
    assert abs(ok["none"]["perplexity"] - out["settings"]["perplexity_fp32"]) / out["settings"]["perplexity_fp32"] < 1e-3
    # the smallest model is always on the front; a front row is beaten by no other row
    assert "int8_ff_int4" in out["pareto"]

    def beats(a, b):
        ka = (a["size_bytes"], -a["decode_tok_s"], a["err_fp32"])
        kb = (b["size_bytes"], -b["decode_tok_s"], b["err_fp32"])
        return all(x <= y for x, y in zip(ka, kb)) and ka != kb

    for label in out["pareto"]:
        assert not any(beats(o, ok[label]) for o in ok.values())
    for label in set(ok) - set(out["pareto"]):
        assert any(beats(o, ok[label]) for o in ok.values())


def test_project_records_the_sweep_and_pick_sets_the_model(swept, tmp_path):
    from workbench.project import Workbench

    root = copy_project(swept[0], tmp_path, "picked")
    with Workbench.open(root) as wb:
        assert wb.status()["sweeps"] == "fresh"
        s = wb.sweep_table("sweep")
        assert len(s.rows) == 5 and s.pareto() == swept[1]["pareto"]
        assert "sweep-sweep-fp16" in wb.conversions  # each row is an ordinary conversion of the project
        html = s.table_html()
        assert "★" in html and "per-layer mix" in html and "ewb-sweep" in html
        fig = s.figure()
        assert len(fig.data) == 2 and len(fig.data[0].x) == 4  # the recipes, and the front
        with pytest.raises(SweepError, match="failed"):
            s.pick("int8_edges_fp16@export_hf")
        s.pick("dynamic_int8")
        assert wb.chosen == "sweep-sweep-dynamic_int8" and wb.latest_conversion() == "sweep-sweep-dynamic_int8"
        exported = s.export(tmp_path / "exported")
        assert exported.read_bytes() == (root / "conversions" / "sweep-sweep-dynamic_int8.tflite").read_bytes()
        assert json.loads(exported.with_suffix(".json").read_text())["kind"] == "edge-workbench/conversion"
        assert "✓" in s.table_html()
    # the choice survives reopening, and run takes it by default
    with Workbench.open(root) as wb:
        assert wb.chosen == "sweep-sweep-dynamic_int8" and wb.sweep_table().chosen == "dynamic_int8"
    assert cli.main(["run", "--project", str(root), "--prompt", "Once upon", "--max-new", "2", "--json"]) == 0


def test_cli_sweep_again_resumes_with_nothing_to_do(swept, capsys):
    root, first = swept
    before = {f.name: f.stat().st_mtime_ns for f in (root / "conversions").glob("sweep-*.tflite")}
    t = time.perf_counter()
    assert cli.main(["sweep", "--project", str(root), "--recipes", RECIPES, "--prefill", "8", "--kv", "32",
                     "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert time.perf_counter() - t < 60  # nothing converted (one conversion alone takes ~12 s)
    assert [r["label"] for r in again["rows"]] == [r["label"] for r in first["rows"]]
    assert {f.name: f.stat().st_mtime_ns for f in (root / "conversions").glob("sweep-*.tflite")} == before
    # other settings under the same name are refused, not mixed in
    assert cli.main(["sweep", "--project", str(root), "--recipes", "none", "--kv", "64", "--json"]) == 1
    err = json.loads(capsys.readouterr().out)
    assert "other settings" in err["error"] and "fresh" in err["hint"]


def test_interrupted_sweep_resumes_where_it_stopped(samples, tmp_path):
    out = tmp_path / "sw"
    s = prepare(samples["llama"], ["none", "dynamic_int8"], prefill=[8], kv=32, out=out)

    def progress(stage, done, total, detail=""):
        if stage.startswith("dynamic_int8: ") and "export" in stage:
            s.stop()  # mid-conversion: the job is cancelled, and its row is not a result

    s.run(progress=progress, parallel=1)
    assert list(s.rows) == ["none"]
    saved = json.loads((out / "sweep.json").read_text())
    assert [r["label"] for r in saved["result"]["rows"]] == ["none"]
    assert not list(out.glob(".*partial*")) and not (out / "dynamic_int8.tflite").exists()
    first = (out / "none.tflite").stat().st_mtime_ns
    s2 = prepare(samples["llama"], ["none", "dynamic_int8"], prefill=[8], kv=32, out=out)
    assert [it.label for it in s2.todo()] == ["dynamic_int8"]
    s2.run()
    assert [r["status"] for r in s2.rows.values()] == ["ok", "ok"]
    assert (out / "none.tflite").stat().st_mtime_ns == first  # not converted again
    assert Sweep.load(out).rows.keys() == s2.rows.keys()


@pytest.mark.slow
def test_sweep_on_a_dask_local_cluster(samples, tmp_path):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        s = sweep(samples["llama"], ["none", "dynamic_int8", "fp16", "int8_ff_int4"], prefill=[8], kv=32,
                  out=tmp_path / "dask", executor=client)
        worker_pids = set(client.run(lambda: __import__("os").getpid()).values())
    assert [r["status"] for r in s.rows.values()] == ["ok"] * 4
    assert s.pareto() and all((tmp_path / "dask" / r["file"]).is_file() for r in s.rows.values())
    # the rows were computed in the workers (daemonic processes), which started the conversions
    assert len(worker_pids) == 2 and s.rows["none"]["err_fp32"] < 1e-4
    assert len(s.figure().data[0].x) == 4


def test_dead_dask_address_is_a_clear_error_in_time(samples, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once closed
    t = time.perf_counter()
    with pytest.raises(SweepError, match=f"127.0.0.1:{port} did not answer within 2 s") as e:
        sweep(samples["llama"], ["none"], kv=32, out=tmp_path / "dead", executor=f"tcp://127.0.0.1:{port}",
              dask_timeout=2)
    assert time.perf_counter() - t < 30 and "dask scheduler" in e.value.hint
    with pytest.raises(SweepError, match="not a Dask scheduler address|did not answer"):
        sweep(samples["llama"], ["none"], kv=32, out=tmp_path / "dead", executor="nonsense://x", dask_timeout=2)


def test_too_little_memory_runs_fewer_at_once_and_says_so(samples, tmp_path, monkeypatch):
    import types

    import psutil

    s = prepare(samples["llama"], ["none", "fp16", "dynamic_int8"], kv=32, out=tmp_path / "mem")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=int(5e9)))
    s.settings["peak_estimate_bytes"] = int(2e9)
    assert s._local_parallel(4) == 2
    assert "4 conversions at once would need about 8.0 GB" in s.notes[-1] and "running 2 at once" in s.notes[-1]
    s.notes.clear()
    s.settings["peak_estimate_bytes"] = int(8e9)
    assert s._local_parallel(None) == 1 and "expected to need about 8.0 GB" in s.notes[-1]


def test_a_sweep_run_again_does_not_repeat_its_memory_notes(tmp_path, monkeypatch):
    import types

    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=int(5e9)))
    s = Sweep([], {"peak_estimate_bytes": int(8e9), "threads": 1}, tmp_path / "sweep.json", tmp_path)
    assert s._local_parallel(4) == 1
    first = list(s.notes)
    assert len(first) == 2 and "running 1 at once" in first[0] and "expected to need about 8.0 GB" in first[1]
    assert s._local_parallel(4) == 1 and s.notes == first


def test_plan_refuses_what_it_cannot_sweep(samples):
    from workbench.blueprint import Blueprint

    bp = Blueprint.from_hf(samples["llama"])
    with pytest.raises(SweepError, match="unknown recipe 'int3'"):
        plan(["int3"], bp)
    with pytest.raises(SweepError, match="twice"):
        plan(["fp16", "fp16"], bp)
    with pytest.raises(SweepError, match="unknown conversion path"):
        plan(["fp16"], bp, paths=["tflite"])
    with pytest.raises(SweepError, match="no recipes"):
        plan([], bp)
    items = plan({"mine": {"default": "dynamic_int8", "attention": {"0": "fp16"}}, "a": "int8_edges_fp16"}, bp,
                 paths=["reauthored", "export_hf"])
    assert [i.label for i in items] == ["mine", "mine@export_hf", "a", "a@export_hf"]
    assert items[2].recipe["attention"] == {"0": "fp16", str(bp.num_layers - 1): "fp16"}
    from workbench.recipe import RecipeError

    with pytest.raises(RecipeError, match="layer"):
        plan([{"default": "fp16", "attention": {"99": "fp16"}}], bp)
