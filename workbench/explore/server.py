"""The Model Explorer server we own: Model Explorer's Flask app behind a guard, in its own process.

    python -m workbench.explore.server --port 0 --secret-file F --allow-root DIR [--allow-file F ...]
        [--port-file F] [--parent-pid PID]

`workbench.explore.Explorer` starts this; nobody needs to by hand. Model Explorer's
`server.start` builds its Flask app inside the call, binds wherever it is told, checks
neither Host nor caller, and `sys.exit`s when its port is taken. Here, in this process
only, `model_explorer.server` gets a Flask whose WSGI app is wrapped in `Guard` before
the first request, and whose `run` serves on a socket we bound ourselves (127.0.0.1, the
asked port or any free one), so there is no unguarded port at any moment.

The guard (every request):
- Host must be 127.0.0.1:PORT or localhost:PORT (DNS rebinding gets 403);
- an Origin header must be that server's own; Sec-Fetch-Site cross-site is refused, and
  same-site only for a page navigation (the notebook's frame);
- the per-session secret: `?ewb_secret=` once, on a GET of any path (answered with a redirect
  to the same URL without it, so the secret never stays in an address; an HttpOnly,
  SameSite=Strict cookie carries the session from then on: Model Explorer reloads itself at
  `/?data=...`), or the `X-EWB-Secret` header (programs). Cookies are scoped by host, not by
  port, so every server on 127.0.0.1 receives ours: the cookie holds a token derived from the
  secret *and this port* (never the secret), which no server on another port accepts;
- a parameter the guard checks (`path`, `json`, the secret), repeated in a query or a JSON
  body (or spelled twice in other letter cases), is refused: Flask reads the first value,
  so checking any single one would let another through;
- uploads are refused; adapter runs (`send_command`, GET and POST), `read_text_file` and
  model paths pushed with `update_config` must name files under the allowed roots
  (symlinks resolved);
- `Access-Control-Allow-Origin` is never sent; frames only inside 127.0.0.1/localhost pages;
- Model Explorer's push channel (`/apistream/server_director`, an event stream every page
  holds open for "reload" pushes we never send) is answered at once with "retry in a day":
  a browser allows six connections per host, so seven frames of one notebook would otherwise
  leave the seventh waiting for its graphs forever;
- the page turns on Model Explorer's setting "show side panel only when a node is selected"
  unless the user set it: in a notebook's frame the side panel would cover the graphs.

The process ends when its parent does: it watches its stdin (a pipe the parent holds; EOF
when the parent dies, however it dies) and its parent's pid.
"""

from __future__ import annotations

import argparse
import errno
import hmac
import http.cookies
import io
import json
import os
import signal
import socket
import sys
import threading
import time
import types
from pathlib import Path
from typing import Callable, Iterable, Optional
from urllib.parse import parse_qsl, quote, urlencode

SECRET_PARAM = "ewb_secret"
SECRET_HEADER = "X-EWB-Secret"
ALLOW_PATH = "/__ewb__/allow"  # POST {"roots": [...], "files": [...]}, header secret only
HEALTH_PATH = "/check_health"
HEALTH_OK = "model_explorer_ok"
DIRECTOR_PATH = "/apistream/server_director"
# Model Explorer's own setting "Show side panel only when a node is selected", on by default
# in our pages (kept when the user has set it in Model Explorer's settings).
PAGE_DEFAULTS = (b"<script>try{var k='model_explorer_settings',s=JSON.parse(localStorage.getItem(k)||'{}');"
                 b"if(!('show_side_panel_on_node_selection' in s)){s.show_side_panel_on_node_selection=true;"
                 b"localStorage.setItem(k,JSON.stringify(s));}}catch(e){}</script>")


def cookie_name(port: int) -> str:
    """Cookies ignore ports, so each server's cookie carries its own port in its name."""
    return f"ewb_explore_{port}"


def cookie_value(secret: str, port: int) -> str:
    """The cookie's token: the secret bound to this port (HMAC), so the cookie a browser sends
    to every server on this host is accepted by this port's server only, and never reveals
    the secret itself (which opens the page on any port it is served on)."""
    return hmac.new(secret.encode(), f"ewb-explore-cookie:{port}".encode(), "sha256").hexdigest()


# Parameters whose value the guard checks: each may appear once (any letter case).
CHECKED_PARAMS = ("path", "json", SECRET_PARAM)


def _single(pairs: list[tuple[str, str]], where: str) -> dict[str, str]:
    """The pairs as a dict, refusing a checked key given twice, in any letter case: Flask
    reads the first of a repeated key, `dict()` keeps the last, and a check of one value
    would let the other through."""
    seen: dict[str, str] = {}
    for k, _ in pairs:
        low = k.lower()
        if low in CHECKED_PARAMS:
            if low in seen:
                raise Refused(400, f"{where}: the parameter {low!r} is given more than once "
                                   f"({seen[low]!r} and {k!r}): give it once")
            seen[low] = k
    return dict(pairs)


def _json_once(raw: str, what: str):
    """JSON whose objects name each key once: Flask and this guard would both keep a repeated
    key's last value, but a parser that kept the first would not, so a repeat is refused."""
    def pairs_hook(pairs: list) -> dict:
        keys = [k for k, _ in pairs]
        for k in keys:
            if keys.count(k) > 1:
                raise Refused(400, f"{what}: the key {k!r} is given more than once: give it once")
        return dict(pairs)

    try:
        return json.loads(raw or "{}", object_pairs_hook=pairs_hook)
    except ValueError:
        raise Refused(400, f"{what}: the body is not JSON") from None


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


class Allowed:
    """Files the server may read or run an adapter on: under a root, or named one by one."""

    def __init__(self, roots: Iterable[str] = (), files: Iterable[str] = ()) -> None:
        self.roots: list[str] = []
        self.files: set[str] = set()
        self._lock = threading.Lock()
        self.add(roots, files)

    def add(self, roots: Iterable[str] = (), files: Iterable[str] = ()) -> None:
        with self._lock:
            for r in roots:
                r = _real(r)
                if r not in self.roots:
                    self.roots.append(r)
            self.files.update(_real(f) for f in files)

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str) or not path or "\0" in path:
            return False
        p = _real(path)
        if p in self.files:
            return True
        return any(p.startswith(r.rstrip(os.sep) + os.sep) for r in self.roots)


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


class Guard:
    """WSGI middleware in front of Model Explorer's Flask app (see the module docstring)."""

    def __init__(self, app: Callable, port: int, secret: str, allowed: Allowed) -> None:
        self.app, self.port, self.secret, self.allowed = app, port, secret, allowed
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        self.origins = {f"http://{h}" for h in self.hosts}
        self.cookie = cookie_name(port)
        self.token = cookie_value(secret, port)
        self._adapter_lock = threading.Lock()

    # ---- checks ---------------------------------------------------------------------
    def _secret_ok(self, given: Optional[str]) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.secret.encode())

    def _cookie_ok(self, given: Optional[str]) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def _cookie_secret(self, environ: dict) -> Optional[str]:
        raw = environ.get("HTTP_COOKIE", "")
        if not raw:
            return None
        try:
            jar = http.cookies.SimpleCookie(raw)
        except http.cookies.CookieError:
            return None
        morsel = jar.get(self.cookie)
        return morsel.value if morsel else None

    def _check_request(self, environ: dict) -> None:
        host = environ.get("HTTP_HOST", "")
        if host not in self.hosts:
            raise Refused(403, f"Host {host!r} is not this server (127.0.0.1:{self.port} or localhost:{self.port})")
        origin = environ.get("HTTP_ORIGIN")
        if origin is not None and origin not in self.origins:
            raise Refused(403, f"requests from {origin!r} are refused: only this server's own pages may call it")
        # Fetch metadata values are tokens: compared in any letter case
        site = (environ.get("HTTP_SEC_FETCH_SITE") or "").strip().lower()
        if site == "cross-site":
            raise Refused(403, "cross-site requests are refused")
        if site == "same-site" and (environ.get("HTTP_SEC_FETCH_MODE") or "").strip().lower() != "navigate":
            raise Refused(403, "same-site requests other than opening the page are refused")

    def _check_paths(self, path: str, environ: dict, query: dict[str, str]) -> None:
        method = environ.get("REQUEST_METHOD", "GET")
        if path.startswith("/apipost/v1/upload"):
            raise Refused(403, "uploads are disabled on this server: open files of the project instead")
        if path == "/api/v1/send_command":
            self._check_command(query.get("json", "{}"))
        elif path == "/apipost/v1/send_command" and method == "POST":
            self._check_command(self._body(environ))
        elif path in ("/api/v1/read_text_file", "/api/v1/notify_user_provided_model_path"):
            self._need_allowed(query.get("path", ""))
        elif path == "/apipost/v1/update_config" and method == "POST":
            data = _json_once(self._body(environ), "update_config")
            if not isinstance(data, dict):
                raise Refused(400, "update_config: the body is not a JSON object")
            for src in data.get("model_sources", []) or []:
                self._need_allowed(src.get("url", "") if isinstance(src, dict) else "")
            for src in data.get("node_data_sources", []) or []:
                if not str(src).startswith("node_data://"):
                    self._need_allowed(str(src))

    def _check_command(self, raw: str) -> None:
        cmd = _json_once(raw, "send_command")
        if not isinstance(cmd, dict):
            raise Refused(400, "send_command: the command is not a JSON object")
        if cmd.get("deleteAfterConversion"):
            raise Refused(403, "send_command: deleting a model after conversion is not allowed here")
        self._need_allowed(cmd.get("modelPath", ""))

    def _need_allowed(self, path: str) -> None:
        if path not in self.allowed:
            raise Refused(403, f"{path!r} is outside the folders this server may read")

    @staticmethod
    def _body(environ: dict) -> str:
        """Reads the request body and puts it back for the app."""
        try:
            n = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            n = 0
        data = environ["wsgi.input"].read(n) if n > 0 else b""
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        return data.decode("utf-8", errors="replace")

    # ---- responses ------------------------------------------------------------------
    @staticmethod
    def _respond(start_response, status: str, body: str, headers: Optional[list] = None) -> list[bytes]:
        data = body.encode()
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))),
                                ("Cache-Control", "no-store")] + (headers or []))
        return [data]

    def _set_cookie(self) -> tuple[str, str]:
        return ("Set-Cookie", f"{self.cookie}={self.token}; Path=/; HttpOnly; SameSite=Strict")

    def _allow(self, environ: dict, start_response) -> list[bytes]:
        """Adds allowed roots/files (the parent does this when it shows more graphs)."""
        if environ.get("REQUEST_METHOD") != "POST" or environ.get("HTTP_ORIGIN") or environ.get("HTTP_SEC_FETCH_SITE"):
            raise Refused(403, "not for browsers")
        if not self._secret_ok(environ.get("HTTP_X_EWB_SECRET")):
            raise Refused(403, "the secret header is missing or wrong")
        data = _json_once(self._body(environ), "allow")
        try:
            self.allowed.add(data.get("roots", []), data.get("files", []))
        except (AttributeError, TypeError):
            raise Refused(400, "expected {\"roots\": [...], \"files\": [...]}") from None
        return self._respond(start_response, "200 OK", "ok")

    def __call__(self, environ: dict, start_response):
        path = environ.get("PATH_INFO", "") or "/"
        try:
            self._check_request(environ)
            if path == ALLOW_PATH:
                return self._allow(environ, start_response)
            query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
            checked = _single(query, path)
            given = [v for k, v in query if k.lower() == SECRET_PARAM]
            if given:
                if not self._secret_ok(given[0]):
                    raise Refused(403, "wrong secret: use the URL Edge Workbench printed or showed")
                if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
                    raise Refused(400, f"the secret is taken in a page's address only: send it as the "
                                       f"{SECRET_HEADER} header")
                # Any path: answer with the same URL without the secret (it never stays in an
                # address bar, a history or what the app copies into its own URLs); the
                # cookie carries the session from now on.
                rest = [(k, v) for k, v in query if k.lower() != SECRET_PARAM]
                location = quote(path) + (f"?{urlencode(rest)}" if rest else "")
                return self._respond(start_response, "303 See Other", "", [self._set_cookie(), ("Location", location)])
            elif not (self._cookie_ok(self._cookie_secret(environ))
                      or self._secret_ok(environ.get("HTTP_X_EWB_SECRET"))):
                raise Refused(403, "this Model Explorer server needs its secret: open the URL Edge Workbench "
                                   "printed (it carries ?ewb_secret=...)")
            self._check_paths(path, environ, checked)
            if path == DIRECTOR_PATH:  # see the module docstring: no stream held open per page
                body = b"retry: 86400000\n\n"
                start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-store"),
                                          ("Content-Length", str(len(body)))])
                return [body]
            if path == "/api/v1/check_new_version":  # never phones home
                body = json.dumps({"version": "", "runningVersion": "", "releaseUrl": "", "desktopAppUrl": ""})
                start_response("200 OK", [("Content-Type", "application/json")])
                return [body.encode()]
        except Refused as e:
            return self._respond(start_response, f"{e.status} {'Forbidden' if e.status == 403 else 'Bad Request'}",
                                 f"refused: {e.reason}\n")

        def start(status, headers, exc_info=None):
            headers = [(k, v) for k, v in headers if k.lower() not in ("access-control-allow-origin",
                                                                      "access-control-allow-credentials")]
            headers += [("Content-Security-Policy", "frame-ancestors 'self' http://127.0.0.1:* "
                                                            "http://localhost:*"),
                                ("Referrer-Policy", "no-referrer"), ("X-Content-Type-Options", "nosniff")]
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        if path in ("/api/v1/send_command", "/apipost/v1/send_command"):
            # One adapter run at a time: the page asks for every model at once, and
            # torch.export.load is not thread-safe (a global deserializer); one at a time
            # also keeps a large model's memory to one copy.
            with self._adapter_lock:
                return self.app(environ, start)
        if path == "/" and environ.get("REQUEST_METHOD") == "GET":
            return self._page(environ, start)
        return self.app(environ, start)

    def _page(self, environ: dict, start) -> list[bytes]:
        """Model Explorer's page, with its side panel set to open on a node selected (unless
        the user chose otherwise in its settings): in a notebook's frame the panel would
        otherwise cover most of each pane of the split view."""
        captured: dict = {}

        def keep(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        body = b"".join(self.app(environ, keep))
        headers = captured.get("headers", [])
        if "html" in dict((k.lower(), v) for k, v in headers).get("content-type", "") and b"<head>" in body:
            body = body.replace(b"<head>", b"<head>" + PAGE_DEFAULTS, 1)
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"] + [("Content-Length", str(len(body)))]
        start(captured.get("status", "200 OK"), headers)
        return [body]


# ---- the process ---------------------------------------------------------------------
def bind(port: int) -> socket.socket:
    """A socket bound to 127.0.0.1: the asked port, or any free one when it is taken (or 0).
    Not listening yet, so Model Explorer's own "port in use" probe finds it free."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError as e:
        if e.errno != errno.EADDRINUSE or port == 0:
            s.close()
            raise
        s.bind(("127.0.0.1", 0))
    s.set_inheritable(False)
    return s


def _watch_parent(parent_pid: Optional[int]) -> None:
    """Ends this process when the parent goes: EOF on stdin, or the parent pid gone."""

    def stdin_eof() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os._exit(0)

    def parent_gone() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=stdin_eof, daemon=True).start()
    if parent_pid:
        threading.Thread(target=parent_gone, daemon=True).start()


def serve(sock: socket.socket, secret: str, allowed: Allowed) -> None:
    """Runs Model Explorer's `server.start` with its Flask app guarded and served on `sock`."""
    import flask
    from werkzeug.serving import make_server

    from model_explorer import server as me_server
    from model_explorer.config import ModelExplorerConfig

    port = sock.getsockname()[1]

    class GuardedFlask(flask.Flask):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            self.wsgi_app = Guard(self.wsgi_app, port, secret, allowed)  # type: ignore[method-assign]

        def run(self, host=None, port=None, **kw) -> None:  # noqa: ARG002 - we serve on our own socket
            sock.listen(64)
            make_server("127.0.0.1", 0, self, threaded=True, fd=sock.fileno()).serve_forever()

    shim = types.ModuleType("flask")
    shim.__dict__.update(flask.__dict__)
    shim.Flask = GuardedFlask  # type: ignore[attr-defined]
    me_server.flask = shim  # only model_explorer.server sees the guarded Flask
    me_server._check_new_version = lambda print_msg=True: {  # no calls to the package index
        "version": "", "runningVersion": "", "releaseUrl": "", "desktopAppUrl": ""}
    me_server.start(host="127.0.0.1", port=port, config=ModelExplorerConfig(), no_open_in_browser=True,
                    skip_health_check=True)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0, help="the port to try first (0: any free one)")
    ap.add_argument("--secret-file", required=True, type=Path, help="a file holding the session's secret")
    ap.add_argument("--allow-root", action="append", default=[], help="a folder whose files may be read")
    ap.add_argument("--allow-file", action="append", default=[], help="one file that may be read")
    ap.add_argument("--port-file", type=Path, default=None, help="where to write the port once bound")
    ap.add_argument("--parent-pid", type=int, default=None, help="end when this process ends")
    args = ap.parse_args(argv)
    secret = args.secret_file.read_text().strip()
    if len(secret) < 16:
        print("the secret is too short (16 characters at least)", file=sys.stderr)
        return 2
    if args.parent_pid:
        # Managed by a parent: an interrupt meant for the kernel (Jupyter signals the whole
        # process group) must not stop the server; the parent stops it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _watch_parent(args.parent_pid)
    sock = bind(args.port)
    port = sock.getsockname()[1]
    if args.port_file:
        tmp = args.port_file.with_name(args.port_file.name + ".tmp")
        tmp.write_text(json.dumps({"port": port, "pid": os.getpid()}))
        os.replace(tmp, args.port_file)
    # Model Explorer prints its banner and extension list on stdout: keep our stdout clean.
    sys.stdout = sys.stderr
    serve(sock, secret, Allowed(args.allow_root, args.allow_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
