"""Model Explorer beside the notebook: original, re-authored and converted graphs side by side.

    ex = Explorer(wb)                  # a Workbench, a project folder or a Hugging Face folder
    ex.show(["original", "reauthored", "tflite"], height=600, layout="split")   # inline, in a cell
    ex.url(["original", "reauthored"]) # the same view for a browser tab (carries its secret)
    ex.show(["original", "reauthored"], overlay="compare")   # numbers on the graphs (workbench.explore.overlays)
    ex.close()                         # or let the kernel end: the server ends with it

One Model Explorer server per kernel (`workbench.explore.server`, a child process we own,
on 127.0.0.1, behind a guard that wants the session's secret), started in the background
and reused by every Explorer; nothing here blocks the kernel for longer than an export.
Graphs are exported once per content (`workbench.explore.graphs`), and a graph that cannot be
exported shows as an error card where its pane would be, beside the ones that can.

The view is Model Explorer's own page, addressed by its URL `data` parameter (the models,
and `uiState.paneStates` for its split view of two panes); a third graph gets a frame of its
own. The frame's address is built in the browser on the notebook page's own host name
(127.0.0.1 or localhost, else 127.0.0.1), because the guard's cookie for one is not sent
to the other. A Jupyter server on another machine needs the port forwarded (see README).

Overlays (`overlay=`: compare, quant, quant_error, sizes) are node-data files written under
`ex.data_dir/overlays/` and named in the same `data` parameter, so choosing one re-colours
the panes and never re-exports a graph. When the split view holds the original and the
re-authored graph, the address turns on Model Explorer's "match node id" sync (their ops
that read a weight share ids); the fuller mapping (layers, modules, fused q|k|v) is written
under `ex.data_dir/sync/` for Model Explorer's "Upload mapping".
"""

from __future__ import annotations

import atexit
import html
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Any, Optional, Sequence, Union
from urllib.parse import quote

from workbench import tempdirs
from workbench.errors import WorkbenchError
from workbench.explore.server import ALLOW_PATH, HEALTH_OK, HEALTH_PATH, SECRET_HEADER, SECRET_PARAM
from workbench.explore.graphs import GRAPHS, TITLES, Graph, GraphSources, GraphStore
from workbench.explore.overlays import OVERLAYS, Overlay, OverlayError
from workbench.progress import Progress

LAYOUTS = ("split", "side", "stacked")
# split:   the first two graphs in Model Explorer's split view; a third in its own frame below
# side:    the same, the third frame beside the split one
# stacked: one frame per graph, one under the other


class ExploreError(WorkbenchError):
    """The explorer cannot show what was asked, or its server cannot run."""


def cache_dir() -> Path:
    """Where graphs of a plain Hugging Face folder go (a project keeps its own)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-workbench" / "explore"


# ---- the server process -----------------------------------------------------------------
def _stop(proc: subprocess.Popen, folder: str) -> None:
    """Stops the server (also run at exit and when its handle is collected)."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdin is not None:
            proc.stdin.close()
    except Exception:  # noqa: BLE001 - best effort at interpreter exit
        pass
    shutil.rmtree(folder, ignore_errors=True)


class ExploreServer:
    """A guarded Model Explorer server in a child process (started at once, not waited for).

    The child ends when this process ends, however it ends: it watches a pipe on its stdin
    that only this process holds, and this process's pid; `close()`, interpreter exit and
    garbage collection stop it too.
    """

    def __init__(self, port: Optional[int] = None, roots: Sequence[Path] = (), files: Sequence[Path] = ()) -> None:
        self.secret = secrets.token_urlsafe(24)
        self.requested_port = port
        self.port: Optional[int] = None
        self._dir = str(tempdirs.make("explore"))  # 0700: the secret file is ours alone
        secret_file = Path(self._dir) / "secret"
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.secret)
        self._port_file = Path(self._dir) / "port.json"
        self.log_path = Path(self._dir) / "server.log"
        cmd = [sys.executable, "-m", "workbench.explore.server", "--port", str(port or 0),
               "--secret-file", str(secret_file), "--port-file", str(self._port_file),
               "--parent-pid", str(os.getpid())]
        for r in roots:
            cmd += ["--allow-root", str(r)]
        for f_ in files:
            cmd += ["--allow-file", str(f_)]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"})
        self._finalizer = weakref.finalize(self, _stop, self.proc, self._dir)
        self._ready = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def wait(self, timeout: float = 60) -> "ExploreServer":
        """Until the server answers its health check (with the secret)."""
        if self._ready:
            return self
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.alive():
                raise ExploreError(f"the Model Explorer server exited (status {self.proc.returncode}) before it "
                                   f"answered:\n{self._log_tail()}",
                                   hint="check that ai-edge-model-explorer imports: python -c 'import model_explorer'")
            if self.port is None and self._port_file.exists():
                try:
                    self.port = int(json.loads(self._port_file.read_text())["port"])
                except (OSError, ValueError, KeyError):
                    pass
            if self.port is not None:
                try:
                    status, body = self.request(HEALTH_PATH, timeout=2)
                    if status == 200 and body == HEALTH_OK:
                        self._ready = True
                        (Path(self._dir) / "secret").unlink(missing_ok=True)
                        return self
                except OSError:
                    pass
            time.sleep(0.1)
        raise ExploreError(f"the Model Explorer server did not answer within {timeout:.0f} s:\n{self._log_tail()}",
                           hint="the machine may be busy: try again, or give a longer timeout")

    def base(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}"

    def request(self, path: str, data: Optional[bytes] = None, headers: Optional[dict] = None,
                timeout: float = 10, secret: bool = True) -> tuple[int, str]:
        """A request to the server as a program makes it (the secret in a header)."""
        h = {SECRET_HEADER: self.secret} if secret else {}
        h.update(headers or {})
        req = urllib.request.Request(self.base() + path, data=data, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def allow(self, roots: Sequence[Path] = (), files: Sequence[Path] = ()) -> None:
        """Lets the server read more folders or files (graphs shown later)."""
        self.wait()
        status, body = self.request(ALLOW_PATH, json.dumps({"roots": [str(r) for r in roots],
                                                            "files": [str(f) for f in files]}).encode(),
                                    {"Content-Type": "application/json"})
        if status != 200:
            raise ExploreError(f"the Model Explorer server refused new files: {body.strip()}",
                               hint="close the explorer (ex.close()) and open it again")

    def close(self) -> None:
        self._finalizer()

    def __repr__(self) -> str:
        state = "running" if self.alive() else f"stopped ({self.proc.returncode})"
        return f"ExploreServer(pid {self.pid}, {self.base() if self.port else 'starting'}, {state})"


_LOCK = threading.Lock()
_SERVER: Optional[ExploreServer] = None


def shared_server(port: Optional[int] = None, roots: Sequence[Path] = (), files: Sequence[Path] = ()) -> ExploreServer:
    """This kernel's server: the running one (told about `roots`/`files`), or a new one."""
    global _SERVER
    with _LOCK:
        if _SERVER is not None and _SERVER.alive():
            if roots or files:
                _SERVER.allow(roots, files)
            return _SERVER
        _SERVER = ExploreServer(port, roots, files)
        return _SERVER


@atexit.register
def _close_shared() -> None:
    if _SERVER is not None:
        _SERVER.close()


# ---- the view ------------------------------------------------------------------------
# The browser keeps about sixteen WebGL contexts per page (older ones are lost and their
# graphs go blank); Model Explorer holds three per pane. Frames of one notebook page keep at
# most this many contexts open between them, the ones looked at last.
WEBGL_BUDGET = 12
WEBGL_PER_PANE = 3
_FRAME_SCRIPT = """
var h='127.0.0.1';try{var p=window.parent.location.hostname;if(p==='localhost'||p==='127.0.0.1'){h=p;}}catch(e){}
var url='http://'+h+':@PORT@'+@PATH@,w=document.getElementById('w'),reg=null;
try{reg=window.top.__ewbExplore=window.top.__ewbExplore||[];}catch(e){}
var me={win:window,cost:@COST@,seen:0,on:false,visible:false};
me.load=function(){if(me.on)return;var f=document.createElement('iframe');f.src=url;f.title=@TITLE@;
f.setAttribute('allow','clipboard-write');w.textContent='';w.appendChild(f);me.on=true;};
me.unload=function(){if(!me.on)return;w.textContent=@CLOSED@;me.on=false;};
function live(e){try{return !e.win.closed&&!!e.win.frameElement&&e.win.frameElement.isConnected;}catch(x){return false;}}
function budget(){if(!reg)return;var keep=reg.filter(live);reg.length=0;Array.prototype.push.apply(reg,keep);
var total=0;keep.forEach(function(e){if(e.on)total+=e.cost;});
var old=keep.filter(function(e){return e.on&&!e.visible&&e!==me;}).sort(function(a,b){return a.seen-b.seen;});
while(total>@BUDGET@&&old.length){var e=old.shift();e.unload();total-=e.cost;}}
if(reg)reg.push(me);
if(window.IntersectionObserver){new IntersectionObserver(function(es){for(var i=0;i<es.length;i++){
me.visible=es[i].isIntersecting;if(me.visible){me.seen=Date.now();me.load();budget();}}}).observe(w);}
else{me.load();}
"""


def _frame_html(path_query: str, port: int, height: int, width: str, title: str, panes: int = 1) -> str:
    """An iframe whose own small document opens Model Explorer in a frame inside it, on the
    notebook page's host name (127.0.0.1 or localhost; anything else falls back to
    127.0.0.1). A srcdoc document runs its script even where a notebook front end inserts
    HTML without running scripts (widgets), and it shares the page's origin, so it can read
    the host name.

    Model Explorer opens when the frame is on screen, and the frames of a page share a
    budget of WebGL contexts (WEBGL_BUDGET): when a frame opens past it, the frame looked
    at longest ago closes its Model Explorer (and opens it again when shown), instead of
    the browser dropping the oldest contexts and leaving blank graphs."""
    script = (_FRAME_SCRIPT.replace("@COST@", str(panes * WEBGL_PER_PANE)).replace("@BUDGET@", str(WEBGL_BUDGET))
              .replace("@TITLE@", json.dumps(title)).replace("@PORT@", str(port))
              .replace("@CLOSED@", json.dumps("Model Explorer was closed to free the browser's WebGL contexts for "
                                              "the views shown since; it opens again here when shown."))
              .replace("@PATH@", json.dumps(path_query)))  # last: a path is never read as a placeholder
    doc = ("<style>html,body{margin:0;height:100%}#w{height:100%;font:12px sans-serif;color:#777}"
           "#w iframe{border:0;width:100%;height:100%;display:block}</style>"
           "<div id='w'>Model Explorer opens here when shown…</div><script>" + script.strip() + "</script>")
    return (f"<iframe class='ewb-explore-frame' title='{html.escape(title)}' srcdoc=\"{html.escape(doc)}\" "
            f"style='width:{width};height:{height}px;border:1px solid #ccc;box-sizing:border-box' "
            f"allow='clipboard-write'></iframe>")


class ExploreView:
    """What `Explorer.show` returns: displayed inline by Jupyter (`_repr_html_`)."""

    def __init__(self, frames: list[tuple[list[Graph], str]], failed: list[Graph], port: int, height: int,
                 layout: str, secret_urls: list[str], overlay: Optional[Overlay] = None,
                 sync: Optional[dict] = None) -> None:
        self.frames, self.failed, self.port, self.height, self.layout = frames, failed, port, height, layout
        self.urls = secret_urls  # one per frame, on 127.0.0.1, each with the secret
        self.overlay = overlay  # the node data shown, with its legend
        self.sync = sync  # {"pair", "mode" (or None), "file" (or None), "note"} for the split view

    @property
    def graphs(self) -> list[str]:
        return [g.name for gs, _ in self.frames for g in gs]

    def _error_card(self, g: Graph) -> str:
        return (f"<div class='ewb-explore-error' data-graph='{g.name}' style='border:1px solid #c62828;"
                f"color:#c62828;padding:6px;border-radius:4px;white-space:pre-wrap;margin:2px 0'>"
                f"<b>{html.escape(TITLES.get(g.name, g.name))}</b>: {html.escape(g.error)}"
                + (f"\n<span style='color:#555'>fix: {html.escape(g.hint)}</span>" if g.hint else "") + "</div>")

    def _repr_html_(self) -> str:
        side = self.layout == "side" and len(self.frames) == 2
        parts = []
        for i, (gs, pq) in enumerate(self.frames):
            width = ("66%" if i == 0 else "33%") if side else "100%"
            title = " | ".join(TITLES.get(g.name, g.name) for g in gs)
            caption = " · ".join(f"<b>{html.escape(TITLES.get(g.name, g.name))}</b> "
                                 f"<code>{html.escape(g.label)}</code>" for g in gs)
            parts.append(f"<div class='ewb-explore-pane' data-graphs='{','.join(g.name for g in gs)}' "
                         f"style='width:{width}'><div style='font-size:12px;color:#555'>{caption}</div>"
                         + _frame_html(pq, self.port, self.height, "100%", title, min(2, len(gs))) + "</div>")
        body = (f"<div style='display:flex;gap:6px;align-items:flex-start'>{''.join(parts)}</div>" if side
                else "".join(parts))
        cards = "".join(self._error_card(g) for g in self.failed)
        legend = self.legend_html()
        if legend:
            body = (f"<div style='display:flex;gap:8px;align-items:flex-start'><div style='flex:1;min-width:0'>"
                    f"{body}</div>{legend}</div>")
        return f"<div class='ewb-explore-view'>{cards}{body}</div>"

    def legend_html(self) -> str:
        """The overlay's colours and the sync note, beside the frames ("" when neither)."""
        parts = []
        if self.overlay is not None:
            parts.append(self.overlay.legend_html())
        if self.sync and self.sync.get("note"):
            parts.append(f"<div class='ewb-explore-sync' style='margin-top:8px'><b>Sync</b>"
                         f"<div>{html.escape(self.sync['note'])}</div>"
                         + (f"<code style='word-break:break-all;font-size:11px'>{html.escape(str(self.sync['file']))}"
                            f"</code>" if self.sync.get("file") else "") + "</div>")
        if not parts:
            return ""
        return (f"<div class='ewb-explore-legend' style='width:250px;flex:none;font-size:12px;border:1px solid #ddd;"
                f"border-radius:4px;padding:6px;box-sizing:border-box'>{''.join(parts)}</div>")

    def __repr__(self) -> str:
        lines = [f"Model Explorer: {', '.join(self.graphs) or 'nothing to show'}"]
        lines += [f"  open: {u}" for u in self.urls]
        lines += [f"  {g.name}: {g.error}" for g in self.failed]
        if self.overlay is not None:
            lines.append(f"  overlay: {self.overlay.title}: " + "; ".join(i.label for i in self.overlay.legend))
        if self.sync and self.sync.get("note"):
            lines.append(f"  sync: {self.sync['note']}" + (f" {self.sync['file']}" if self.sync.get("file") else ""))
        return "\n".join(lines)


def _need_tflite(path: Path) -> None:
    """Refuses a file that is not a LiteRT flatbuffer before any adapter is asked to read it
    (a missing file is the export's to report, with the other graphs)."""
    if not path.exists():
        return
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ExploreError(f"cannot read the converted model {path}: {e.strerror or e}",
                           hint="give the path of a .tflite made by convert").with_cli(
            "give --tflite the path of a .tflite made by edge-workbench convert") from None
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise ExploreError(f"{path.name} is not a LiteRT model (a .tflite starts with the flatbuffer identifier "
                           f"TFL3; this file does not)", hint="give a .tflite made by convert").with_cli(
            "give --tflite a .tflite made by edge-workbench convert")


def _manifest(tflite: Optional[Path]) -> Optional[dict]:
    """The conversion manifest beside a converted model (None when there is none)."""
    if tflite is None:
        return None
    try:
        man = json.loads(Path(tflite).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return man if isinstance(man, dict) and man.get("kind") == "edge-workbench/conversion" else None


# ---- the explorer ----------------------------------------------------------------------
class Explorer:
    """Graphs of one model (project or Hugging Face folder) in Model Explorer, inline.

    `source`: a Workbench, a project folder, or a Hugging Face folder. `tflite`: a converted
    model to show instead of the project's newest fresh conversion. `port`: the port to try
    first when this kernel's server is not running yet (taken: another is picked).
    """

    def __init__(self, source: Any, *, port: Optional[int] = None, tflite: Union[str, Path, None] = None,
                 graphs_dir: Union[str, Path, None] = None) -> None:
        from workbench.project import PROJECT_FILE, Workbench

        self._wb = None
        self._project: Optional[Path] = None
        self._hf: Optional[Path] = None
        self._tflite = Path(tflite).resolve() if tflite is not None else None
        if self._tflite is not None:
            _need_tflite(self._tflite)
        if port is not None and not 0 <= int(port) <= 65535:
            raise ExploreError(f"port {port} is not a TCP port", hint="give a port from 1 to 65535, or none for any "
                               "free port").with_cli("give --port from 1 to 65535, or leave it out for any free port")
        if isinstance(source, Workbench):
            self._wb = source
            root = source.root
        else:
            from workbench import hub

            p = hub.resolve(source, need="all") if hub.is_hub_id(source) else Path(source)  # org/name[@rev] too
            if (p / PROJECT_FILE).is_file():
                self._project = p
                root = p
            elif (p / "config.json").is_file():
                self._hf = p.resolve()
                root = None
            else:
                raise ExploreError(f"{p} is neither a project nor a Hugging Face model folder",
                                   hint="give a project (Workbench or its folder) or a folder holding config.json")
        if graphs_dir is not None:
            folder = Path(graphs_dir)
            data_dir = folder
        elif root is not None:
            data_dir = Path(root) / "explore"
            folder = data_dir / "graphs"
        else:
            import hashlib

            data_dir = cache_dir() / hashlib.sha256(str(self._hf).encode()).hexdigest()[:12]
            folder = data_dir / "graphs"
        self.store = GraphStore(folder)
        # What the server may read: the graphs, and anything else written beside them
        # (node-data files, sync mappings) under this folder.
        self.data_dir = data_dir.resolve()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            ignore = folder.parent / ".gitignore"
            if root is not None and folder.parent == Path(root) / "explore" and not ignore.exists():
                ignore.write_text("# exported graphs: derived, re-made on demand\n*\n")
        except OSError as e:
            raise ExploreError(f"cannot write the graphs folder {folder}: {e.strerror}",
                               hint="give graphs_dir= a writable folder") from None
        self.graphs: dict[str, Graph] = {}
        self.server = shared_server(port, roots=[self.data_dir], files=[self._tflite] if self._tflite else [])

    # ---- sources --------------------------------------------------------------------
    def sources(self) -> GraphSources:
        """What the graphs are made from now (a project folder is read afresh each time)."""
        if self._hf is not None:
            return GraphSources.from_hf(self._hf, tflite=self._tflite)
        if self._wb is not None:
            return GraphSources.from_project(self._wb, tflite=self._tflite)
        from workbench.project import Workbench

        wb = Workbench.open(self._project, readonly=True)
        return GraphSources.from_project(wb, tflite=self._tflite)

    def available(self) -> list[str]:
        """The graphs that can be asked for: the converted one only when there is one."""
        src = self.sources()
        return [n for n in GRAPHS if n != "tflite" or src.tflite is not None]

    def _names(self, names: Optional[Sequence[str]], src: GraphSources) -> list[str]:
        if names is None:
            return [n for n in GRAPHS if n != "tflite" or src.tflite is not None]
        if isinstance(names, str):
            names = [names]
        names = list(names)
        if not names:
            raise ExploreError("no graph asked for", hint=f"choose one to three of {', '.join(GRAPHS)}")
        for n in names:
            if n not in GRAPHS:
                raise ExploreError(f"unknown graph {n!r}", hint=f"choose from {', '.join(GRAPHS)}")
        if len(set(names)) != len(names):
            raise ExploreError(f"a graph is asked for twice: {names}", hint="name each graph once")
        if "tflite" in names and src.tflite is None:
            raise ExploreError(f"no converted model to show: {src.no_tflite[0]}", hint=src.no_tflite[1])
        return names

    def export(self, names: Optional[Sequence[str]] = None, progress: Optional[Progress] = None,
               force: bool = False) -> dict[str, Graph]:
        """Exports what changed (or is missing) among `names`; returns every graph asked for."""
        self._ensure_server()
        src = self.sources()
        names = self._names(names, src)
        graphs = self.store.ensure(src, names, progress=progress, force=force)
        extra = [g.path for g in graphs.values() if g.ok and g.path is not None
                 and self.data_dir not in g.path.parents]
        if extra:
            self.server.allow(files=extra)
        self.graphs.update(graphs)
        return graphs

    # ---- URLs and views ----------------------------------------------------------------
    @staticmethod
    def _data(graphs: Sequence[Graph], overlay: Optional[Overlay] = None, sync_mode: Optional[str] = None) -> dict:
        """Model Explorer's `data` parameter: the models, and a pane for each of the first two
        (plus the overlay's node data by model label, and a sync mode). Model Explorer renames
        a graph id it has seen in an earlier model of the same page (`graph`, `graph (2)`,
        `graph (3)`, ...), so the panes name the ids it will use."""
        seen: dict[str, int] = {}
        panes = []
        for i, g in enumerate(graphs):
            gid = (overlay.graph_ids.get(g.name) if overlay is not None else None) or g.graph_id or "graph"
            n = seen.get(gid, 0)
            seen[gid] = n + 1
            if i < 2:
                group = g.layers_group()
                expand = overlay.expand.get(g.name) if overlay is not None else None
                panes.append({"deepestExpandedGroupNodeIds": expand or ([f"{group}___group___"] if group else []),
                              "selectedNodeId": "",
                              "selectedGraphId": gid if n == 0 else f"{gid} ({n + 1})",
                              "selectedCollectionLabel": g.label, "widthFraction": 1 / min(2, len(graphs)),
                              "selected": i == 0, "flattenLayers": False})
        labels = [g.label for g in graphs]
        if len(set(labels)) != len(labels):
            raise ExploreError(f"two graphs share a label ({labels}): node data could not tell them apart",
                               hint="rename one of the files")
        data: dict[str, Any] = {"models": [{"url": str(g.path), "adapterId": g.adapter} for g in graphs],
                                "uiState": {"paneStates": panes}}
        if overlay is not None:
            shown = [g for g in graphs if g.name in overlay.files]
            if shown:
                data["nodeData"] = [str(overlay.files[g.name]) for g in shown]
                data["nodeDataTargets"] = [g.label for g in shown]
        if sync_mode:
            data["sync"] = {"mode": sync_mode}
        return data

    @classmethod
    def path_query(cls, graphs: Sequence[Graph], overlay: Optional[Overlay] = None,
                   sync_mode: Optional[str] = None) -> str:
        return "/?data=" + quote(json.dumps(cls._data(graphs, overlay, sync_mode), separators=(",", ":")), safe="")

    def _frames(self, graphs: list[Graph], layout: str) -> list[list[Graph]]:
        if layout == "stacked":
            return [[g] for g in graphs]
        return [graphs[:2]] + ([graphs[2:]] if len(graphs) > 2 else [])

    def url(self, names: Optional[Sequence[str]] = None, host: str = "127.0.0.1", progress: Optional[Progress] = None,
            timeout: float = 60, overlay: Optional[str] = None, comparison: Any = None, sync: bool = True) -> str:
        """One address showing every graph asked for (the first two in the split view; the
        third is in the page's model list), with the secret: for a browser tab."""
        graphs = [g for g in self.export(names, progress).values() if g.ok]
        if not graphs:
            raise ExploreError("no graph could be exported", hint="see ex.graphs[name].error")
        ov = self._overlay_for(overlay, graphs, comparison)
        mode = self._sync_for(graphs[:2], sync)["mode"] if sync and len(graphs) >= 2 else None
        self.server.wait(timeout)
        return (f"http://{host}:{self.server.port}{self.path_query(graphs, ov, mode)}"
                f"&{SECRET_PARAM}={self.server.secret}")

    def show(self, names: Optional[Sequence[str]] = None, height: int = 600, layout: str = "split",
             progress: Optional[Progress] = None, timeout: float = 60, overlay: Optional[str] = None,
             comparison: Any = None, sync: bool = True, export: bool = True) -> ExploreView:
        """The graphs inline (a Jupyter display object). Exports what changed first
        (`export=False`: only the graphs exported before, as they are: what re-colouring with
        another overlay needs). `overlay`: compare | quant | quant_error | sizes (see
        `overlays()`); `comparison`: which comparison the compare overlay shows (a project's
        comparison name, a Comparison, or a JSON file; default: the project's newest fresh one).
        `sync`: Model Explorer's sync navigation between the two panes of the split view."""
        if layout not in LAYOUTS:
            raise ExploreError(f"unknown layout {layout!r}", hint=f"choose from {', '.join(LAYOUTS)}")
        if not isinstance(height, int) or not 150 <= height <= 4000:
            raise ExploreError(f"height {height!r} is not a pixel height between 150 and 4000",
                               hint="e.g. height=600")
        graphs = self.export(names, progress) if export else self._exported(names)
        ok = [g for g in graphs.values() if g.ok]
        failed = [g for g in graphs.values() if not g.ok]
        ov = self._overlay_for(overlay, ok, comparison) if ok else None
        self.server.wait(timeout)
        frames_graphs = self._frames(ok, layout) if ok else []
        sync_info = self._sync_for(frames_graphs[0], sync) if frames_graphs and len(frames_graphs[0]) == 2 else None
        frames = []
        for fs in frames_graphs:
            mode = sync_info["mode"] if sync_info and fs is frames_graphs[0] else None
            frames.append((fs, self.path_query(fs, ov, mode)))
        urls = [f"{self.server.base()}{pq}&{SECRET_PARAM}={self.server.secret}" for _, pq in frames]
        return ExploreView([(fs, f"{pq}&{SECRET_PARAM}={self.server.secret}") for fs, pq in frames], failed,
                           self.server.port, height, layout, urls, ov, sync_info)

    def _exported(self, names: Optional[Sequence[str]]) -> dict[str, Graph]:
        """The graphs exported before (no export, no hashing of inputs)."""
        wanted = list(self.graphs) if names is None else ([names] if isinstance(names, str) else list(names))
        missing = [n for n in wanted if n not in self.graphs]
        if missing:
            raise ExploreError(f"not exported yet: {', '.join(missing)}",
                               hint="call ex.show(...) or ex.export(...) with them first")
        return {n: self.graphs[n] for n in wanted}

    # ---- overlays and sync -------------------------------------------------------------
    @property
    def overlays_dir(self) -> Path:
        return self.data_dir / "overlays"

    def overlays(self) -> list[dict]:
        """Each overlay: name, title, the graphs it colours, whether it can be shown now and why not."""
        from workbench.explore.overlays import APPLIES_TO, TIMING_UNAVAILABLE

        out = []
        src = None
        for name, title in OVERLAYS.items():
            why = ""
            if name == "timing":
                why = TIMING_UNAVAILABLE
            elif name == "compare":
                try:
                    _, cname = self._comparison(None)
                    title = f"{title} ({cname})"
                except WorkbenchError as e:
                    why = e.message
            else:
                src = src or self.sources()
                if src.tflite is None:
                    why = f"no converted model: {src.no_tflite[0]}"
                elif name == "quant_error":
                    man = _manifest(src.tflite)
                    if not (man or {}).get("quant_error"):
                        why = (f"{src.tflite.name} has no per-op quantization error "
                               f"({'not quantized' if man and man.get('recipe') == 'none' else 'not measured'})")
            out.append({"name": name, "title": title, "graphs": list(APPLIES_TO[name]), "available": not why,
                        "why": why})
        return out

    def _comparison(self, comparison: Any) -> tuple[Any, str]:
        """(Comparison, its name) for the compare overlay."""
        from workbench.compare import Comparison

        if isinstance(comparison, Comparison):
            return comparison, "given"
        if isinstance(comparison, (str, Path)) and Path(comparison).suffix == ".json" and Path(comparison).is_file():
            try:
                d = json.loads(Path(comparison).read_text())
                return Comparison.from_json(d.get("result", d)), Path(comparison).stem
            except (ValueError, KeyError, TypeError) as e:
                raise OverlayError(f"{comparison} is not a comparison ({type(e).__name__}: {e})",
                                   hint="give a file written by wb.compare(...) or Comparison.to_json()") from None
        wb = self._project_wb()
        if wb is None:
            raise OverlayError("no comparison to show: a Hugging Face folder has none recorded",
                               hint="pass comparison= (a Comparison from compare(...), or its JSON file)")
        if comparison is not None:
            return wb.comparison(str(comparison)), str(comparison)
        states = wb.status(detail=True)["comparisons"]
        fresh = [n for n, st in states.items() if st == "fresh"]
        if not fresh:
            raise OverlayError("the project has no fresh comparison" + (
                f" (stale: {', '.join(states)})" if states else ""),
                hint="compare first: wb.compare('first') (or pass comparison=NAME to show a stale one knowingly)")
        name = max(fresh, key=lambda n: wb.comparisons[n].get("created", ""))
        return wb.comparison(name), name

    def _project_wb(self):
        if self._wb is not None:
            return self._wb
        if self._project is not None:
            from workbench.project import Workbench

            return Workbench.open(self._project, readonly=True)
        return None

    def _tensor_names(self) -> dict:
        try:
            return dict(self.sources().get_mapping().tensor_names)
        except WorkbenchError:
            return {}

    def overlay(self, name: str, names: Optional[Sequence[str]] = None, comparison: Any = None,
                export: bool = True) -> Overlay:
        """Writes (or finds) the node-data files of overlay `name` for the graphs `names`
        (default: those it applies to); never exports a graph that is cached."""
        graphs = self.export(names, None) if export else self._exported(names)
        return self._overlay_for(name, [g for g in graphs.values() if g.ok], comparison)

    def _overlay_for(self, name: Optional[str], graphs: Sequence[Graph], comparison: Any) -> Optional[Overlay]:
        from workbench.explore import overlays as ovl

        if name is None:
            return None
        if name not in OVERLAYS:
            raise ExploreError(f"unknown overlay {name!r}", hint=f"choose from {', '.join(OVERLAYS)} or None")
        if name == "timing":
            raise OverlayError(ovl.TIMING_UNAVAILABLE, hint="choose compare, quant, quant_error or sizes")
        by_name = {g.name: g for g in graphs}
        if not any(n in by_name for n in ovl.APPLIES_TO[name]):
            raise OverlayError(f"the {OVERLAYS[name]} colours the {' and '.join(ovl.APPLIES_TO[name])} graph"
                               f"{'s' if len(ovl.APPLIES_TO[name]) > 1 else ''}, which is not shown",
                               hint=f"show {' or '.join(repr(n) for n in ovl.APPLIES_TO[name])} with it")
        folder = self.overlays_dir
        if name == "compare":
            c, cname = self._comparison(comparison)
            return ovl.compare_overlay(by_name, c, cname, self._tensor_names(), folder)
        t = by_name["tflite"]
        index = ovl.tflite_index(t.path, self.data_dir / "tflite")
        if name == "quant":
            return ovl.quant_overlay(t, index, folder)
        if name == "sizes":
            return ovl.sizes_overlay(t, index, folder)
        return ovl.quant_error_overlay(t, index, _manifest(t.path), folder)

    def sync_mapping(self, left: str = "original", right: str = "reauthored", export: bool = True) -> Path:
        """Model Explorer's sync-navigation mapping between two graphs (left pane first):
        original <-> re-authored from the weight mapping, re-authored <-> converted from the
        module namespaces they share. Load it with Model Explorer's "Upload mapping"."""
        graphs = self.export([left, right]) if export else self._exported([left, right])
        info = self._sync_for([graphs[left], graphs[right]], True)
        if info["file"] is None:
            raise ExploreError(f"no sync mapping between {left} and {right}: {info['note']}",
                               hint="pair original with reauthored, or reauthored with tflite")
        return info["file"]

    def _sync_for(self, pair: Sequence[Graph], enabled: bool) -> dict:
        """The split view's sync: the mode the address turns on, the mapping file, a note."""
        from workbench.explore import overlays as ovl

        names = [g.name for g in pair]
        out: dict[str, Any] = {"pair": names, "mode": None, "file": None, "note": ""}
        if not enabled or len(pair) != 2 or not all(g.ok for g in pair):
            return out
        folder = self.data_dir / "sync"
        filename = f"{pair[0].label}__{pair[1].label}.json"
        upload = ("Model Explorer's Sync button (between the two panes' titles) → Upload (\"Upload mapping from "
                  "computer\") → this file:")
        if set(names) == {"original", "reauthored"}:
            g = {x.name: x for x in pair}
            try:
                m = self.sources().get_mapping()
            except WorkbenchError as e:
                out["note"] = f"no mapping to pair the graphs with: {e.message}"
                return out
            rows = [(e.target, list(e.sources)) for e in m.table() if e.target and e.sources]
            mapping = ovl.pytorch_sync(ovl.pt_nodes(g["original"]), ovl.pt_nodes(g["reauthored"]), rows,
                                       original_left=names[0] == "original")
            out["file"] = ovl.write_sync(folder, {"pair": names, "keys": [x.key for x in pair],
                                                  "mapping": m.fingerprint()}, filename, mapping)
            out["mode"] = "match_node_id"
            out["note"] = ("on: selecting an op that reads a weight in one pane selects its twin in the other "
                           "(Model Explorer's \"match node id\"). For layers, modules and the fused q|k|v too: "
                           + upload)
        elif set(names) == {"reauthored", "tflite"}:
            g = {x.name: x for x in pair}
            index = ovl.tflite_index(g["tflite"].path, self.data_dir / "tflite")
            gid = g["tflite"].graph_id
            if gid not in index["graphs"]:
                out["note"] = f"the converted model has no {gid} graph"
                return out
            mapping = ovl.tflite_sync(ovl.pt_nodes(g["reauthored"]), index["graphs"][gid]["nodes"],
                                      reauthored_left=names[0] == "reauthored")
            out["file"] = ovl.write_sync(folder, {"pair": names, "keys": [g["reauthored"].key,
                                                                          ovl.file_identity(g["tflite"].path)],
                                                  "graph": gid},
                                         filename.replace(".json", f".{gid}.json"), mapping)
            out["note"] = (f"ops of the same module pair up ({gid}); Model Explorer takes this only through "
                           + upload)
        else:
            out["note"] = "the original and the converted graph share no names to pair them by"
        return out

    def close(self) -> None:
        """Stops this kernel's Model Explorer server (a later show() starts a new one)."""
        global _SERVER
        with _LOCK:
            self.server.close()
            if _SERVER is self.server:
                _SERVER = None

    def __enter__(self) -> "Explorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _ensure_server(self) -> None:
        if not self.server.alive():
            self.server = shared_server(None, roots=[self.data_dir], files=[self._tflite] if self._tflite else [])

    def __repr__(self) -> str:
        return (f"Explorer({self._wb.root if self._wb else self._project or self._hf}, server "
                f"{self.server!r}, graphs: " + ", ".join(f"{n} {'ok' if g.ok else 'failed'}"
                                                         for n, g in self.graphs.items()) + ")")

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td><b>{html.escape(n)}</b></td><td>"
                       + (f"<code>{html.escape(str(g.path))}</code>" if g.ok else
                          f"<span style='color:#c62828'>{html.escape(g.error)}</span>") + "</td></tr>"
                       for n, g in self.graphs.items())
        return (f"<div class='ewb-explorer'><b>Model Explorer</b> server pid {self.server.pid}"
                f"{' on 127.0.0.1:' + str(self.server.port) if self.server.port else ''} — "
                f"{'running' if self.server.alive() else 'stopped'}<table>{rows}</table></div>")


__all__ = ["Explorer", "ExploreError", "ExploreServer", "ExploreView", "LAYOUTS", "OVERLAYS", "shared_server"]
