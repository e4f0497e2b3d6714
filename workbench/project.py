"""Projects: one folder holds the whole path from checkpoint to converted model.

    wb = Workbench.new("my-project/", from_hf="sample_models/llama-tiny")
    wb.blueprint.set("kv_cache_length", 256); wb.save_blueprint()
    wb.save_mapping()            # the proposed mapping, reviewed
    wb.compare()                 # recorded under comparisons/
    wb.convert(recipe="dynamic_int8", prefill=[8], kv=256)   # recorded under conversions/
    wb.status()                  # {"blueprint": "fresh", "mapping": "fresh", ...}

    wb = Workbench.open("my-project/")   # later, another process: every step restored, nothing recomputed

The folder is meant for git: `workbench.json` (versioned) plus one JSON file per step and
the artefacts, every path relative to the folder. Every write is atomic (temporary file,
fsync, rename, fsync of the folder). Each result records the fingerprints of what it was
computed from; when an upstream step changes, the results below it read as stale, and
the steps that would consume them refuse to.

A process that opens a project for writing holds an advisory lock (`.workbench.lock`,
released when the process ends, even by a crash); a second one gets the project read-only
with a message naming the holder.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any, Optional, Union

from workbench import _io
from workbench.errors import WorkbenchError

SCHEMA_VERSION = 1
PROJECT_FILE = "workbench.json"
LOCK_FILE = ".workbench.lock"
KIND = "edge-workbench/project"
STEPS = ("blueprint", "mapping", "comparisons", "conversions", "paths", "sweeps")
FRESH, STALE, MISSING = "fresh", "stale", "missing"
# The steps a result can be made again for, and the call that makes each (`Workbench.rerun`).
RERUN = {"mapping": "save_mapping", "comparisons": "compare", "conversions": "convert", "paths": "compare_paths",
         "sweeps": "sweep"}
# The lock and what a killed process may leave are never part of a project's history.
GITIGNORE = f"{LOCK_FILE}\n.*.tmp-*\n.*.partial-*\n"


class ProjectError(WorkbenchError):
    """A project that cannot be opened, read or written as asked."""


# ---- files: workbench._io, with errors that name the project ------------------------
def atomic_write_bytes(path: Path, data: bytes) -> None:
    _io.atomic_write_bytes(path, data, ProjectError)


def atomic_write_json(path: Path, obj: Any) -> None:
    _io.atomic_write_json(path, obj, ProjectError)


def read_json(path: Path, what: str) -> dict:
    return _io.read_json(path, what, ProjectError)


# The CLI subcommand that makes each re-runnable step's first result.
_CLI_STEP = {"comparisons": "compare", "conversions": "convert", "paths": "paths", "sweeps": "sweep"}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def _name_ok(name: str) -> str:
    if not name or any(c in name for c in "/\\\0") or name.startswith("."):
        raise ProjectError(f"{name!r} cannot name a result file", hint="use letters, digits, '-' and '_'")
    return name


# ---- the lock ----------------------------------------------------------------------
# Projects this process holds, by real path -> the Workbench holding the lock. Opening a
# project again in the same process (a re-run notebook cell) takes the lock over.
_HOLDERS: dict[str, "Workbench"] = {}


class _Lock:
    """An advisory `flock` on `.workbench.lock`: the kernel drops it when the holder dies."""

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK_FILE
        self.fd: Optional[int] = None

    def acquire(self) -> Optional[str]:
        """Takes the lock; returns None, or why it could not (held, or a read-only folder)."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            return f"the project folder is not writable ({e.strerror})"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            finally:
                os.close(fd)
            return f"it is open for writing by {holder}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {_now()}".encode(), 0)
        self.fd = fd
        return None

    def release(self) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# ---- the project -------------------------------------------------------------------
class Workbench:
    """One project folder: blueprint → mapping → comparisons → conversions.

    Open with `Workbench.new(...)` or `Workbench.open(...)`. `readonly` is True when
    another process holds the project, the folder cannot be written, or it was asked
    for; `notice` then says why, and every write raises ProjectError.
    """

    def __init__(self, root: Path, data: dict, readonly: bool, notice: str, lock: Optional[_Lock]) -> None:
        self.root = root
        self._data = data
        self.readonly = readonly
        self.notice = notice
        self._lock = lock
        self.blueprint = None
        self._mapping = None
        self._mapping_fp: Optional[str] = None  # the blueprint fingerprint the cached mapping was built on
        self._mapping_data: Optional[dict] = None
        self.comparisons: dict[str, dict] = {}
        self.paths: dict[str, dict] = {}  # re-authored vs direct export tables
        self.sweeps: dict[str, dict] = {}  # recipe sweeps (rows saved as they finish)
        self.problems: list[str] = []  # what could not be read, each naming the file

    # ---- opening ----------------------------------------------------------------
    @classmethod
    def new(cls, path: Union[str, Path], from_hf: Union[str, Path, None] = None, *, blueprint=None,
            name: Optional[str] = None, copy_checkpoint: bool = False, progress=None) -> "Workbench":
        """Creates a project in `path` (a new or empty folder) from a Hugging Face model folder,
        or a Hub id (`org/name[@revision]`, downloaded into the hub's cache as needed, with
        `progress`; the project records the id and the commit it resolved to).

        The checkpoint stays where it is (recorded relative to the project, and absolute as
        a fallback) unless `copy_checkpoint`: then it is copied into `checkpoint/`, and the
        project is self-contained.
        """
        from workbench import hub
        from workbench.blueprint import Blueprint

        root = Path(path)
        if (root / PROJECT_FILE).exists():
            raise ProjectError(f"{root} is already a project", hint=f"open it: Workbench.open({str(root)!r})")
        if root.exists() and not root.is_dir():
            raise ProjectError(f"{root} is a file, not a folder", hint="give a new or empty folder")
        if root.is_dir() and any(p.name != LOCK_FILE for p in root.iterdir()):
            raise ProjectError(f"{root} is not empty", hint="give a new or empty folder for the project")
        if from_hf is None and blueprint is None:
            raise ProjectError("a project starts from a Hugging Face folder (from_hf=) or a Blueprint",
                               hint="Workbench.new(path, from_hf='sample_models/llama-tiny')")
        if from_hf is not None:
            from_hf = hub.resolve(from_hf, progress=progress)
        bp = Blueprint.from_hf(from_hf) if from_hf is not None else blueprint.copy()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _io.write_error(e, root, ProjectError) from None
        checkpoint = None
        if from_hf is not None:
            pinned = hub.origin(from_hf)
            source = Path(from_hf).resolve()
            if copy_checkpoint:
                _copy_tree(source, root / "checkpoint")
                source = (root / "checkpoint").resolve()
            checkpoint = _path_record(source, root)
            if pinned is not None:  # found again by id and commit if the cache moves or is cleaned
                checkpoint["hub"] = pinned.to_json()
        data = {"kind": KIND, "schema": SCHEMA_VERSION, "name": name or bp.name or root.name, "created": _now(),
                "checkpoint": checkpoint}
        atomic_write_bytes(root / ".gitignore", GITIGNORE.encode())
        atomic_write_json(root / PROJECT_FILE, data)
        wb = cls.open(root, readonly=False)
        wb.blueprint = bp
        wb.save_blueprint()
        return wb

    @classmethod
    def open(cls, path: Union[str, Path], readonly: Optional[bool] = None) -> "Workbench":
        """Opens a project; every step's saved state and results come back as they were.

        readonly: None — write if possible, else read-only with `notice` saying why;
        True — read-only; False — writing required (ProjectError if it is not possible).
        """
        root = Path(path)
        if not root.is_dir():
            raise ProjectError(f"no project folder {str(root)!r}",
                               hint="create one with Workbench.new(path, from_hf=...) or "
                                    "`edge-workbench new DIR --from HF_DIR`")
        if not (root / PROJECT_FILE).is_file():
            if (root / "mapping.json").is_file():
                return cls._migrate_loose(root, readonly)
            raise ProjectError(f"{root} is not an Edge Workbench project (no {PROJECT_FILE})",
                               hint="create one with Workbench.new(path, from_hf=...)")
        data = read_json(root / PROJECT_FILE, "the project file")
        data = _migrate(data, root)
        lock, notice = None, ""
        key = str(root.resolve())
        previous = _HOLDERS.get(key)
        if readonly is not True and previous is not None and previous._lock is not None:
            lock, previous._lock = previous._lock, None  # taken over: the older object turns read-only
            previous.readonly, previous.notice = True, "read-only: the project was opened again in this process"
        elif readonly is not True:
            lock = _Lock(root)
            why = lock.acquire()
            if why:
                lock = None
                if readonly is False:
                    raise ProjectError(f"cannot open {root} for writing: {why}",
                                       hint="close the project there (wb.close()) or open it read-only")
                notice = f"opened read-only: {why}"
        wb = cls(root, data, lock is None, notice if readonly is not True else "opened read-only, as asked", lock)
        if lock is not None:
            _HOLDERS[key] = wb
        wb._load()
        return wb

    def close(self) -> None:
        """Releases the lock (a read-only project has none)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            self.readonly = True
            self.notice = "closed"
            _HOLDERS.pop(str(self.root.resolve()), None)

    def __enter__(self) -> "Workbench":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- reading ----------------------------------------------------------------
    def _load(self) -> None:
        from workbench.blueprint import Blueprint

        bp_path = self.root / "blueprint.json"
        if bp_path.exists():
            try:
                self.blueprint = Blueprint.from_json(read_json(bp_path, "the blueprint"))
            except WorkbenchError as e:
                self.problems.append(f"blueprint.json: {e.message}")
        mp = self.root / "mapping.json"
        if mp.exists():
            try:
                self._mapping_data = read_json(mp, "the mapping")
            except ProjectError as e:
                self.problems.append(f"mapping.json: {e.message}")
        for kind, store in (("comparisons", self.comparisons), ("paths", self.paths), ("sweeps", self.sweeps)):
            for f in sorted((self.root / kind).glob("*.json")):
                try:
                    store[f.stem] = read_json(f, f"{kind[:-1]} {f.stem}")
                except ProjectError as e:
                    self.problems.append(f"{kind}/{f.name}: {e.message}")

    @property
    def conversions(self) -> dict[str, dict]:
        """Manifests of the conversions in conversions/ (read afresh: a job publishes there
        from its own thread, and a half-written one never has a manifest)."""
        out = {}
        for f in sorted((self.root / "conversions").glob("*.json")):
            try:
                manifest = read_json(f, f"conversion {f.stem}")
            except ProjectError as e:
                if f"conversions/{f.name}: {e.message}" not in self.problems:
                    self.problems.append(f"conversions/{f.name}: {e.message}")
                continue
            if manifest.get("kind") == "edge-workbench/conversion":
                out[f.stem] = manifest
        return out

    def checkpoint_path(self) -> Path:
        """The checkpoint folder: relative to the project first, then the absolute fallback."""
        rec = self._data.get("checkpoint")
        if not rec:
            raise ProjectError("this project has no checkpoint", hint="wb.set_checkpoint(HF_DIR)").with_cli(
                f"edge-workbench set-checkpoint --project {self.root} HF_DIR")
        for candidate in (self.root / rec["relative"], Path(rec["absolute"])):
            if (candidate / "config.json").is_file() or candidate.is_file():
                return candidate
        found_by_id = ""
        if rec.get("hub"):  # the snapshot, at the recorded commit, from the cache (or the Hub)
            from workbench import hub

            try:
                return hub.snapshot(rec["hub"]["id"], rec["hub"]["commit"]).path
            except hub.HubError as e:
                found_by_id = f", and by its Hub id: {e.message}"
        raise ProjectError(f"the project's checkpoint is not at {rec['relative']} (relative to the project) nor at "
                           f"{rec['absolute']}{found_by_id}",
                           hint="point the project at it: wb.set_checkpoint(HF_DIR or org/name)").with_cli(
            f"point the project at it: edge-workbench set-checkpoint --project {self.root} HF_DIR")

    def set_checkpoint(self, path: Union[str, Path], progress=None) -> None:
        """Points the project at its checkpoint again (after moving it): a folder or a Hub id."""
        from workbench import hub

        self._writable()
        local = hub.resolve(path, progress=progress)
        p = local.resolve()
        if not (p / "config.json").is_file():
            raise ProjectError(f"{p} holds no config.json", hint="give the Hugging Face model folder")
        self._data["checkpoint"] = _path_record(p, self.root)
        pinned = hub.origin(local)
        if pinned is not None:
            self._data["checkpoint"]["hub"] = pinned.to_json()
        self._mapping = None
        atomic_write_json(self.root / PROJECT_FILE, self._data)

    @property
    def mapping(self):
        """The mapping onto the current blueprint: the saved one (its patterns and edits),
        else the proposed one. Raises ProjectError when the checkpoint cannot be found."""
        from workbench.mapping import Mapping

        self._need_blueprint()
        if self._mapping is not None and self._mapping_fp == self.blueprint.fingerprint():
            return self._mapping
        ck = self.checkpoint_path()
        if self._mapping_data is not None:
            try:
                m = Mapping.from_json(self._mapping_data, checkpoint=ck, blueprint=self.blueprint,
                                      where="mapping.json")
            except WorkbenchError as e:
                raise ProjectError(f"mapping.json cannot be used with the current blueprint: {e.message}",
                                   hint="fix the blueprint, or delete mapping.json to start from the proposal") \
                    from None
        else:
            m = Mapping.propose(self.blueprint, ck)
        self._mapping, self._mapping_fp = m, self.blueprint.fingerprint()
        return m

    # ---- writing ----------------------------------------------------------------
    def _writable(self) -> None:
        if self.readonly:
            raise ProjectError(f"the project {self.root} is read-only ({self.notice or 'opened read-only'})",
                               hint="nothing was written; open it for writing where it is not open already")

    def _need_blueprint(self) -> None:
        if self.blueprint is None:
            raise ProjectError("the project has no usable blueprint" +
                               (f" ({'; '.join(p for p in self.problems if 'blueprint' in p)})" if self.problems else ""),
                               hint="restore blueprint.json from git, or set wb.blueprint and wb.save_blueprint()"
                               ).with_cli(f"restore it from git: git -C {self.root} checkout -- blueprint.json")

    def save_blueprint(self) -> None:
        """Saves the blueprint (edits included); results computed from an older one turn stale."""
        self._writable()
        self._need_blueprint()
        atomic_write_json(self.root / "blueprint.json", self.blueprint.to_json())

    def save_mapping(self, mapping=None) -> None:
        """Saves the mapping (default: the current one) as reviewed against the current blueprint,
        and the emitted Python beside it (`model.py`: blueprint + TENSOR_NAMES)."""
        self._writable()
        m = mapping or self.mapping
        if m.blueprint.fingerprint() != self.blueprint.fingerprint():
            raise ProjectError("this mapping was made for another blueprint than the project's",
                               hint="build it on wb.blueprint (wb.mapping does)")
        data = m.to_json()
        data["checkpoint"] = self._data["checkpoint"]["relative"] if self._data.get("checkpoint") else ""
        data["inputs"] = {"blueprint": self.blueprint.fingerprint(), "mapping": m.fingerprint()}
        atomic_write_json(self.root / "mapping.json", data)
        atomic_write_bytes(self.root / "model.py", m.module_source().encode())
        self._mapping_data, self._mapping, self._mapping_fp = data, m, self.blueprint.fingerprint()

    # ---- fingerprints and staleness ------------------------------------------------
    @property
    def name(self) -> str:
        """The project's name (given at `new`, else its folder's)."""
        return str(self._data.get("name") or self.root.name)

    def current_inputs(self) -> dict[str, Optional[str]]:
        """Fingerprints of the upstream steps as they are now (None where a step is unusable):
        {"blueprint": ..., "mapping": ...}. A result made from other ones is stale."""
        bp = self.blueprint.fingerprint() if self.blueprint is not None else None
        saved = (self._mapping_data or {}).get("inputs", {})
        mapping = None
        if bp is not None and saved.get("blueprint") == bp:
            try:
                mapping = self.mapping.fingerprint()
            except WorkbenchError:
                mapping = None
            if mapping != saved.get("mapping"):
                mapping = None  # the checkpoint changed under the saved mapping
        return {"blueprint": bp, "mapping": mapping}

    def _result_state(self, inputs: dict, current: dict) -> str:
        if not inputs or current["mapping"] is None:
            return STALE
        return FRESH if all(inputs.get(k) == current[k] for k in ("blueprint", "mapping")) else STALE

    def status(self, detail: bool = False) -> dict:
        """Each step as fresh / stale / missing. With detail, per result too, and why."""
        cur = self.current_inputs()
        steps: dict[str, str] = {}
        why: dict[str, Any] = {}
        steps["blueprint"] = FRESH if self.blueprint is not None else MISSING
        if self._mapping_data is None:
            steps["mapping"] = MISSING
        else:
            steps["mapping"] = FRESH if cur["mapping"] is not None else STALE
            if cur["mapping"] is None:
                saved = self._mapping_data.get("inputs", {})
                why["mapping"] = ("made for another blueprint" if saved.get("blueprint") != cur["blueprint"]
                                  else "the checkpoint changed or cannot be found")
        comps = {n: self._result_state(c.get("inputs", {}), cur) for n, c in self.comparisons.items()}
        convs = {}
        conversions = self.conversions
        for n, man in conversions.items():
            state = self._result_state(man.get("inputs", {}), cur)
            art = self.root / "conversions" / man.get("model", f"{n}.tflite")
            if not art.is_file():
                state, why[f"conversions/{n}"] = MISSING, f"{art.name} is missing"
            elif art.stat().st_size != man.get("size_bytes"):
                state, why[f"conversions/{n}"] = MISSING, (f"{art.name} is {art.stat().st_size} bytes, the manifest "
                                                           f"says {man.get('size_bytes')}: damaged or half-written")
            convs[n] = state
        # A step with several results reads as its newest one (per result: `detail=True`).
        newest_comp = self.newest("comparisons", comps)
        newest_conv = self.newest("conversions", convs)
        steps["comparisons"] = comps[newest_comp] if newest_comp else MISSING
        steps["conversions"] = convs[newest_conv] if newest_conv else MISSING
        paths = {n: self._result_state(t.get("inputs", {}), cur) for n, t in self.paths.items()}
        newest_paths = self.newest("paths", paths)
        steps["paths"] = paths[newest_paths] if newest_paths else MISSING
        self._reload_sweeps()
        sweeps = {n: self._result_state(t.get("inputs", {}), cur) for n, t in self.sweeps.items()}
        newest_sweep = self.newest("sweeps", sweeps)
        steps["sweeps"] = sweeps[newest_sweep] if newest_sweep else MISSING
        if not detail:
            return steps
        return {"steps": steps, "comparisons": comps, "conversions": convs, "paths": paths, "sweeps": sweeps,
                "chosen": self.chosen, "why": why,
                "problems": list(self.problems), "readonly": self.readonly, "notice": self.notice,
                "leftovers": [str(p.relative_to(self.root)) for p in self.leftovers()]}

    def newest(self, kind: str, among: Optional[Any] = None) -> Optional[str]:
        """The name of the newest recorded result of a kind ("comparisons", "conversions",
        "paths" or "sweeps"), among the names `among` if given; None when there is none. A
        conversion is as new as its manifest (a job writes it last); the others by "created"."""
        if kind == "conversions":
            names = self.conversions if among is None else among
            return max(names, key=self._manifest_time, default=None)
        if kind not in ("comparisons", "paths", "sweeps"):
            raise ProjectError(f"{kind!r} is not a kind of result", hint="comparisons, conversions, paths or sweeps")
        if kind == "sweeps" and among is None:
            self._reload_sweeps()
        store = getattr(self, kind)
        return max(store if among is None else among, key=lambda n: store[n].get("created", ""), default=None)

    def _manifest_time(self, name: str) -> float:
        try:
            return (self.root / "conversions" / f"{name}.json").stat().st_mtime
        except OSError:
            return 0.0

    def rerun_settings(self, step: str) -> dict:
        """The keyword arguments that make a step again as its newest result was made, for
        the call `RERUN[step]` names: the same name, recipe, lengths, prompts... `rerun(step)`
        passes them to that call; a panel's Re-run button passes them to its own action, which
        calls the same. The result is made from the blueprint and mapping as they are now."""
        if step not in RERUN:
            raise ProjectError(f"{step!r} is not a step that can be re-run", hint=f"one of {', '.join(RERUN)}")
        if step == "mapping":
            return {}
        newest = self.newest(step)
        if newest is None:
            raise ProjectError(f"the project has no {step} to re-run", hint=f"make one first (wb.{RERUN[step]}(...))"
                               ).with_cli(f"make one first: edge-workbench {_CLI_STEP[step]} --project {self.root}")
        if step == "comparisons":
            rec = self.comparisons[newest]
            r = rec["result"]
            return {"name": newest, "prompts": r["prompts"], "tol": r["tol"],
                    "max_new_tokens": r["generation"].get("max_new_tokens", 8), "tflite": rec["inputs"].get("tflite")}
        if step == "conversions":
            from workbench.convert_settings import ConvertSettings

            return {"name": newest, "settings": ConvertSettings.from_manifest(self.conversions[newest])}
        if step == "paths":
            r = self.paths[newest]["result"]
            return {"name": newest, "recipe": r["recipe"], "prefill": list(r["prefill"]), "kv": r["kv"],
                    "threads": r["threads"]}
        from workbench.sweep import Item

        res = self.sweeps[newest]["result"]
        st = res["settings"]
        items = [Item(**it) for it in res["items"]]
        return {"name": newest, "recipes": items, "paths": sorted({it.path for it in items}),
                "prefill": list(st["prefill"]), "kv": st["kv"], "threads": st["threads"],
                "decode_steps": st["decode_steps"], "eval_tokens": st["eval_tokens"],
                "engine": st.get("engine", "ai-edge-litert"), "fresh": True}

    def rerun(self, step: str, **changes):
        """Makes a step again with the settings of its newest result (`rerun_settings`), on the
        blueprint and mapping as they are now, under the same name; `changes` override any of
        them. Returns what the step's call returns: None (mapping), a Comparison, a conversion
        Job (returned at once: `.result()` waits), a PathComparison, a Sweep (run to its end)."""
        kw = {**self.rerun_settings(step), **changes}  # refuses an unknown step first
        return getattr(self, RERUN[step])(**kw)

    def leftovers(self) -> list[Path]:
        """Half-written files a killed process left (never read as results)."""
        pats = (".*.tmp-*", ".*.partial-*")
        out: list[Path] = []
        for sub in (self.root, *(self.root / d for d in ("comparisons", "conversions", "paths", "bundles", "sweeps",
                                                         "exports"))):
            for pat in pats:
                out += sorted(sub.glob(pat))
        return out

    def clean_leftovers(self) -> list[str]:
        self._writable()
        gone = []
        for p in self.leftovers():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            gone.append(p.name)
        return gone

    def _require_fresh_mapping(self, allow_stale: bool) -> Any:
        m = self.mapping
        if self._mapping_data is None:
            raise ProjectError("the project has no saved mapping: results must say which mapping they used",
                               hint="review wb.mapping (wb.mapping.problems()), then wb.save_mapping()").with_cli(
                f"review and save it: edge-workbench map --project {self.root} --save")
        if self.status()["mapping"] != FRESH and not allow_stale:
            raise ProjectError("the saved mapping is stale: it was reviewed against another blueprint or "
                               "checkpoint", hint="review wb.mapping.problems(), then wb.save_mapping()").with_cli(
                f"review and save it again: edge-workbench map --project {self.root} --save")
        return m

    # ---- steps that record results ------------------------------------------------
    def compare(self, name: Optional[str] = None, *, tflite: Optional[str] = None, allow_stale: bool = False,
                **kwargs):
        """Runs `workbench.compare.compare` on the project's model and records it in
        comparisons/NAME.json. `tflite`: a conversion of this project, by name."""
        from workbench.compare import compare

        self._writable()
        m = self._require_fresh_mapping(allow_stale)
        tfl = None
        if tflite is not None:
            tfl = self.conversion_path(tflite, allow_stale=allow_stale)
        c = compare(self.checkpoint_path(), self.blueprint, m, tflite=tfl, **kwargs)
        name = _name_ok(name or f"compare-{len(self.comparisons) + 1}")
        inputs = {"blueprint": self.blueprint.fingerprint(), "mapping": m.fingerprint(), "tflite": tflite}
        self.comparisons[name] = self._record("comparison", self.root / "comparisons" / f"{name}.json", inputs,
                                              c.to_json())
        return c

    def _record(self, kind: str, path: Path, inputs: dict, result: dict, **extra) -> dict:
        """Writes one result with what it was computed from (atomically); returns the record."""
        record = {"kind": f"edge-workbench/{kind}", "schema": 1, "created": _now(), **extra, "inputs": inputs,
                  "result": result}
        atomic_write_json(path, record)
        return record

    def comparison(self, name: str):
        """A recorded comparison as a Comparison (plots and verdict work; nothing recomputed)."""
        from workbench.compare import Comparison

        if name not in self.comparisons:
            raise ProjectError(f"no comparison named {name!r}", hint=f"recorded: {', '.join(self.comparisons) or 'none'}")
        return Comparison.from_json(self.comparisons[name]["result"])

    def convert(self, name: Optional[str] = None, *, allow_stale: bool = False, **kwargs):
        """Starts `workbench.convert.convert` on the project's mapping, writing into
        conversions/; the manifest records what the file was computed from. Returns the Job."""
        from workbench.convert import convert

        self._writable()
        m = self._require_fresh_mapping(allow_stale)
        inputs = {"blueprint": self.blueprint.fingerprint(), "mapping": m.fingerprint()}
        return convert(m, out=self.root / "conversions", name=name, manifest_extra={"inputs": inputs}, **kwargs)

    def compare_paths(self, name: Optional[str] = None, *, allow_stale: bool = False, **kwargs):
        """Converts the project's model both ways (re-authored, litert-torch's direct export)
        into conversions/ and records the side-by-side table in paths/NAME.json."""
        from workbench.conversion_paths import compare_paths

        self._writable()
        m = self._require_fresh_mapping(allow_stale)
        inputs = {"blueprint": self.blueprint.fingerprint(), "mapping": m.fingerprint()}
        table = compare_paths(m, out=self.root / "conversions", manifest_extra={"inputs": inputs}, **kwargs)
        recipe = table.recipe if isinstance(table.recipe, str) else "mixed"
        name = _name_ok(name or f"{recipe}-kv{table.kv}")
        self.paths[name] = self._record("paths", self.root / "paths" / f"{name}.json", inputs, table.to_json())
        return table

    def paths_table(self, name: str):
        """A recorded re-authored vs direct-export table (nothing recomputed)."""
        from workbench.conversion_paths import PathComparison

        if name not in self.paths:
            raise ProjectError(f"no paths table named {name!r}", hint=f"recorded: {', '.join(self.paths) or 'none'}")
        return PathComparison.from_json(self.paths[name]["result"])

    def _reload_sweeps(self) -> None:
        """A sweep saves rows from its own thread (or another process): read them afresh."""
        for f in sorted((self.root / "sweeps").glob("*.json")):
            try:
                self.sweeps[f.stem] = read_json(f, f"sweep {f.stem}")
            except ProjectError:
                pass

    def prepare_sweep(self, name: Optional[str] = None, recipes=("none", "dynamic_int8", "fp16", "int8_ff_int4"), *,
                      allow_stale: bool = False, **kwargs):
        """A recipe sweep of the project's model, ready to `run()` (see `workbench.sweep`):
        models go to conversions/ as `sweep-NAME-LABEL`, rows to sweeps/NAME.json as they
        finish; a sweep of the same name and settings resumes."""
        from workbench.sweep import prepare

        self._writable()
        m = self._require_fresh_mapping(allow_stale)
        name = _name_ok(name or "sweep")
        inputs = {"blueprint": self.blueprint.fingerprint(), "mapping": m.fingerprint()}
        (self.root / "sweeps").mkdir(exist_ok=True)
        s = prepare(m, recipes, out=self.root / "conversions", record_path=self.root / "sweeps" / f"{name}.json",
                    file_prefix=f"sweep-{name}-", manifest_extra={"inputs": inputs, "sweep": name}, project=self,
                    **kwargs)
        self._reload_sweeps()
        return s

    def sweep(self, name: Optional[str] = None, recipes=("none", "dynamic_int8", "fp16", "int8_ff_int4"), *,
              executor=None, parallel: Optional[int] = None, progress=None, retry_failed: bool = False,
              dask_timeout: float = 10.0, allow_stale: bool = False, **kwargs):
        """Prepares and runs a recipe sweep (see `prepare_sweep`); returns the Sweep."""
        s = self.prepare_sweep(name, recipes, allow_stale=allow_stale, **kwargs)
        s.run(executor=executor, parallel=parallel, progress=progress, retry_failed=retry_failed,
              dask_timeout=dask_timeout)
        self._reload_sweeps()
        return s

    def sweep_table(self, name: str = "sweep"):
        """A recorded sweep (table, plot, Pareto front; nothing recomputed)."""
        from workbench.sweep import Sweep

        self._reload_sweeps()
        if name not in self.sweeps:
            raise ProjectError(f"no sweep named {name!r}", hint=f"recorded: {', '.join(self.sweeps) or 'none'}")
        return Sweep.load(self.root / "sweeps" / f"{name}.json", project=self)

    @property
    def chosen(self) -> Optional[str]:
        """The conversion picked as the project's model (from a sweep, or `choose`)."""
        return self._data.get("chosen")

    def choose(self, conversion: Optional[str]) -> None:
        """Marks a conversion as the project's model: run and bundle take it by default.
        None clears the choice (the newest fresh conversion is taken again)."""
        self._writable()
        if conversion is not None:
            self.conversion_path(conversion)  # refuses a missing, damaged or stale one
        self._data = {**self._data, "chosen": conversion}
        atomic_write_json(self.root / PROJECT_FILE, self._data)

    def bundle(self, format: str = "litertlm", conversion: Optional[str] = None, **kwargs):
        """Bundles a conversion (default: the newest fresh one) with the checkpoint's tokenizer
        into bundles/, checked; a record beside it says what it was made from."""
        from workbench.bundle import SUFFIXES, bundle

        self._writable()
        name = conversion or self.latest_conversion()
        tflite = self.conversion_path(name)
        out = self.root / "bundles" / f"{name}{SUFFIXES.get(format, '')}"
        out.parent.mkdir(exist_ok=True)
        res = bundle(tflite, self.checkpoint_path(), format=format, out=out, **kwargs)
        self._record("bundle", out.with_name(out.name + ".json"), self.conversions[name].get("inputs", {}),
                     {**res.to_json(), "path": out.name}, conversion=name)
        return res

    def latest_conversion(self) -> str:
        """What `run` and `bundle` take by default: the chosen conversion when it is still
        fresh, else the newest fresh one."""
        states = self.status(detail=True)["conversions"]
        if self.chosen and states.get(self.chosen) == FRESH:
            return self.chosen
        fresh = [n for n, st in states.items() if st == FRESH]
        if not fresh:
            raise ProjectError("the project has no fresh conversion" + (
                f" (stale or damaged: {', '.join(states)})" if states else ""),
                hint="convert first: wb.convert(...) or `edge-workbench convert --project DIR`")
        return self.newest("conversions", fresh)

    def conversion_path(self, name: str, allow_stale: bool = False) -> Path:
        """The .tflite of a recorded conversion; refuses a stale or damaged one."""
        conversions = self.conversions
        if name not in conversions:
            raise ProjectError(f"no conversion named {name!r}",
                               hint=f"recorded: {', '.join(conversions) or 'none'}")
        detail = self.status(detail=True)
        state = detail["conversions"][name]
        if state == MISSING:
            raise ProjectError(f"conversion {name}: {detail['why'].get('conversions/' + name, 'missing')}",
                               hint="convert again (wb.convert(...))")
        if state == STALE and not allow_stale:
            raise ProjectError(f"conversion {name} is stale: the blueprint or mapping changed after it was made",
                               hint="convert again, or pass allow_stale=True to use it knowingly")
        return self.root / "conversions" / conversions[name]["model"]

    def to_python(self) -> str:
        """The re-authoring module (blueprint + TENSOR_NAMES) of the saved mapping."""
        return self.mapping.module_source()

    def _repr_html_(self) -> str:
        import html

        d = self.status(detail=True)
        color = {FRESH: "#2e7d32", STALE: "#e65100", MISSING: "#757575"}
        rows = []
        for step, state in d["steps"].items():
            rows.append(f"<tr><td><b>{step}</b></td><td style='color:{color[state]}'>{state}</td>"
                        f"<td>{html.escape(str(d['why'].get(step, '')))}</td></tr>")
            for name, st in d.get(step, {}).items() if step in ("comparisons", "conversions", "paths", "sweeps") else ():
                why = d["why"].get(f"{step}/{name}", "") or ("chosen model" if step == "conversions"
                                                               and name == d["chosen"] else "")
                rows.append(f"<tr><td>&nbsp;&nbsp;{html.escape(name)}</td><td style='color:{color[st]}'>{st}</td>"
                            f"<td>{html.escape(why)}</td></tr>")
        notes = d["problems"] + [f"leftover of a killed process: {x}" for x in d["leftovers"]]
        return (f"<div class='ewb-project'><b>Project</b> {html.escape(str(self.root))}"
                + (f" <i>({html.escape(self.notice or 'read-only')})</i>" if self.readonly else "")
                + "<table>" + "".join(rows) + "</table>"
                + "".join(f"<div style='color:#c62828'>{html.escape(n)}</div>" for n in notes) + "</div>")

    def __repr__(self) -> str:
        s = self.status()
        ro = ", read-only" if self.readonly else ""
        return f"Workbench({str(self.root)!r}{ro}: " + ", ".join(f"{k} {v}" for k, v in s.items()) + ")"

    # ---- migration from loose files --------------------------------------------------
    @classmethod
    def _migrate_loose(cls, root: Path, readonly: Optional[bool]) -> "Workbench":
        """Schema 0: a folder of files Edge Workbench saved before projects existed — a
        `mapping.json` from `Mapping.save` (blueprint inside, checkpoint by absolute path)
        and conversions (`.tflite` + manifest) in `conversions/` or `out/`. Adopted in place:
        `workbench.json`, `blueprint.json` written; files are left where they are."""
        old = read_json(root / "mapping.json", "the mapping")
        if old.get("kind") != "edge-workbench/mapping":
            raise ProjectError(f"{root}/mapping.json is not an Edge Workbench mapping, and {root} has no "
                               f"{PROJECT_FILE}", hint="create a project with Workbench.new(path, from_hf=...)")
        if readonly:
            raise ProjectError(f"{root} holds files from before projects (schema 0); opening it migrates them",
                               hint="open it once for writing to migrate it")
        ck = Path(old.get("checkpoint", ""))
        data = {"kind": KIND, "schema": SCHEMA_VERSION, "name": root.name, "created": _now(),
                "checkpoint": _path_record(ck.resolve(), root) if str(ck) else None, "migrated_from": 0}
        atomic_write_json(root / "blueprint.json", old["blueprint"])
        if (root / "out").is_dir() and not (root / "conversions").exists():
            (root / "out").rename(root / "conversions")
        atomic_write_json(root / PROJECT_FILE, data)
        wb = cls.open(root, readonly=readonly)
        try:
            m = wb.mapping
        except WorkbenchError:
            return wb  # the checkpoint moved: status says so; set_checkpoint fixes it
        if m.blueprint.fingerprint() == old.get("blueprint_fingerprint", m.blueprint.fingerprint()):
            wb.save_mapping(m)
        return wb


def _migrate(data: dict, root: Path) -> dict:
    """Checks the project file; brings older schemas up to this one."""
    if data.get("kind") != KIND:
        raise ProjectError(f"{root / PROJECT_FILE} is not an Edge Workbench project file",
                           hint="restore it from git, or move it away and create the project again")
    schema = data.get("schema")
    if not isinstance(schema, int):
        raise ProjectError(f"{root / PROJECT_FILE} has no schema version", hint="restore it from git")
    if schema > SCHEMA_VERSION:
        raise ProjectError(f"the project was written by a newer Edge Workbench (schema {schema}; this one reads up "
                           f"to {SCHEMA_VERSION})", hint="upgrade Edge Workbench to open it; nothing was changed")
    if schema < 1:
        raise ProjectError(f"project schema {schema} is unknown", hint="restore workbench.json from git")
    return data


def _path_record(target: Path, root: Path) -> dict:
    return {"relative": os.path.relpath(target, root.resolve()), "absolute": str(target)}


def _copy_tree(src: Path, dst: Path) -> None:
    if not (src / "config.json").is_file():
        raise ProjectError(f"{src} holds no config.json", hint="give a Hugging Face model folder")
    tmp = dst.with_name(f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copytree(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _io.write_error(e, dst, ProjectError) from None


__all__ = ["Workbench", "ProjectError", "STEPS", "atomic_write_bytes", "atomic_write_json"]
