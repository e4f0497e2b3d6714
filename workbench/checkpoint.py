"""A checkpoint's tensors, known from headers and read one at a time.

    ckpt = Checkpoint.open("sample_models/llama-tiny")
    ckpt.tensors["model.embed_tokens.weight"]   # TensorInfo(shape, dtype, file) from the header
    ckpt.get("model.embed_tokens.weight")       # the tensor, read from the mmapped file

Safetensors (single or sharded through `model.safetensors.index.json`) are read from
their JSON headers without touching the data. PyTorch `.bin`/`.pt` files are opened
only through `torch.load(weights_only=True, mmap=True)`: a pickle that needs code
to run is refused, never executed.
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import struct
import warnings
from pathlib import Path
from typing import Optional

from workbench.errors import WorkbenchError

SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                      "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
          "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Every file a checkpoint's tokenizer may be made of (fetched with a Hub model), and the files one
# of which makes a usable tokenizer: these decide how text becomes ids, and the digest covers them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
                   "spiece.model")
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "spiece.model")


def has_tokenizer(folder: str | Path) -> bool:
    return any((Path(folder) / f).is_file() for f in VOCABULARY_FILES)


def tokenizer_digest(folder: str | Path) -> Optional[str]:
    """A digest of a checkpoint's vocabulary files (None when it holds none): two folders with
    the same digest tokenize the same way."""
    import hashlib

    h, found = hashlib.sha256(), False
    for name in VOCABULARY_FILES:
        f = Path(folder) / name
        if f.is_file():
            found = True
            h.update(name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16] if found else None


class CheckpointError(WorkbenchError):
    """A checkpoint that cannot be read as it is."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name: float32, bfloat16, ...
    file: str  # the file that holds it (relative to the checkpoint folder)
    offset: int = -1  # safetensors: where its bytes start in the file

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * _BYTES.get(self.dtype, 4)


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, shapes and dtypes from a safetensors header; checks the file is whole."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                raise ValueError(f"header length {n} does not fit in a {size}-byte file")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({e})",
                              hint="the file is corrupt or truncated: download or copy it again") from None
    out: dict[str, TensorInfo] = {}
    end = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(meta.get("dtype"), str(meta.get("dtype")).lower())
        out[name] = TensorInfo(name, tuple(meta["shape"]), dtype, path.name, 8 + n + meta["data_offsets"][0])
        end = max(end, meta["data_offsets"][1])
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path.name} is truncated: its header describes {8 + n + end:,} bytes but the file has {size:,}",
            hint="the download or copy stopped early: fetch the file again")
    return out


class Checkpoint:
    """The tensors of a checkpoint folder (or single file), readable one at a time."""

    def __init__(self, root: Path, tensors: dict[str, TensorInfo], kind: str) -> None:
        self.root = root
        self.tensors = tensors
        self.kind = kind  # "safetensors" or "pytorch"
        self.notes: list[str] = []
        self._maps: dict[str, mmap.mmap] = {}
        self._state: Optional[dict] = None  # a mmapped torch state dict (pytorch kind)

    @classmethod
    def open(cls, path: str | Path, progress=None) -> "Checkpoint":
        """A checkpoint folder (or weights file); a Hub id (`org/name[@revision]`) is read from
        the hub's cache, downloading what is missing (`progress`: the project's callback)."""
        from workbench import hub

        p = hub.resolve(path, progress=progress)
        if not p.exists():
            raise CheckpointError(f"checkpoint {str(p)!r} does not exist",
                                  hint="give the model folder (or its weights file)")
        folder = p if p.is_dir() else p.parent
        if p.is_dir():
            index = folder / "model.safetensors.index.json"
            if index.is_file():
                return cls._open_sharded(folder, index)
            files = sorted(folder.glob("*.safetensors")) or sorted(
                f for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES)
        else:
            files = [p]
        if files and all(f.suffix == ".safetensors" for f in files):
            tensors: dict[str, TensorInfo] = {}
            for f in files:
                for name, info in read_safetensors_header(f).items():
                    if name in tensors:
                        raise CheckpointError(f"tensor {name!r} is in both {tensors[name].file} and {f.name}",
                                              hint="remove the stray file from the folder")
                    tensors[name] = info
            return cls(folder, tensors, "safetensors")
        if files and all(f.suffix in PICKLE_SUFFIXES for f in files):
            return cls._open_pickles(folder, files)
        raise CheckpointError(f"no weight files in {str(folder)!r} (looked for *.safetensors, "
                              "model.safetensors.index.json, *.bin, *.pt)",
                              hint="put the model's weights beside its config.json")

    @classmethod
    def _open_sharded(cls, folder: Path, index: Path) -> "Checkpoint":
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index.name} is not a shard index ({e})",
                                  hint="restore model.safetensors.index.json from the model's files") from None
        tensors: dict[str, TensorInfo] = {}
        for shard in sorted(set(weight_map.values())):
            f = folder / shard
            if not f.is_file():
                names = [k for k, v in weight_map.items() if v == shard]
                raise CheckpointError(
                    f"{index.name} names shard {shard!r}, which is missing ({len(names)} tensors, e.g. {names[0]!r})",
                    hint=f"copy {shard} into {folder}")
            header = read_safetensors_header(f)
            for name, info in header.items():
                tensors[name] = info
        missing = [k for k in weight_map if k not in tensors]
        if missing:
            raise CheckpointError(f"{len(missing)} tensors listed in {index.name} are not in their shards, "
                                  f"e.g. {missing[0]!r}", hint="the shards do not belong to this index")
        return cls(folder, tensors, "safetensors")

    @classmethod
    def _open_pickles(cls, folder: Path, files: list[Path]) -> "Checkpoint":
        import pickle

        import torch

        state: dict = {}
        tensors: dict[str, TensorInfo] = {}
        for f in files:
            try:
                try:
                    part = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError:  # the legacy (non-zip) format cannot be mmapped
                    part = torch.load(f, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as e:
                raise CheckpointError(
                    f"{f.name} is a pickle that runs code when loaded; it was refused, not executed "
                    f"({str(e).splitlines()[0][:160]})",
                    hint="convert it to safetensors where you trust it, or get the model's .safetensors files") from None
            except Exception as e:  # noqa: BLE001 - any other failure is a corrupt file
                raise CheckpointError(f"{f.name} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})",
                                      hint="the file is corrupt or truncated: fetch it again") from None
            if isinstance(part, dict) and "model_state_dict" in part:
                part = part["model_state_dict"]
            if not isinstance(part, dict):
                raise CheckpointError(f"{f.name} holds a {type(part).__name__}, not a state dict",
                                      hint="save the model with torch.save(model.state_dict(), ...)")
            for k, v in part.items():
                if isinstance(v, torch.Tensor):
                    state[k] = v
                    tensors[k] = TensorInfo(k, tuple(v.shape), str(v.dtype).removeprefix("torch."), f.name)
        ckpt = cls(folder, tensors, "pytorch")
        ckpt._state = state
        return ckpt

    # ---- reading ------------------------------------------------------------------
    def get(self, name: str, dtype: str = "float32"):
        """One tensor, read on demand and converted to `dtype` (a note records conversions)."""
        import torch

        info = self.tensors.get(name)
        if info is None:
            raise CheckpointError(f"the checkpoint has no tensor {name!r}", hint="check the mapping's source names")
        want = getattr(torch, dtype)
        if info.dtype != dtype:
            note = f"{info.dtype} tensors converted to {dtype}"
            if note not in self.notes:
                self.notes.append(note)
        if self._state is not None:
            return self._state[name].to(want, copy=True)
        # Copy the tensor out of the mmapped file, then drop those pages from our
        # mapping: the result is ordinary memory (safe if the file changes later) and
        # the file's pages never count twice in this process's memory.
        mm = self._maps.get(info.file)
        if mm is None:
            with open(self.root / info.file, "rb") as f:
                mm = self._maps[info.file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        count = 1
        for d in info.shape:
            count *= d
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "non-writable buffer": we copy at once
            view = torch.frombuffer(mm, dtype=getattr(torch, info.dtype), count=count, offset=info.offset)
        t = view.reshape(info.shape).to(want, copy=True)
        del view
        start = info.offset - info.offset % mmap.PAGESIZE
        try:
            mm.madvise(mmap.MADV_DONTNEED, start, info.offset + info.nbytes - start)
        except (AttributeError, OSError, ValueError):
            pass  # madvise is an optimisation only
        return t

    def fingerprint(self) -> str:
        """A cheap identity of the weights: every tensor's name, shape, dtype and place, each
        file's size, and hashes of each file's first and last 64 KiB. A re-saved or swapped
        checkpoint changes it; reading gigabytes to hash them all would not be cheap."""
        import hashlib

        h = hashlib.sha256()
        for name in sorted(self.tensors):
            t = self.tensors[name]
            h.update(f"{name}|{t.shape}|{t.dtype}|{t.file}|{t.offset}\n".encode())
        for file in sorted({t.file for t in self.tensors.values()}):
            path = self.root / file
            try:
                size = path.stat().st_size
                with open(path, "rb") as f:
                    h.update(f"{file}|{size}".encode() + f.read(65536))
                    f.seek(max(0, size - 65536))
                    h.update(f.read(65536))
            except OSError as e:
                raise CheckpointError(f"cannot read {path}: {e.strerror or e}",
                                      hint="check that the checkpoint's files are all there and readable") from None
        return h.hexdigest()[:16]

    def close(self) -> None:
        for mm in self._maps.values():
            mm.close()
        self._maps.clear()
        self._state = None

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def dtypes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors.values():
            out[t.dtype] = out.get(t.dtype, 0) + 1
        return out

    def __repr__(self) -> str:
        return (f"Checkpoint({str(self.root)!r}, {self.kind}, {len(self.tensors)} tensors, "
                f"{self.nbytes / 2**20:.1f} MiB, dtypes {self.dtypes()})")
