"""The Model Explorer guard against a hostile caller who holds the secret (#21): a parameter
the guard checks may not be given twice (Flask reads the first value, a dict the last), the
secret never stays in an address, the cookie is valid on its own port only, and fetch
metadata is read in any letter case. Every test talks to the real server process."""

from __future__ import annotations

import http.client
import json
import urllib.parse

import pytest

from workbench.explore import ExploreServer
from workbench.explore.server import SECRET_HEADER, SECRET_PARAM, cookie_name, cookie_value


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A server that may read one folder; a file inside it and one outside."""
    root = tmp_path_factory.mktemp("guard")
    inside = root / "explore"
    inside.mkdir()
    allowed = inside / "allowed.txt"
    allowed.write_text("inside the project")
    outside = root / "outside.txt"
    outside.write_text("PRIVATE: outside the project")
    server = ExploreServer(roots=[inside])
    server.wait()
    yield server, allowed, outside
    server.close()


def _req(server: ExploreServer, path: str, headers: dict | None = None, method: str = "GET",
         body: bytes | None = None, cookie: bool = True):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    h = {"Host": f"127.0.0.1:{server.port}"}
    if cookie:
        h["Cookie"] = f"{cookie_name(server.port)}={cookie_value(server.secret, server.port)}"
    h.update(headers or {})
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    text = r.read().decode(errors="replace")
    c.close()
    return r.status, dict(r.getheaders()), text


def _q(path) -> str:
    return urllib.parse.quote(str(path))


def _cmd(path) -> str:
    return _q(json.dumps({"extensionId": "builtin_pytorch_exportedprogram", "cmdId": "convert",
                          "modelPath": str(path), "settings": {}, "deleteAfterConversion": False}))


def test_a_single_allowed_path_is_read(guarded):
    server, allowed, outside = guarded
    status, _, text = _req(server, f"/api/v1/read_text_file?path={_q(allowed)}")
    assert status == 200 and json.loads(text)["content"] == "inside the project"
    status, _, text = _req(server, f"/api/v1/read_text_file?path={_q(outside)}")
    assert status == 403 and "PRIVATE" not in text


@pytest.mark.parametrize("order", ["outside_first", "allowed_first"])
@pytest.mark.parametrize("second_key", ["path", "PATH", "Path", "p%61th"])
def test_a_repeated_path_is_refused(guarded, order, second_key):
    """Today's hole: `?path=OUTSIDE&path=ALLOWED` passed the guard (it checked the last) and
    Model Explorer read the first."""
    server, allowed, outside = guarded
    first, second = (outside, allowed) if order == "outside_first" else (allowed, outside)
    status, _, text = _req(server, f"/api/v1/read_text_file?path={_q(first)}&{second_key}={_q(second)}")
    assert status == 400 and "more than once" in text and "PRIVATE" not in text, text


def test_a_repeated_command_is_refused_get_and_post(guarded):
    server, allowed, outside = guarded
    status, _, text = _req(server, f"/api/v1/send_command?json={_cmd(outside)}&json={_cmd(allowed)}")
    assert status == 400 and "'json'" in text and "more than once" in text, text
    status, _, text = _req(server, f"/api/v1/send_command?JSON={_cmd(outside)}&json={_cmd(allowed)}")
    assert status == 400, text
    # a JSON body that names modelPath twice (whichever a parser keeps)
    body = ('{"extensionId": "builtin_pytorch_exportedprogram", "cmdId": "convert", '
            f'"modelPath": {json.dumps(str(outside))}, "modelPath": {json.dumps(str(allowed))}, '
            '"settings": {}, "deleteAfterConversion": false}').encode()
    status, _, text = _req(server, "/apipost/v1/send_command", {"Content-Type": "application/json"}, "POST", body)
    assert status == 400 and "modelPath" in text, text
    # the same repeat in a form body is no command at all
    form = f"json={_cmd(outside)}&json={_cmd(allowed)}".encode()
    status, _, text = _req(server, "/apipost/v1/send_command",
                           {"Content-Type": "application/x-www-form-urlencoded"}, "POST", form)
    assert status == 400, text


def test_update_config_with_a_repeated_key_is_refused(guarded):
    server, allowed, outside = guarded
    body = ('{"graphs_list": "[]", "model_sources": [{"url": %s}], "model_sources": [{"url": %s}], '
            '"node_data_sources": [], "node_data_target_models": []}'
            % (json.dumps(str(outside)), json.dumps(str(allowed)))).encode()
    status, _, text = _req(server, "/apipost/v1/update_config", {"Content-Type": "application/json"}, "POST", body)
    assert status == 400 and "model_sources" in text, text


def test_a_repeated_secret_is_refused(guarded):
    server, _, _ = guarded
    status, _, text = _req(server, f"/check_health?{SECRET_PARAM}=wrong-wrong-wrong-wrong&{SECRET_PARAM}="
                                   f"{server.secret}", cookie=False)
    assert status == 400 and "more than once" in text


@pytest.mark.parametrize("path", ["/check_health", "/api/v1/get_extensions", "/"])
def test_the_secret_in_any_address_is_redirected_away(guarded, path):
    server, _, _ = guarded
    status, headers, _ = _req(server, f"{path}?x=1&{SECRET_PARAM}={server.secret}", cookie=False)
    assert status == 303 and headers["Location"] == f"{path}?x=1"
    assert headers["Set-Cookie"].startswith(f"{cookie_name(server.port)}={cookie_value(server.secret, server.port)};")
    status, _, _ = _req(server, f"/check_health?{SECRET_PARAM}={server.secret}", method="POST", body=b"",
                        cookie=False)
    assert status == 400  # a program sends the header, never the secret in a posted address


def test_the_cookie_is_valid_on_its_own_port_only(guarded):
    server, _, _ = guarded
    port = server.port
    status, _, text = _req(server, "/check_health")
    assert (status, text) == (200, "model_explorer_ok")
    for value in (cookie_value(server.secret, port + 1), server.secret):
        status, _, _ = _req(server, "/check_health", {"Cookie": f"{cookie_name(port)}={value}"}, cookie=False)
        assert status == 403, value
    status, _, _ = _req(server, "/check_health", {SECRET_HEADER: server.secret}, cookie=False)
    assert status == 200


@pytest.mark.parametrize("site,mode", [("Cross-Site", "navigate"), ("CROSS-SITE", "cors"),
                                       ("Same-Site", "CORS"), ("same-site", "no-cors")])
def test_fetch_metadata_is_compared_in_any_case(guarded, site, mode):
    server, _, _ = guarded
    status, _, text = _req(server, "/check_health", {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": mode})
    assert status == 403 and "refused" in text
    status, _, _ = _req(server, "/", {"Sec-Fetch-Site": "Same-Site", "Sec-Fetch-Mode": "Navigate"})
    assert status == 200
