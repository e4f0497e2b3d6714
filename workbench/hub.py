"""Hugging Face Hub ids wherever a model folder is taken, as `from_pretrained` takes them.

    resolve("sample_models/llama-tiny")          # a folder that exists: itself, always
    resolve("Qwen/Qwen2.5-0.5B-Instruct")        # the snapshot folder in the hub's cache
    resolve("Qwen/Qwen2.5-0.5B-Instruct@v1.0")   # a branch, tag or commit of it
    origin(path)                                 # HubSource(id, revision, commit, path), or None

An id is `org/name`, optionally `@revision` (default `main`); a string that names an
existing file or folder is never read as an id (a local folder always wins). The files land in huggingface_hub's
standard cache (`HF_HUB_CACHE`, else `HF_HOME/hub`), where transformers finds them too.
Only what the workbench reads is downloaded, chosen from the repository's file list:
config.json, the tokenizer files, and the weights (the safetensors, or the PyTorch
`.bin` files only when there are no safetensors); `need="config"` fetches config.json
alone (a Blueprint needs nothing more), `need="tokenizer"` the config and tokenizer files. Offline (`HF_HUB_OFFLINE=1`, read at each call)
a cached snapshot resolves with no network; anything else is a HubError naming the fix.

Progress goes through the project's protocol (`stage`, bytes done, bytes in all, the
file); with no callback, one tqdm bar is drawn (a widget in a notebook), as
`from_pretrained` draws one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

from workbench.checkpoint import TOKENIZER_FILES, has_tokenizer
from workbench.errors import WorkbenchError
from workbench.progress import Progress, report

CONFIG_FILES = ("config.json", "generation_config.json")
NEEDS = ("config", "tokenizer", "all")
LOGIN = "log in with `hf auth login` (older clients: `huggingface-cli login`) or set HF_TOKEN"
# org/name[@revision]: the hub's own name rules (letters, digits, '-', '_', '.'), one slash.
_ID = re.compile(r"^(?P<id>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w./-]+))?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".tflite", ".py", ".task", ".litertlm")
_RESOLVED: dict[tuple, "HubSource"] = {}  # online look-ups of this process (a snapshot never changes)
_ORIGINS: dict[str, "HubSource"] = {}  # snapshot folder -> what it was resolved from


class HubError(WorkbenchError):
    """A Hub id that cannot be resolved: not found, gated, not cached while offline, ..."""


@dataclasses.dataclass(frozen=True)
class HubSource:
    """A model on the Hub, pinned: its id, the revision asked for, the commit it resolved to,
    and the snapshot folder holding its files."""
    id: str
    revision: str
    commit: str
    path: Path

    def to_json(self) -> dict:
        return {"id": self.id, "revision": self.revision, "commit": self.commit}

    def __str__(self) -> str:
        return f"{self.id}@{self.commit[:12]}"


# ---- ids -------------------------------------------------------------------------
def parse(source: Any) -> Optional[tuple[str, str]]:
    """(id, revision) when `source` (a str, or a relative Path) reads as a Hub id and names
    no existing file or folder, else None."""
    if isinstance(source, Path):
        source = source.as_posix()
    if not isinstance(source, str) or os.path.lexists(os.path.expanduser(source)):
        return None
    m = _ID.match(source.strip())
    if not m or "--" in m["id"] or ".." in m["id"] or m["id"].endswith((".", "-")):
        return None
    if m["rev"] is None and m["id"].lower().endswith(_FILE_SUFFIXES):
        return None  # "models/config.json": a missing file, not a model
    return m["id"], m["rev"] or "main"


def is_hub_id(source: Any) -> bool:
    return parse(source) is not None


def cache_dir() -> Path:
    """huggingface_hub's cache, read from the environment now (not when it was imported)."""
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline() -> bool:
    """HF_HUB_OFFLINE as it is set now."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _repo_folder(repo_id: str, cache: Path) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


# ---- resolving -------------------------------------------------------------------
def resolve(source: Any, *, need: str = "all", progress: Optional[Progress] = None) -> Path:
    """The local folder for `source`: itself unless it is a Hub id (then its snapshot,
    downloaded as needed). `need`: "all" (config, tokenizer, weights), "tokenizer" (config
    and tokenizer) or "config"."""
    parsed = parse(source)
    if parsed is None:
        return Path(source)
    return snapshot(*parsed, need=need, progress=progress, asked=str(source)).path


def origin(path: Any) -> Optional[HubSource]:
    """The Hub model a folder is a cached snapshot of (`.../models--ORG--NAME/snapshots/COMMIT`),
    or None for any other folder. The revision is the one asked for when this process
    resolved it, else the commit."""
    try:
        p = Path(path).expanduser().absolute()
    except TypeError:
        return None
    known = _ORIGINS.get(str(p))
    if known is not None:
        return known
    if p.parent.name != "snapshots" or not p.parent.parent.name.startswith("models--"):
        return None
    parts = p.parent.parent.name[len("models--"):].split("--")
    if len(parts) != 2 or not _COMMIT.match(p.name):
        return None
    return HubSource("/".join(parts), p.name, p.name, p)


def snapshot(repo_id: str, revision: str = "main", *, need: str = "all", progress: Optional[Progress] = None,
             asked: Optional[str] = None) -> HubSource:
    """Resolves `repo_id@revision` to a snapshot holding what `need` asks for: from the
    cache when offline (or when a pinned commit is already there), else from the Hub."""
    if need not in NEEDS:
        raise ValueError(f"need={need!r}: choose one of {NEEDS}")
    asked = asked or f"{repo_id}@{revision}"
    cache = cache_dir()
    if offline():
        return _remember(_from_cache(repo_id, revision, need, cache, asked, why="HF_HUB_OFFLINE is set"))
    key = (repo_id, revision, need, str(cache))
    if key in _RESOLVED and _missing(_RESOLVED[key].path, need) == []:
        return _RESOLVED[key]
    if _COMMIT.match(revision):  # a pinned commit never changes: a complete cached copy is it
        snap = _repo_folder(repo_id, cache) / "snapshots" / revision
        if snap.is_dir() and not _missing(snap, need):
            return _remember(HubSource(repo_id, revision, revision, snap))
    src = _download(repo_id, revision, need, cache, asked, progress)
    _RESOLVED[key] = src
    return _remember(src)


def _remember(src: HubSource) -> HubSource:
    _ORIGINS[str(src.path.absolute())] = src
    return src


def _weight_files(names: list[str]) -> list[str]:
    """The weights the workbench reads, from a repository's top-level file names: the
    safetensors (the index, or model.safetensors, or every shard but Mistral's duplicate
    `consolidated` copy); PyTorch `.bin` files only when there are no safetensors."""
    top = [n for n in names if "/" not in n]
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if index in top:
            return [index]  # the shards it names are added once it is read
    if "model.safetensors" in top:
        return ["model.safetensors"]
    shards = sorted(n for n in top if n.endswith(".safetensors") and not n.startswith("consolidated"))
    if shards:
        return shards
    return ["pytorch_model.bin"] if "pytorch_model.bin" in top else \
        sorted(n for n in top if n.endswith(".bin") and n.startswith("pytorch_model"))


def needed_files(names: list[str], need: str = "all") -> list[str]:
    """What to download from a repository listing `names` (before the shards of an index)."""
    top = set(n for n in names if "/" not in n)
    files = [f for f in CONFIG_FILES if f in top]
    if need != "config":
        files += [f for f in TOKENIZER_FILES if f in top]
    if need == "all":
        files += _weight_files(names)
    return files


def _shards(index: Path) -> list[str]:
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise HubError(f"{index.name} is not a shard index ({e})",
                       hint=f"delete {index.parent} from the Hugging Face cache and resolve the model again") from None


def _missing(snap: Path, need: str) -> list[str]:
    """What a cached snapshot lacks for `need` ([] when complete)."""
    if not (snap / "config.json").is_file():
        return ["config.json"]
    if need == "config":
        return []
    if need == "tokenizer":
        return [] if has_tokenizer(snap) else ["the tokenizer files"]
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (snap / index).is_file():
            return [s for s in _shards(snap / index) if not (snap / s).is_file()]
    if any(f.is_file() for pattern in ("*.safetensors", "*.bin") for f in snap.glob(pattern)):
        return []
    return ["the weights (*.safetensors)"]


def _from_cache(repo_id: str, revision: str, need: str, cache: Path, asked: str, why: str) -> HubSource:
    repo = _repo_folder(repo_id, cache)
    fix_online = ("download it where the Hub is reachable with HF_HUB_OFFLINE unset (export HF_HUB_OFFLINE=0), "
                  "or give a local model folder") if offline() else \
        "check the connection (or HTTPS_PROXY) and run the same command again, or give a local model folder"
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        raise HubError(f"no folder {asked!r} here, and {repo_id} is not in the Hugging Face cache {cache} "
                       f"({why})", hint=fix_online)
    commit = None
    ref = repo / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
    elif (snapshots / revision).is_dir():
        commit = revision
    elif re.fullmatch(r"[0-9a-f]{7,39}", revision):
        found = [p.name for p in snapshots.iterdir() if p.name.startswith(revision)]
        commit = found[0] if len(found) == 1 else None
    if commit is None or not (snapshots / commit).is_dir():
        cached = sorted(p.name for p in (repo / "refs").iterdir()) if (repo / "refs").is_dir() else []
        cached += sorted(p.name[:12] for p in snapshots.iterdir() if p.is_dir())
        raise HubError(f"revision {revision!r} of {repo_id} is not in the Hugging Face cache ({why}); cached: "
                       f"{', '.join(cached) or 'nothing'}", hint=f"use one of those ({repo_id}@REV), or {fix_online}")
    snap = snapshots / commit
    missing = _missing(snap, need)
    if missing:
        raise HubError(f"{repo_id}@{revision} is only partly in the Hugging Face cache ({why}): "
                       f"{', '.join(missing[:3])} missing from {snap}", hint=f"to fetch the rest, {fix_online}")
    return HubSource(repo_id, revision, commit, snap)


def _hub_failure(e: Exception, repo_id: str, revision: str, asked: str) -> Optional[HubError]:
    """A clear HubError for what the Hub answered, or None when it could not be reached."""
    from huggingface_hub import errors as E

    if isinstance(e, E.GatedRepoError):
        return HubError(f"{repo_id} is gated: its files need an accepted licence and a login",
                        hint=f"accept its terms at https://huggingface.co/{repo_id}, then {LOGIN}")
    if isinstance(e, E.RevisionNotFoundError):
        return HubError(f"{repo_id} has no revision {revision!r} on the Hugging Face Hub",
                        hint=f"give a branch, tag or commit of it ({repo_id}@main), or leave @REV off")
    if isinstance(e, E.RepositoryNotFoundError):
        return HubError(f"no folder {asked!r} here, and no model {repo_id!r} on the Hugging Face Hub "
                        "(or it is private)", hint=f"check the spelling (org/name); for a private model, {LOGIN}")
    if isinstance(e, E.HfHubHTTPError) and getattr(getattr(e, "response", None), "status_code", 0) in (401, 403):
        return HubError(f"the Hugging Face Hub refused access to {repo_id}", hint=LOGIN)
    return None


def _unreachable(e: Exception) -> bool:
    """A failure to reach the Hub (connection, timeout, proxy, server error, offline mode)."""
    from huggingface_hub import errors as E

    module = type(e).__module__.split(".")[0]
    return isinstance(e, (OSError, E.OfflineModeIsEnabled)) or module in {"httpx", "httpx2", "httpcore", "requests",
                                                                         "urllib3"}


def _download(repo_id: str, revision: str, need: str, cache: Path, asked: str,
              progress: Optional[Progress]) -> HubSource:
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as e:  # noqa: BLE001 - the Hub's answer, or no answer at all
        failure = _hub_failure(e, repo_id, revision, asked)
        if failure is not None:
            raise failure from None
        if not _unreachable(e):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        return _from_cache(repo_id, revision, need, cache, asked, why=f"the Hub cannot be reached: {first}")
    commit = info.sha
    sizes = {s.rfilename: (s.size or 0) for s in (info.siblings or [])}
    if "config.json" not in sizes:
        raise HubError(f"{repo_id} has no config.json: it is not a transformers model",
                       hint="give a model repository that holds config.json and safetensors weights")
    files = needed_files(list(sizes), need)
    if need == "all" and not _weight_files(list(sizes)):
        raise HubError(f"{repo_id} has no weights the workbench reads (model*.safetensors or pytorch_model*.bin)",
                       hint="choose a repository with transformers weights in safetensors (e.g. not a GGUF or "
                            "ONNX-only one)")
    snap = _repo_folder(repo_id, cache) / "snapshots" / commit
    bar = _Bar() if progress is None else None
    fetch = _Fetch(repo_id, commit, cache, progress or bar, sizes)
    fetch.total = sum(sizes.get(f, 0) for f in files)
    try:
        for f in files:
            fetch(f)
            if f.endswith(".index.json"):
                shards = [s for s in _shards(snap / f) if s not in files]
                fetch.total += sum(sizes.get(s, 0) for s in shards)
                for s in shards:
                    fetch(s)
    finally:
        if bar is not None:
            bar.close()
    if not commit.startswith(revision):  # a branch or tag: so it resolves offline later, as the hub's own do
        ref = _repo_folder(repo_id, cache) / "refs" / revision
        try:
            ref.parent.mkdir(parents=True, exist_ok=True)
            tmp = ref.with_name(f".{ref.name}.tmp-{os.getpid()}")
            tmp.write_text(commit)
            os.replace(tmp, ref)
        except OSError:
            pass  # only offline look-ups by name need it
    return HubSource(repo_id, revision, commit, snap)


class _Bar:
    """The progress drawn when the caller gives no callback, as `from_pretrained` draws it:
    one bar for the whole download (a widget in a notebook, text on a terminal's stderr)."""

    def __init__(self) -> None:
        self.bar = None

    def __call__(self, stage: str, done: int, total: int, detail: str = "") -> None:
        from tqdm.auto import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=stage, unit="B", unit_scale=True, unit_divisor=1024)
        self.bar.total, self.bar.n = total, done
        self.bar.set_postfix_str(detail)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Fetch:
    """Downloads files of one commit into the cache, reporting bytes through the protocol."""

    def __init__(self, repo_id: str, commit: str, cache: Path, progress: Optional[Progress],
                 sizes: dict[str, int]) -> None:
        self.repo_id, self.commit, self.cache, self.progress, self.sizes = repo_id, commit, cache, progress, sizes
        self.total = 0
        self.done = 0
        self.count = 0

    def __call__(self, filename: str) -> None:
        from huggingface_hub import hf_hub_download

        self.count += 1
        start = self.done
        fetch = self
        stage = f"download {self.repo_id}"

        class Bar:  # huggingface_hub's per-file bar, turned into protocol calls
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.n = kwargs.get("initial", 0) or 0
                self.total = kwargs.get("total")
                fetch.done = start + self.n
                report(fetch.progress, stage, fetch.done, fetch.total, filename)

            def update(self, n: Any = 1) -> None:
                self.n += int(n or 0)
                fetch.done = start + self.n
                report(fetch.progress, stage, fetch.done, fetch.total, filename)

            def __enter__(self) -> "Bar":
                return self

            def __exit__(self, *exc: Any) -> None:
                pass

            def __getattr__(self, name: str) -> Any:  # set_postfix_str, close, refresh, ...: nothing to draw
                return lambda *a, **k: None

        try:
            hf_hub_download(self.repo_id, filename, revision=self.commit, cache_dir=self.cache, tqdm_class=Bar)
        except Exception as e:  # noqa: BLE001 - a failed transfer, said once with the fix
            failure = _hub_failure(e, self.repo_id, self.commit, self.repo_id)
            if failure is not None:
                raise failure from None
            if not _unreachable(e):
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise HubError(f"downloading {filename} of {self.repo_id} failed: {first}",
                           hint="check the connection (and the disk space of the Hugging Face cache), then run the "
                                "same command again: finished files are kept") from None
        self.done = start + self.sizes.get(filename, 0)
        report(self.progress, stage, self.done, self.total, filename)
