"""Graph files for Model Explorer, cached by what they are made from.

    store = GraphStore("my-project/explore/graphs")
    graphs = store.ensure(GraphSources.from_project(wb), ["original", "reauthored", "tflite"])
    graphs["reauthored"].path     # .../explore/graphs/<key>/reauthored.pt2, or None with .error

- original: the transformers model (`config.use_cache = False`) on a short fixed input,
  exported with `torch.export` and saved with `torch.export.save` (.pt2);
- reauthored: the litert-torch model built from the blueprint and filled through the
  mapping, one prefill-shaped forward (fixed tokens and positions, a small KV cache), its
  composite markers removed (they cannot be serialized and are not ops);
- tflite: a converted model, used where it is (the project's newest fresh conversion).

Exports run in a child process (`python -m workbench.explore.graphs SPEC.json`), so torch.export's
memory never stays in the kernel and a crash cannot take it down. Each graph's folder is
named by the hash of its inputs (checkpoint fingerprint and config, or the mapping's
fingerprint, which covers the blueprint; export settings; package versions), so an
unchanged graph is never exported twice and a changed one never read stale. Every graph
file keeps a stable name (`original.pt2`, `reauthored.pt2`): Model Explorer labels a model
by its file name and node data targets that label. A failed export records its error
beside it, and the other graphs are unaffected. Beside each graph, `<name>.nodes.json`
lists its nodes as Model Explorer's adapter names them (id, label, namespace), with each
node's module stack and the parameters it reads (what overlays and sync mappings are built
from).

Node ids are chosen so the two PyTorch graphs agree where they mean the same thing: the op
that reads a weight is named after the checkpoint tensor it comes from, in both graphs
(`model_layers_1_self_attn_o_proj`; in the re-authored graph through the mapping, so the
fused q|k|v projection is named after q_proj); every other op is prefixed with its module
(`model_layers_1_self_attn__mul_2`, `transformer_blocks_1_atten_func__mul_2`), so no
unrelated ops share an id. Model Explorer's "match node id" sync then pairs the weights'
ops across the split view with no file to load.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence

from workbench._io import atomic_write_bytes, digest
from workbench.errors import WorkbenchError
from workbench.progress import Progress, report

GRAPHS = ("original", "reauthored", "tflite")
TITLES = {"original": "original (transformers)", "reauthored": "re-authored (litert-torch)",
          "tflite": "converted (.tflite)"}
ADAPTERS = {".pt2": "builtin_pytorch_exportedprogram", ".tflite": "builtin_tflite_flatbuffer"}
EXPORT_VERSION = 2  # bump when the export itself changes: every cached graph is redone
# 2: shared node ids for the ops that read a weight; module stacks and parameters in the node index
TOKENS = 8  # the fixed input: this many token ids
KV = 32  # the re-authored model's KV cache length in its export
KEEP = 2  # cached exports kept per graph (the newest)
RECORD = "graph.json"


class GraphError(WorkbenchError):
    """A graph that cannot be exported or found."""


@dataclasses.dataclass(frozen=True)
class Graph:
    """One graph as Model Explorer will read it, or why it cannot."""

    name: str  # original | reauthored | tflite
    path: Optional[Path]  # the file Model Explorer reads; None when the export failed
    key: str = ""  # the cache key (hash of the inputs); "" for a .tflite used in place
    error: str = ""
    hint: str = ""
    seconds: float = 0.0  # export time (0 when cached or used in place)
    cached: bool = False
    graph_id: str = ""  # the graph a pane selects ("graph" for PyTorch, "prefill_8" for a .tflite)
    nodes: int = 0

    @property
    def ok(self) -> bool:
        return self.path is not None and not self.error

    @property
    def label(self) -> str:
        """What Model Explorer calls the model (its file name); node data targets it."""
        return self.path.name if self.path is not None else self.name

    @property
    def adapter(self) -> str:
        return ADAPTERS.get(self.path.suffix, "") if self.path is not None else ""

    @property
    def nodes_file(self) -> Optional[Path]:
        """The node index (`<name>.nodes.json`) of an exported graph."""
        if self.path is None or self.path.suffix != ".pt2":
            return None
        p = self.path.with_name(f"{self.name}.nodes.json")
        return p if p.is_file() else None

    def layers_group(self) -> str:
        """The namespace holding the decoder layers (`.../LlamaModel_model`,
        `.../DecoderOnlyModel_module`): the group a pane opens first, so the layers show."""
        f = self.nodes_file
        if f is None:
            return ""
        try:
            nodes = json.loads(f.read_text())["nodes"]
        except (OSError, ValueError, KeyError):
            return ""
        for n in nodes:
            parts = (n.get("namespace") or "").split("/")
            for i, part in enumerate(parts):
                if i and part.endswith("_0"):
                    return "/".join(parts[:i])
        return ""

    def to_json(self) -> dict:
        return {"name": self.name, "path": str(self.path) if self.path else None, "label": self.label,
                "adapter": self.adapter, "graph_id": self.graph_id, "key": self.key, "ok": self.ok,
                "error": self.error or None, "hint": self.hint or None, "seconds": round(self.seconds, 2),
                "cached": self.cached, "nodes": self.nodes}


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("torch", "transformers", "litert-torch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = ""
    return out


def _file_sha(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return ""


@dataclasses.dataclass
class GraphSources:
    """What the graphs are made from: a checkpoint, its mapping, and maybe a conversion."""

    hf_dir: Path
    mapping: Any = None  # a workbench Mapping (its blueprint inside); None: the proposed one
    tflite: Optional[Path] = None
    no_tflite: tuple[str, str] = ("no converted model was given", "pass tflite=PATH (CLI: --tflite PATH)")
    mapping_error: Optional[WorkbenchError] = None  # why the project's mapping cannot be used

    @classmethod
    def from_hf(cls, hf_dir, tflite=None) -> "GraphSources":
        hf = Path(hf_dir)
        if not (hf / "config.json").is_file():
            raise GraphError(f"{hf} holds no config.json", hint="give a Hugging Face model folder or a project")
        return cls(hf.resolve(), tflite=_need_tflite(tflite))

    @classmethod
    def from_project(cls, wb, tflite=None) -> "GraphSources":
        """The project's checkpoint, its current mapping (the saved one when there is one) and
        its newest fresh conversion (or `tflite`)."""
        src = cls(Path(wb.checkpoint_path()).resolve())
        try:
            src.mapping = wb.mapping
        except WorkbenchError as e:
            src.mapping_error = e
        if tflite is not None:
            src.tflite = _need_tflite(tflite)
        else:
            try:
                src.tflite = Path(wb.conversion_path(wb.latest_conversion())).resolve()
            except WorkbenchError as e:
                src.no_tflite = (e.message, e.hint or "convert first: wb.convert(...) or `edge-workbench convert "
                                                     "--project DIR`")
        return src

    def get_mapping(self):
        if self.mapping_error is not None:
            raise self.mapping_error
        if self.mapping is None:
            from workbench.blueprint import Blueprint
            from workbench.mapping import Mapping

            self.mapping = Mapping.propose(Blueprint.from_hf(self.hf_dir), self.hf_dir)
        return self.mapping

    def settings(self) -> dict:
        return {"tokens": TOKENS, "kv": KV, "export_version": EXPORT_VERSION}

    def inputs(self, name: str) -> dict:
        """What graph `name` is computed from (its cache key is their hash)."""
        from workbench.checkpoint import Checkpoint

        if name == "original":
            return {"graph": name, "checkpoint": Checkpoint.open(self.hf_dir).fingerprint(),
                    "config": _file_sha(self.hf_dir / "config.json"), **self.settings(), **_versions()}
        if name == "reauthored":
            m = self.get_mapping()
            return {"graph": name, "mapping": m.fingerprint(), "blueprint": m.blueprint.fingerprint(),
                    **self.settings(), **_versions()}
        raise GraphError(f"unknown graph {name!r}", hint=f"choose from {', '.join(GRAPHS)}")


def _need_tflite(tflite) -> Optional[Path]:
    if tflite is None:
        return None
    p = Path(tflite)
    if not p.is_file():
        raise GraphError(f"no converted model at {p}", hint="give the path of a .tflite file")
    if p.suffix != ".tflite":
        raise GraphError(f"{p.name} is not a .tflite file", hint="give a converted model (.tflite)")
    return p.resolve()


def tflite_graph_id(path: Path) -> str:
    """The graph a pane shows for a converted model: its first prefill signature, else the
    first signature (Model Explorer names a .tflite's graphs after its signatures)."""
    st = path.stat()
    names = _signature_names(str(path), st.st_size, st.st_mtime_ns)
    prefills = sorted((n for n in names if n.startswith("prefill")), key=lambda n: (len(n), n))
    return prefills[0] if prefills else (names[0] if names else "")


@functools.lru_cache(maxsize=16)
def _signature_names(path: str, size: int, mtime_ns: int) -> tuple[str, ...]:  # noqa: ARG001 - cache key
    try:
        from ai_edge_litert.interpreter import Interpreter

        return tuple(Interpreter(model_path=path).get_signature_list())
    except Exception:  # noqa: BLE001 - only a preference for the pane; Model Explorer reads the file itself
        return ()


# ---- the store --------------------------------------------------------------------
class GraphStore:
    """A folder of exported graphs, one sub-folder per cache key."""

    def __init__(self, folder) -> None:
        self.folder = Path(folder).resolve()

    def _dir(self, key: str) -> Path:
        return self.folder / key

    def cached(self, name: str, key: str) -> Optional[Graph]:
        rec_path = self._dir(key) / RECORD
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            return None
        if rec.get("name") != name or rec.get("key") != key:
            return None
        path = self._dir(key) / rec["file"] if rec.get("file") else None
        if path is not None and not path.is_file():
            return None
        return Graph(name, path, key, rec.get("error") or "", rec.get("hint") or "", 0.0, True,
                     rec.get("graph_id", ""), rec.get("nodes", 0))

    def keys(self, sources: GraphSources, names: Sequence[str]) -> dict[str, str]:
        return {n: digest(sources.inputs(n)) for n in names if n != "tflite"}

    def ensure(self, sources: GraphSources, names: Sequence[str] = GRAPHS, progress: Optional[Progress] = None,
               force: bool = False, timeout: Optional[float] = None) -> dict[str, Graph]:
        """Every graph in `names`: from the cache when its inputs are unchanged, else exported
        (in one child process). A graph that cannot be made comes back with its `error`."""
        out: dict[str, Graph] = {}
        todo: list[dict] = []
        for name in names:
            if name not in GRAPHS:
                raise GraphError(f"unknown graph {name!r}", hint=f"choose from {', '.join(GRAPHS)}")
            if name == "tflite":
                out[name] = (Graph("tflite", sources.tflite, graph_id=tflite_graph_id(sources.tflite))
                             if sources.tflite is not None else
                             Graph("tflite", None, error=sources.no_tflite[0], hint=sources.no_tflite[1]))
                continue
            try:
                inputs = sources.inputs(name)
            except WorkbenchError as e:
                out[name] = Graph(name, None, error=e.message, hint=e.hint)
                continue
            key = digest(inputs)
            hit = None if force else self.cached(name, key)
            if hit is not None:
                out[name] = hit
            else:
                todo.append({"name": name, "key": key, "dir": str(self._dir(key)), "inputs": inputs})
        if todo:
            out.update(self._export(sources, todo, progress, timeout))
            self.prune()
        return {n: out[n] for n in names}

    def _export(self, sources: GraphSources, todo: list[dict], progress: Optional[Progress],
                timeout: Optional[float]) -> dict[str, Graph]:
        spec = {"hf_dir": str(sources.hf_dir), "tokens": TOKENS, "kv": KV, "jobs": todo,
                "mapping": None}
        if any(j["name"] == "reauthored" for j in todo):
            spec["mapping"] = sources.get_mapping().to_json()
            spec["mapping"]["checkpoint"] = str(sources.hf_dir)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, spec_path = tempfile.mkstemp(prefix=".export-", suffix=".json", dir=self.folder)
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f)
        log_path = Path(spec_path).with_suffix(".log")
        t0 = time.time()
        try:
            with open(log_path, "w") as log:
                proc = subprocess.Popen([sys.executable, "-m", "workbench.explore.graphs", spec_path], stdout=subprocess.PIPE,
                                        stderr=log, stdin=subprocess.DEVNULL, text=True,
                                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
                assert proc.stdout is not None
                for line in proc.stdout:
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue
                    if "progress" in msg:
                        report(progress, *msg["progress"])
                    if timeout is not None and time.time() - t0 > timeout:
                        proc.kill()
                        break
                rc = proc.wait()
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        finally:
            for p in (Path(spec_path), log_path):
                p.unlink(missing_ok=True)
        out = {}
        for job in todo:
            g = self.cached(job["name"], job["key"])
            if g is not None:
                out[job["name"]] = dataclasses.replace(g, cached=False, seconds=_seconds(self._dir(job["key"])))
            else:
                how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
                out[job["name"]] = Graph(job["name"], None, job["key"],
                                         error=f"the export process {how} before {job['name']} was written"
                                               + (f": {tail.strip().splitlines()[-1]}" if tail.strip() else ""),
                                         hint="out of memory? close other kernels and refresh; the log tail: "
                                              + tail[-400:].replace("\n", " | "))
        return out

    def prune(self, keep: int = KEEP) -> None:
        """Keeps the newest `keep` exports of each graph (and every failed one's record)."""
        by_name: dict[str, list[tuple[float, Path]]] = {}
        for d in self.folder.glob("*/" + RECORD):
            try:
                rec = json.loads(d.read_text())
            except (OSError, ValueError):
                continue
            if rec.get("file"):
                by_name.setdefault(rec.get("name", ""), []).append((d.stat().st_mtime, d.parent))
        for items in by_name.values():
            for _, folder in sorted(items, reverse=True)[keep:]:
                shutil.rmtree(folder, ignore_errors=True)


def _seconds(folder: Path) -> float:
    try:
        return float(json.loads((folder / RECORD).read_text()).get("seconds", 0.0))
    except (OSError, ValueError):
        return 0.0


# ---- the export (in the child) --------------------------------------------------------
def _wrappers():
    """Modules that give torch.export plain tensors in and out (Model Explorer's server loads
    the .pt2 without transformers or litert-torch, so no pytree of theirs may be in it)."""
    import torch
    from litert_torch.generative.layers import kv_cache as kv_utils

    class OriginalModule(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).logits

    class ExportableModule(torch.nn.Module):
        def __init__(self, module, layout) -> None:
            super().__init__()
            self.module = module
            self.layout = layout

        def forward(self, tokens, input_pos, *kv_flat):
            entries = tuple(kv_utils.KVCacheEntry(kv_flat[2 * i], kv_flat[2 * i + 1], kv_layout=self.layout)
                            for i in range(len(kv_flat) // 2))
            out = self.module(tokens, input_pos, kv_utils.KVCache(entries))
            return (out["logits"], *out["kv_cache"].flatten())

    for cls in (OriginalModule, ExportableModule):
        cls.__qualname__ = cls.__name__
        cls.__module__ = "workbench.explore.graphs"
    return OriginalModule, ExportableModule


def _strip_markers(ep) -> int:
    """Removes litert-torch's composite markers (identity ops whose arguments torch.export.save
    cannot serialize); returns how many."""
    from litert_torch.backend.composite.mark_tensor import mark_tensor_op

    g = ep.graph_module.graph
    n = 0
    for node in list(g.nodes):
        if node.op == "call_function" and node.target == mark_tensor_op:
            node.replace_all_uses_with(node.args[0])
            g.erase_node(node)
            n += 1
    g.lint()
    ep.graph_module.recompile()
    return n


def _export_original(spec: dict):
    import torch
    from transformers import AutoModelForCausalLM

    from workbench.blueprint import Blueprint

    hf = Path(spec["hf_dir"])
    vocab = Blueprint.from_hf(hf).vocab_size
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    model.config.use_cache = False
    ids = torch.tensor([[(i % (vocab - 1)) + 1 for i in range(spec["tokens"])]])
    original_module, _ = _wrappers()
    with torch.no_grad():
        return torch.export.export(original_module(model).eval(), (ids,), strict=False)


def _export_reauthored(spec: dict):
    import torch
    from litert_torch.generative.layers import kv_cache as kv_utils

    from workbench.mapping import Mapping

    m = Mapping.from_json(spec["mapping"], checkpoint=spec["hf_dir"])
    bp = m.blueprint
    kv_len = max(spec["tokens"], min(spec["kv"], bp.max_seq_len))
    model = m.load(kv_cache_length=kv_len)
    kv = kv_utils.KVCache.from_model_config(kv_len, model.config)
    tokens = torch.tensor([[(i % (bp.vocab_size - 1)) + 1 for i in range(spec["tokens"])]], dtype=torch.int)
    pos = torch.arange(spec["tokens"], dtype=torch.int)
    _, exportable = _wrappers()
    # The KV-cache update as plain aten index_copy instead of litert-torch's custom
    # dynamic_update_slice op, which Model Explorer's server (no litert-torch there) cannot
    # load. Same values; this process only exports, so the switch stays here.
    kv_utils.update = functools.partial(kv_utils.update, use_dus=False)
    with torch.no_grad():
        ep = torch.export.export(exportable(model, kv.caches[0].kv_layout).eval(), (tokens, pos, *kv.flatten()),
                                 strict=False)
    _strip_markers(ep)
    return ep


def _drop_wrapper(ep) -> None:
    """Model Explorer groups nodes by their module stack; the outermost entry is our
    wrapper, so the view starts at the model's own class instead."""
    for node in ep.graph_module.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack and len(stack) > 1:
            first = next(iter(stack))
            node.meta["nn_module_stack"] = {k: v for k, v in stack.items() if k != first}


def _mapping_sources(spec: dict) -> dict[str, list[str]]:
    """litert-torch parameter -> the checkpoint tensors the mapping fills it from."""
    from workbench.mapping import Mapping

    m = Mapping.from_json(spec["mapping"], checkpoint=spec["hf_dir"])
    return {e.target: list(e.sources) for e in m.table() if e.target and e.sources}


def _custom_ops(ep) -> list[str]:
    """Ops outside torch's own namespaces: a .pt2 holding one cannot be loaded where the
    library defining it is not imported (Model Explorer's server)."""
    import torch

    found = set()
    for node in ep.graph_module.graph.nodes:
        t = node.target
        if node.op == "call_function" and isinstance(t, torch._ops.OpOverload) and t.namespace not in ("aten", "prims"):
            found.add(f"{t.namespace}::{t._opname}")
    return sorted(found)


WRAPPER_ATTR = {"original": "model", "reauthored": "module"}  # the wrappers' attribute holding the model


def _strip(path: str, attr: str) -> str:
    """A module path or parameter name without our wrapper's attribute (`model.` / `module.`),
    so it reads as the checkpoint's (original) or litert-torch's (re-authored) name."""
    if path == attr:
        return ""
    return path[len(attr) + 1:] if path.startswith(attr + ".") else path


def _ident(name: str) -> str:
    import re

    out = re.sub(r"\W", "_", name).strip("_")
    return out if out and not out[0].isdigit() else f"n_{out}"


def _params_read(ep, attr: str) -> dict:
    """fx node -> the parameter names (wrapper stripped) it reads directly."""
    by_placeholder = {k: _strip(v, attr) for k, v in ep.graph_signature.inputs_to_parameters.items()}
    out: dict = {}
    for node in ep.graph_module.graph.nodes:
        if node.op == "placeholder" and node.name in by_placeholder:
            for user in node.users:
                out.setdefault(user, []).append(by_placeholder[node.name])
    return out


def _stack(node, attr: str) -> list[str]:
    return [_strip(path, attr) for path, _ in (node.meta.get("nn_module_stack") or {}).values()]


def shared_node_name(tensor: str) -> str:
    """The id of the op that reads a checkpoint tensor, in both PyTorch graphs:
    `model.layers.1.self_attn.o_proj.weight` -> `model_layers_1_self_attn_o_proj`."""
    base = tensor.rsplit(".", 1)[0] if tensor.endswith((".weight", ".bias")) else tensor
    return _ident(base)


def _rename_nodes(ep, name: str, sources: Optional[dict[str, list[str]]] = None) -> int:
    """Gives the ops of an export the ids described in the module docstring; returns how
    many read a weight. `sources` (re-authored only): litert-torch parameter -> the checkpoint
    tensors the mapping fills it from."""
    attr = WRAPPER_ATTR[name]
    params = _params_read(ep, attr)
    graph = ep.graph_module.graph
    consumers: dict[str, list] = {}  # parameter -> the nodes reading it, in graph order
    for node in graph.nodes:
        for p in params.get(node, []):
            consumers.setdefault(p, []).append(node)
    wanted: dict = {}
    for p, nodes in consumers.items():
        tensor = (sources or {}).get(p, [p])[0] if name == "reauthored" else p
        if name == "reauthored" and p not in (sources or {}):
            continue  # a parameter the mapping does not fill (none today): no shared id
        for k, node in enumerate(nodes):
            if node not in wanted:
                wanted[node] = shared_node_name(tensor) + (f"__{k + 1}" if k else "")
    renamed: dict[str, str] = {}
    # First move every op aside, so a wanted id is never taken by an op renamed later.
    ops = [(n, n.name) for n in graph.nodes if n.op == "call_function"]
    for node, old in ops:
        node._rename(f"ewb_tmp_{old}")
    for node, old in ops:
        if node in wanted:
            target = wanted[node]
        else:
            stack = _stack(node, attr)
            scope = _ident(stack[-1]) if stack and stack[-1] else name
            target = f"{scope}__{old}"
        node._rename(target)
        renamed[old] = node.name
    for spec in ep.graph_signature.output_specs:
        arg = getattr(spec, "arg", None)
        if arg is not None and getattr(arg, "name", None) in renamed:
            arg.name = renamed[arg.name]
    ep.graph_module.recompile()
    return len(wanted)


def _node_index(ep, name: str) -> dict:
    from model_explorer.consts import DEFAULT_SETTINGS
    from model_explorer.pytorch_exported_program_adapter_impl import PytorchExportedProgramAdapterImpl

    attr = WRAPPER_ATTR[name]
    g = PytorchExportedProgramAdapterImpl(ep, DEFAULT_SETTINGS).convert()["graphs"][0]
    fx = {n.name: n for n in ep.graph_module.graph.nodes}
    params = {n.name: ps for n, ps in _params_read(ep, attr).items()}
    nodes = []
    for n in g.nodes:
        row = {"id": n.id, "label": n.label, "namespace": n.namespace}
        if n.id in fx and fx[n.id].op == "call_function":
            row["stack"] = _stack(fx[n.id], attr)
            if n.id in params:
                row["params"] = params[n.id]
        nodes.append(row)
    return {"graph_id": g.id, "wrapper": attr, "nodes": nodes}


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data, GraphError)


def _run_job(spec: dict, job: dict, emit) -> None:
    import torch

    name, folder = job["name"], Path(job["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rec = {"kind": "edge-workbench/graph", "schema": 1, "name": name, "key": job["key"], "inputs": job["inputs"],
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        emit(name, "export")
        ep = _export_original(spec) if name == "original" else _export_reauthored(spec)
        _drop_wrapper(ep)
        _rename_nodes(ep, name, _mapping_sources(spec) if name == "reauthored" else None)
        custom = _custom_ops(ep)
        if custom:
            raise GraphError(f"the exported graph holds custom ops Model Explorer cannot load: {', '.join(custom)}",
                             hint="this model uses a litert-torch op with no plain torch equivalent here; "
                                  "view its converted .tflite instead")
        emit(name, "save")
        tmp = folder / f".{name}.pt2.tmp-{uuid.uuid4().hex[:8]}"
        torch.export.save(ep, str(tmp))
        index = _node_index(ep, name)
        _atomic_write(folder / f"{name}.nodes.json", json.dumps(index).encode())
        os.replace(tmp, folder / f"{name}.pt2")
        rec.update(file=f"{name}.pt2", graph_id=index["graph_id"], nodes=len(index["nodes"]))
    except Exception as e:  # noqa: BLE001 - recorded as this graph's error; the others go on
        for leftover in folder.glob(f".{name}.pt2.tmp-*"):
            leftover.unlink(missing_ok=True)
        msg = e.message if isinstance(e, WorkbenchError) else f"{type(e).__name__}: {str(e).strip()[:1500]}"
        hint = e.hint if isinstance(e, WorkbenchError) else (
            "torch.export could not trace this model; the error names the operation")
        rec.update(file=None, error=f"{name} could not be exported: {msg}", hint=hint)
    rec["seconds"] = round(time.time() - t0, 2)
    _atomic_write(folder / RECORD, (json.dumps(rec, indent=1) + "\n").encode())


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text())
    from workbench._quiet import import_stack

    def emit(name: str, stage: str, done: int = 0) -> None:
        names = [j["name"] for j in spec["jobs"]]
        i = names.index(name)
        print(json.dumps({"progress": [f"{stage} {name}", i, len(names), TITLES.get(name, name)]}), flush=True)

    print(json.dumps({"progress": ["import", 0, len(spec["jobs"]), "torch, transformers, litert-torch"]}), flush=True)
    import_stack()
    with __import__("workbench._quiet", fromlist=["quiet"]).quiet():
        import model_explorer.pytorch_exported_program_adapter_impl  # noqa: F401
    for job in spec["jobs"]:
        _run_job(spec, job, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
