"""Model Explorer inline (#13): graph exports and their cache, the guarded server (every
refusal tested against the real process), the view's HTML, orphans, and the CLI."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import psutil
import pytest

from conftest import copy_project
from workbench.explore import Explorer, ExploreError, ExploreServer
from workbench.explore.server import SECRET_PARAM, cookie_name, cookie_value


# ---- helpers ----------------------------------------------------------------------------
def _get(port: int, path: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None):
    """A raw request (http.client: the Host header is ours to set)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    h = {"Host": f"127.0.0.1:{port}", **(headers or {})}
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read().decode(errors="replace") if r.status != 200 or "event-stream" not in (
        r.getheader("Content-Type") or "") else ""
    c.close()
    return r.status, dict(r.getheaders()), data


def _live(ex: Explorer) -> int:
    """The port of this process's server (started again if a test closed it)."""
    ex._ensure_server()
    return ex.server.wait().port


def _auth(ex: Explorer) -> dict:
    return {"Cookie": f"{cookie_name(ex.server.port)}={cookie_value(ex.server.secret, ex.server.port)}"}


def _open(port: int, path: str, secret: str, headers: dict | None = None):
    """GET `path` with the secret in its address, as a browser does: the guard answers with a
    redirect to the same address without it and the cookie; the redirect is followed with it."""
    sep = "&" if "?" in path else "?"
    status, h, _ = _get(port, f"{path}{sep}{SECRET_PARAM}={secret}", headers)
    if status != 303:
        return status, h, _
    assert SECRET_PARAM not in h["Location"] and h["Location"] == path
    cookie = h["Set-Cookie"].split(";")[0]
    return _get(port, h["Location"], {**(headers or {}), "Cookie": cookie})


def _cmd(path) -> str:
    return urllib.parse.quote(json.dumps({"extensionId": "builtin_pytorch_exportedprogram", "cmdId": "convert",
                                          "modelPath": str(path), "settings": {"const_element_count_limit": 16},
                                          "deleteAfterConversion": False}))


# ---- graphs -----------------------------------------------------------------------------
def test_three_graphs_exported_cached_and_labelled(explored):
    root, ex, graphs = explored
    assert list(graphs) == ["original", "reauthored", "tflite"]
    assert all(g.ok for g in graphs.values()), {n: g.error for n, g in graphs.items()}
    folder = root / "explore" / "graphs"
    assert graphs["original"].path.parent.parent == folder and graphs["original"].path.name == "original.pt2"
    assert graphs["reauthored"].path.name == "reauthored.pt2"
    assert graphs["tflite"].path == (root / "conversions" / "fp32.tflite").resolve()  # used in place
    assert len({g.label for g in graphs.values()}) == 3
    assert graphs["tflite"].graph_id == "prefill_8" and graphs["original"].graph_id == "graph"
    # the node index beside each export: Model Explorer's own ids (fx names) and namespaces
    index = json.loads(graphs["reauthored"].nodes_file.read_text())
    assert index["graph_id"] == "graph" and len(index["nodes"]) == graphs["reauthored"].nodes > 100
    spaces = {n["namespace"] for n in index["nodes"]}
    assert any("TransformerBlock_2" in s for s in spaces)
    assert any(s.startswith("litert_torch.generative.utilities.model_builder.DecoderOnlyModel_module") for s in spaces)
    orig = json.loads(graphs["original"].nodes_file.read_text())
    assert any("LlamaDecoderLayer_2" in n["namespace"] for n in orig["nodes"])
    # unchanged inputs: nothing exported again
    again = ex.export()
    assert again["original"].cached and again["reauthored"].cached
    assert again["original"].path == graphs["original"].path
    assert (root / "explore" / ".gitignore").read_text().strip().endswith("*")


def test_the_server_loads_every_graph(explored):
    """Model Explorer's own adapters read each file in the server process (no transformers
    or litert-torch there)."""
    _, ex, graphs = explored
    _live(ex)
    for g in graphs.values():
        body = json.dumps({"extensionId": g.adapter, "cmdId": "convert", "modelPath": str(g.path),
                           "settings": {"const_element_count_limit": 16}, "deleteAfterConversion": False}).encode()
        status, _, text = _get(ex.server.port, "/apipost/v1/send_command",
                               {**_auth(ex), "Content-Type": "application/json"}, "POST", body)
        assert status == 200, text
        out = json.loads(text)
        assert "error" not in out, out
        ids = [gr["id"] for c in out.get("graphCollections", [{"graphs": out.get("graphs", [])}])
               for gr in (c.get("graphs") or c.get("subgraphs") or [])]
        assert g.graph_id in ids


def test_a_failed_export_is_reported_while_the_others_show(explored, tmp_path):
    from workbench.project import Workbench

    root, ex0, graphs0 = explored
    broken = copy_project(root, tmp_path, "broken")
    wb = Workbench.open(broken)
    wb.mapping.set("ff_up_proj", "model.layers.{}.mlp.no_such_tensor")
    wb.save_mapping()
    ex = Explorer(wb)
    graphs = ex.export(["original", "reauthored"])
    assert graphs["original"].ok and graphs["original"].cached  # same checkpoint: the copied cache is used
    assert not graphs["reauthored"].ok and graphs["reauthored"].path is None
    assert "no_such_tensor" in graphs["reauthored"].error and graphs["reauthored"].hint
    view = ex.show(["original", "reauthored"])
    assert view.graphs == ["original"] and [g.name for g in view.failed] == ["reauthored"]
    page = view._repr_html_()
    assert "ewb-explore-error" in page and "no_such_tensor" in page and page.count("<iframe") == 1
    # the conversion is stale now: the converted graph is refused with the fix
    with pytest.raises(ExploreError) as e:
        ex.show(["tflite"])
    assert "convert" in e.value.hint
    assert "tflite" not in ex.available()
    wb.close()


def test_view_html_and_url_data(explored):
    _, ex, graphs = explored
    view = ex.show(["original", "reauthored", "tflite"], height=500)
    assert [[g.name for g in gs] for gs, _ in view.frames] == [["original", "reauthored"], ["tflite"]]
    page = view._repr_html_()
    assert page.count("<iframe") == 2 and "height:500px" in page
    assert "window.parent.location.hostname" in page and f":{ex.server.port}" in page
    assert "ewb-explore-view" in page
    data = json.loads(urllib.parse.unquote(view.frames[0][1].split("data=")[1].split("&")[0]))
    assert [m["url"] for m in data["models"]] == [str(graphs["original"].path), str(graphs["reauthored"].path)]
    assert [m["adapterId"] for m in data["models"]] == ["builtin_pytorch_exportedprogram"] * 2
    panes = data["uiState"]["paneStates"]
    # Model Explorer renames a repeated graph id: the second .pt2's "graph" is "graph (2)"
    assert [(p["selectedCollectionLabel"], p["selectedGraphId"]) for p in panes] == [
        ("original.pt2", "graph"), ("reauthored.pt2", "graph (2)")]
    # each pane opens at the group holding the decoder layers
    assert panes[0]["deepestExpandedGroupNodeIds"][0].endswith("LlamaForCausalLM_model/"
                                                              "transformers.models.llama.modeling_llama."
                                                              "LlamaModel_model___group___")
    assert panes[1]["deepestExpandedGroupNodeIds"] == [
        "litert_torch.generative.utilities.model_builder.DecoderOnlyModel_module___group___"]
    assert view.frames[0][1].endswith(f"{SECRET_PARAM}={ex.server.secret}")
    stacked = ex.show(["original", "reauthored", "tflite"], layout="stacked")
    assert stacked._repr_html_().count("<iframe") == 3
    assert "display:flex" in ex.show(["original", "reauthored", "tflite"], layout="side")._repr_html_()
    one = ex.show(["tflite"])
    d1 = json.loads(urllib.parse.unquote(one.frames[0][1].split("data=")[1].split("&")[0]))
    assert d1["uiState"]["paneStates"][0]["selectedGraphId"] == "prefill_8"
    url = ex.url(["original", "tflite"])
    assert url.startswith(f"http://127.0.0.1:{ex.server.port}/?data=") and f"{SECRET_PARAM}=" in url


@pytest.mark.parametrize("kwargs, words", [
    ({"names": ["nope"]}, "unknown graph"),
    ({"names": []}, "no graph"),
    ({"names": ["original", "original"]}, "twice"),
    ({"layout": "grid"}, "unknown layout"),
    ({"height": 10}, "height"),
])
def test_bad_requests_are_refused_by_name(explored, kwargs, words):
    _, ex, _ = explored
    with pytest.raises(ExploreError) as e:
        ex.show(**kwargs)
    assert words in e.value.message and e.value.hint


def test_bad_sources(tmp_path, samples):
    with pytest.raises(ExploreError, match="neither a project"):
        Explorer(tmp_path)
    ex = Explorer(samples["llama"], graphs_dir=tmp_path / "g")
    assert ex.available() == ["original", "reauthored"]
    with pytest.raises(ExploreError) as e:
        ex.show(["tflite"])
    assert "--tflite" in e.value.hint
    from workbench.explore.graphs import GraphError

    with pytest.raises(GraphError, match="no converted model"):
        Explorer(samples["llama"], graphs_dir=tmp_path / "g", tflite=tmp_path / "missing.tflite").export()


# ---- the guard ---------------------------------------------------------------------------
def test_guard_refuses_without_the_secret(explored):
    _, ex, _ = explored
    port = _live(ex)
    for path in ("/", "/check_health", "/api/v1/get_extensions", "/api/v1/read_text_file?path=/etc/passwd"):
        status, _, text = _get(port, path)
        assert status == 403 and "secret" in text, (path, text)
    status, _, text = _get(port, f"/check_health?{SECRET_PARAM}=wrong-wrong-wrong-wrong")
    assert status == 403 and "wrong secret" in text
    status, _, text = _get(port, "/check_health", {"Cookie": f"{cookie_name(port)}=nope"})
    assert status == 403
    status, _, text = _open(port, "/check_health", ex.server.secret)
    assert status == 200 and text == "model_explorer_ok"


def test_guard_refuses_a_foreign_host_or_origin(explored):
    _, ex, _ = explored
    port = _live(ex)
    for host in (f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}", f"localhost.evil.example:{port}"):
        status, _, text = _open(port, "/check_health", ex.server.secret, {"Host": host})
        assert status == 403 and "Host" in text, host
    status, _, _ = _open(port, "/check_health", ex.server.secret, {"Host": f"localhost:{port}"})
    assert status == 200
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{port + 1}"):
        status, _, text = _get(port, "/check_health", {**_auth(ex), "Origin": origin})
        assert status == 403 and "refused" in text, origin
    status, _, _ = _get(port, "/check_health", {**_auth(ex), "Origin": f"http://localhost:{port}"})
    assert status == 200
    status, _, _ = _get(port, "/check_health", {**_auth(ex), "Sec-Fetch-Site": "cross-site"})
    assert status == 403
    # the notebook's frame opens the page (same site, a navigation); nothing else same-site
    status, _, _ = _get(port, "/check_health", {**_auth(ex), "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"})
    assert status == 403
    status, _, _ = _get(port, "/", {**_auth(ex), "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate"})
    assert status == 200


def test_guard_sets_the_cookie_and_drops_the_secret_from_the_page(explored):
    _, ex, _ = explored
    port = _live(ex)
    status, headers, _ = _get(port, f"/?data=%7B%7D&{SECRET_PARAM}={ex.server.secret}")
    assert status == 303 and headers["Location"] == "/?data=%7B%7D"
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"{cookie_name(port)}={cookie_value(ex.server.secret, port)};")
    assert ex.server.secret not in cookie  # the cookie reaches every port of this host: never the secret
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, headers, text = _get(port, "/?data=%7B%7D", _auth(ex))  # Model Explorer's own reload
    assert status == 200 and "<base href" in text
    assert "frame-ancestors" in headers["Content-Security-Policy"]


def test_guard_confines_files_to_the_project_graphs(explored, tmp_path):
    root, ex, graphs = explored
    port = _live(ex)
    outside = tmp_path / "secret.txt"
    outside.write_text("not for the browser")
    status, _, text = _get(port, f"/api/v1/read_text_file?path={urllib.parse.quote(str(outside))}", _auth(ex))
    assert status == 403 and "outside" in text
    nodes = graphs["original"].nodes_file
    status, _, text = _get(port, f"/api/v1/read_text_file?path={urllib.parse.quote(str(nodes))}", _auth(ex))
    assert status == 200 and json.loads(json.loads(text)["content"])["graph_id"] == "graph"
    # a symlink inside the allowed folder that leads out is followed, then refused
    link = root / "explore" / "graphs" / "link.txt"
    link.symlink_to(outside)
    try:
        status, _, _ = _get(port, f"/api/v1/read_text_file?path={urllib.parse.quote(str(link))}", _auth(ex))
        assert status == 403
        # .. in a path does not escape either
        sneaky = str(root / "explore" / "graphs" / ".." / ".." / "workbench.json")
        status, _, _ = _get(port, f"/api/v1/read_text_file?path={urllib.parse.quote(sneaky)}", _auth(ex))
        assert status == 403
    finally:
        link.unlink()
    # adapters run only on allowed files, GET and POST
    status, _, text = _get(port, f"/api/v1/send_command?json={_cmd(outside)}", _auth(ex))
    assert status == 403
    body = json.dumps({"extensionId": "builtin_pytorch_exportedprogram", "cmdId": "convert", "modelPath": str(outside),
                       "settings": {}, "deleteAfterConversion": False}).encode()
    status, _, _ = _get(port, "/apipost/v1/send_command", {**_auth(ex), "Content-Type": "application/json"}, "POST",
                        body)
    assert status == 403
    # update_config may not point the page at other files
    cfg = json.dumps({"graphs_list": "[]", "model_sources": [{"url": str(outside)}], "node_data_sources": [],
                      "node_data_target_models": []}).encode()
    status, _, _ = _get(port, "/apipost/v1/update_config", {**_auth(ex), "Content-Type": "application/json"}, "POST",
                        cfg)
    assert status == 403


def test_a_running_server_takes_new_graph_folders(explored, tmp_path):
    """New graphs reach a running server as new addresses: a second Explorer (another
    folder) reuses this kernel's server and tells it the folder may be read."""
    root, ex, graphs = explored
    port = _live(ex)
    copy = tmp_path / "more" / "graphs"
    shutil.copytree(graphs["original"].path.parent.parent, copy)
    moved = copy / graphs["original"].path.parent.name / "original.pt2"
    status, _, _ = _get(port, f"/api/v1/send_command?json={_cmd(moved)}", _auth(ex))
    assert status == 403  # not yet allowed
    ex2 = Explorer(root, graphs_dir=copy)
    assert ex2.server is ex.server  # one server per kernel
    g = ex2.export(["original"])["original"]
    assert g.cached and g.path == moved.resolve()
    status, _, text = _get(port, f"/api/v1/send_command?json={_cmd(moved)}", _auth(ex))
    assert status == 200 and '"graphs"' in text
    # files written beside the graphs (node data, for overlays) are readable too
    note = ex.data_dir / "node_data" / "errors.json"
    note.parent.mkdir(exist_ok=True)
    note.write_text('{"ok": 1}')
    status, _, text = _get(port, f"/api/v1/read_text_file?path={urllib.parse.quote(str(note))}", _auth(ex))
    assert status == 200 and json.loads(text)["content"] == '{"ok": 1}'
    assert ex.data_dir == (root / "explore").resolve()


def test_guard_refuses_uploads_and_never_sends_cors_star(explored):
    _, ex, _ = explored
    port = _live(ex)
    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.txt\"\r\n\r\nhello\r\n--b--\r\n")
    status, _, text = _get(port, "/apipost/v1/upload", {**_auth(ex), "Content-Type": "multipart/form-data; boundary=b"},
                           "POST", body)
    assert status == 403 and "upload" in text
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/apistream/server_director", headers={"Host": f"127.0.0.1:{port}", **_auth(ex)})
    r = c.getresponse()
    assert r.status == 200
    assert r.getheader("Access-Control-Allow-Origin") is None
    # not Model Explorer's endless stream (one held connection per page: a notebook with
    # seven frames would starve the seventh), but one event: come back in a day
    assert r.getheader("Content-Type") == "text/event-stream" and r.read() == b"retry: 86400000\n\n"
    c.close()


def test_server_is_bound_to_loopback_only(explored):
    _, ex, _ = explored
    _live(ex)
    listening = [c for c in psutil.Process(ex.server.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and {c.laddr.ip for c in listening} == {"127.0.0.1"}
    assert {c.laddr.port for c in listening} == {ex.server.port}


def test_a_port_in_use_picks_another(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    srv = ExploreServer(port=port, roots=[tmp_path])
    try:
        srv.wait()
        assert srv.alive() and srv.port != port
        status, body = srv.request("/check_health")
        assert (status, body) == (200, "model_explorer_ok")
        os.kill(srv.pid, signal.SIGINT)  # Jupyter's interrupt reaches the kernel's process group
        time.sleep(1.0)
        assert srv.alive() and srv.request("/check_health")[0] == 200
    finally:
        srv.close()
        busy.close()
    assert not srv.alive()


def test_no_orphan_when_the_parent_dies(explored, tmp_path):
    root, _, _ = explored
    code = ("import sys, time\nfrom workbench.explore import Explorer\n"
            f"ex = Explorer({str(root)!r})\nex.server.wait()\nprint(ex.server.pid, flush=True)\ntime.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        assert psutil.pid_exists(pid)
        parent.send_signal(signal.SIGKILL)  # no atexit, no finalizer: the child must notice alone
        parent.wait(10)
        deadline = time.time() + 15
        while time.time() < deadline and psutil.pid_exists(pid):
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.2)
        alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        assert not alive, f"server {pid} outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_close_stops_the_server_and_show_starts_a_new_one(samples, tmp_path):
    ex = Explorer(samples["llama"], graphs_dir=tmp_path / "g")
    first = ex.server.wait()
    ex.close()
    assert not first.alive()
    assert ex.server is first
    ex._ensure_server()  # what the next show() does
    assert ex.server is not first and ex.server.wait().alive()


# ---- the CLI -----------------------------------------------------------------------------
def _cli(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workbench.cli", "explore", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_cli_prints_a_url_whose_health_answers(explored, tmp_path):
    root, _, _ = explored
    project = copy_project(root, tmp_path, "cli")  # explore/graphs comes along: nothing re-exported
    proc = _cli(["--project", str(project), "--json"])
    try:
        line = proc.stdout.readline()
        out = json.loads(line)
        assert set(out) >= {"url", "graphs"} and all(g["ok"] for g in out["graphs"].values())
        assert out["graphs"]["original"]["cached"]
        parsed = urllib.parse.urlparse(out["url"])
        assert parsed.hostname == "127.0.0.1"
        secret = urllib.parse.parse_qs(parsed.query)[SECRET_PARAM][0]
        port = parsed.port
        status, _, text = _open(port, "/check_health", secret)
        assert (status, text) == (200, "model_explorer_ok")
        assert _get(port, "/check_health")[0] == 403
        assert _open(port, "/check_health", secret, {"Host": f"rebound.example:{port}"})[0] == 403
        listening = [c for c in psutil.Process(out["pid"]).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        assert {c.laddr.ip for c in listening} == {"127.0.0.1"}
        data = json.loads(urllib.parse.parse_qs(parsed.query)["data"][0])
        assert len(data["models"]) == 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        assert proc.stdout.read() == ""  # exactly one JSON line
        time.sleep(0.5)
        assert not psutil.pid_exists(out["pid"]) or psutil.Process(out["pid"]).status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_human_mode_prints_the_url_first(explored, tmp_path, samples):
    root, _, graphs = explored
    proc = _cli(["--project", str(copy_project(root, tmp_path, "cli2")), "--tflite", str(graphs["tflite"].path)])
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and f"{SECRET_PARAM}=" in url
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    bad = _cli([str(samples["llama"]), "--project", str(root), "--json"])
    out, _ = bad.communicate(timeout=60)
    assert bad.returncode == 1 and "either" in json.loads(out)["error"]
