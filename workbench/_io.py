"""Files as the workbench writes and reads them: atomic writes, JSON with a clear error, and
one content digest.

- `atomic_write_bytes` / `atomic_write_json`: a reader sees the old file or the new one,
  never half of one (a unique temporary name beside it, fsync, rename, fsync of the folder;
  two writers never share a temporary file);
- `read_json`: a JSON object, or an error naming the file, what it is, and the fix;
- `digest`: the 16-hex-digit content hash of a JSON-able value (fingerprints of blueprints
  and mappings, cache keys of exports and sweeps). Saved projects hold these: it must not
  change.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from workbench.errors import WorkbenchError


class FileError(WorkbenchError):
    """A file that cannot be read or written as asked."""


def digest(obj: Any) -> str:
    """sha256 of the value's JSON (keys sorted; anything not JSON as its str()), 16 hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _write_all(f, data: bytes) -> None:
    """Writes every byte (a seam: the disk-full tests fail it half-way)."""
    f.write(data)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_error(e: OSError, path: Path, error: type[WorkbenchError] = FileError) -> WorkbenchError:
    """An OSError met writing `path`, as the error a user can act on."""
    if e.errno == errno.ENOSPC:
        return error(f"the disk is full while writing {path.name}; the previous version is intact",
                     hint="free space on the disk and save again")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return error(f"cannot write {path}: {e.strerror}",
                     hint="the folder is read-only: copy it somewhere writable, or fix its permissions")
    return error(f"cannot write {path}: {e.strerror or e}", hint="check the folder")


def atomic_write_bytes(path: str | Path, data: bytes, error: type[WorkbenchError] = FileError,
                       parents: bool = True) -> None:
    """Replaces `path` with `data` so that a reader sees the old file or the new one, never
    half of one: a unique temporary file beside it, fsync, rename, fsync of the folder.
    An OSError becomes `error` (naming the file and the fix); the old file is left intact.
    `parents=False`: a missing folder is an error instead of being made."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        if parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            _write_all(f, data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise write_error(e, path, error) from None


def atomic_write_json(path: str | Path, obj: Any, error: type[WorkbenchError] = FileError,
                      compact: bool = False, parents: bool = True) -> None:
    """`obj` as JSON (indented for files meant for git and people, or compact), atomically."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False) if compact else \
        json.dumps(obj, indent=1, allow_nan=False) + "\n"
    atomic_write_bytes(path, text.encode(), error, parents)


def atomic_write_text(path: str | Path, text: str, error: type[WorkbenchError] = FileError) -> None:
    atomic_write_bytes(path, text.encode(), error)


def read_json(path: str | Path, what: str, error: type[WorkbenchError] = FileError) -> dict:
    """The JSON object in `path`; `what` names it in the error ("the mapping")."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(f"{what} is missing: {path}", hint="restore it from git, or redo that step") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{what} ({Path(path).name}) is not valid JSON: {e}",
                    hint="restore it from git (`git checkout -- FILE`), or delete it and redo that step") from None
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}", hint="check the file's permissions") from None
    if not isinstance(data, dict):
        raise error(f"{what} ({Path(path).name}) holds a {type(data).__name__}, not a JSON object",
                    hint="restore it from git, or delete it and redo that step")
    return data
