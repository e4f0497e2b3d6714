"""Conversion as a job: a child process we own, with progress, memory, cancel, and atomic output.

    job = convert(mapping, recipe="dynamic_int8", prefill=[8, 64], kv=1024, out="out/")
    job.status()      # stage, elapsed, current and peak memory of the child
    job.cancel()      # ends it within seconds; nothing finished-looking is left
    res = job.result()  # waits; a ConversionResult, or ConversionError with signal, stage, log tail, hint

The child (`workbench.convert_worker`) builds the re-authored model, loads its weights,
converts it through litert-torch's generative converter (`prefill_N` + `decode`
signatures), checks the file in ai-edge-litert, and writes model and manifest under
temporary names that are renamed only when both are complete.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Union

from workbench import tempdirs
from workbench._io import digest
# what convert() raises and takes, importable beside it
from workbench.convert_settings import ConversionError, ConvertSettings
from workbench.recipe import Recipe

STAGES = ("build", "load weights", "export", "lower", "quantize", "write", "check")
# litert-torch's quantize names -> what litert-torch's direct export (export_hf) takes: an
# ai-edge-quantizer recipe name, or a recipe of rules (written to a JSON file for it).
EXPORT_HF_RECIPES: dict[str, Any] = {
    "none": "none",
    "dynamic_int8": "dynamic_wi8_afp32",
    "weight_only_int8": "weight_only_wi8_afp32",
    "dynamic_int4_block32": "dynamic_wi4b32_afp32",
    # ai-edge-quantizer has no named recipe for these two: the same rules, written out.
    "fp16": [{"regex": ".*", "operation": "*", "algorithm_key": "float_casting",
              "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
                            "compute_precision": "FLOAT", "explicit_dequantize": True, "skip_checks": False}}],
    "dynamic_int4_block128": [{"regex": ".*", "operation": "*", "algorithm_key": "min_max_uniform_quantize",
                               "op_config": {"weight_tensor_config": {"num_bits": 4, "symmetric": True,
                                                                      "granularity": "BLOCKWISE_128", "dtype": "INT"},
                                             "compute_precision": "INTEGER", "explicit_dequantize": False,
                                             "skip_checks": False, "min_weight_elements": 0}}],
}


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    path: Path
    manifest_path: Path
    size_bytes: int
    signatures: list[str]
    check: dict
    seconds: float
    peak_rss_bytes: int
    recipe: Any
    quant_error: Optional[dict] = None  # where quantization hurts (quantized recipes)

    def to_json(self) -> dict:
        return {"path": str(self.path), "manifest": str(self.manifest_path), "size_bytes": self.size_bytes,
                "signatures": self.signatures, "check": self.check, "seconds": self.seconds,
                "peak_rss_bytes": self.peak_rss_bytes, "recipe": self.recipe, "quant_error": self.quant_error}


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
_warm: Optional[tuple[subprocess.Popen, Path]] = None
_warm_lock = threading.Lock()


def prewarm(wait: bool = False, timeout: float = 120) -> None:
    """Starts a worker that imports torch/litert-torch now, so the next conversion skips
    that (~5 s). It waits on its stdin; it exits when this process does."""
    global _warm
    with _warm_lock:
        if _warm is None or _warm[0].poll() is not None:
            log = tempdirs.make("warm") / "job.log"
            proc = subprocess.Popen([sys.executable, "-m", "workbench.convert_worker", "--serve"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "w"),
                                    env={**os.environ, **_ENV}, text=True, start_new_session=True)
            _warm = (proc, log)
        proc = _warm[0]
    if wait:
        line = proc.stdout.readline()  # the "ready" event
        if '"ready"' not in line:
            raise ConversionError("the conversion worker did not start", hint="see its log: " + str(_warm[1]))
        proc._ewb_ready = True


def _take_warm() -> Optional[tuple[subprocess.Popen, Path]]:
    global _warm
    if any(k.startswith("EWB_TEST_") for k in os.environ):
        return None  # test seams live in the environment a fresh worker inherits
    with _warm_lock:
        w, _warm = _warm, None
    if w is not None and w[0].poll() is None:
        return w
    if w is not None:
        w[0].wait()
        tempdirs.remove(w[1].parent)
    return None


@atexit.register
def _stop_warm() -> None:
    w = _take_warm()
    if w is not None:
        w[0].kill()
        w[0].wait()
        tempdirs.remove(w[1].parent)


class Job:
    """A running conversion. Thread-safe to poll; `result()` waits for the end."""

    def __init__(self, spec: dict, workdir: Path, progress: Optional[Callable] = None) -> None:
        self.spec = spec
        self.settings = ConvertSettings.from_json(spec["settings"])  # resolved
        self.workdir = workdir
        self.progress = progress
        self.stage = "starting"
        self.detail = ""
        self.events: list[dict] = []
        self.started = time.time()
        self.ended: Optional[float] = None
        self.rss_bytes = 0
        self.peak_rss_bytes = 0
        self.cancelled = False
        self._outcome: Optional[dict] = None
        self._log_text: Optional[str] = None  # kept when the working folders are removed
        warm = _take_warm()
        if warm is not None:  # a worker that has imported the stack already takes the spec
            self.proc, self._log_path = warm
            self._log = open(self._log_path, "a")
            self.proc.stdin.write(str(workdir / "spec.json") + "\n")
            self.proc.stdin.close()
        else:
            self._log_path = workdir / "job.log"
            self._log = open(self._log_path, "w")
            self.proc = subprocess.Popen([sys.executable, "-m", "workbench.convert_worker",
                                          str(workdir / "spec.json")], stdout=subprocess.PIPE, stderr=self._log,
                                         env={**os.environ, **_ENV}, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._reader.start()
        self._sampler.start()

    # ---- watching -----------------------------------------------------------------
    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.events.append(ev)
            if ev["event"] == "stage":
                self.stage, self.detail = ev["stage"], ev.get("detail", "")
            elif ev["event"] == "progress":
                self.detail = f"{ev['done']}/{ev['total']}"
            elif ev["event"] in ("done", "error"):
                self._outcome = ev
                # the child's own count sees the converter's C++ spikes between our samples
                self.peak_rss_bytes = max(self.peak_rss_bytes, int(ev.get("peak_rss_self") or 0))
            self._notify()
        self.proc.wait()
        self.ended = time.time()
        self._finish()
        self._notify()

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
        except psutil.Error:
            return
        while self.proc.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            except psutil.Error:
                rss = 0
            self.rss_bytes = rss
            self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
            time.sleep(0.1)
        self.rss_bytes = 0

    def _notify(self) -> None:
        if self.progress is not None:
            try:
                self.progress(self.stage, STAGES.index(self.stage) if self.stage in STAGES else 0, len(STAGES),
                              self.detail)
            except Exception:  # noqa: BLE001 - a view's failure must not kill the job's watcher
                pass

    # ---- control ------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.ended is not None

    def status(self) -> dict:
        return {"stage": self.stage, "detail": self.detail, "elapsed_s": (self.ended or time.time()) - self.started,
                "rss_bytes": self.rss_bytes, "peak_rss_bytes": self.peak_rss_bytes, "done": self.done,
                "returncode": self.proc.returncode}

    def cancel(self, grace_s: float = 3.0) -> None:
        """Stops the conversion (the child's whole process group) within seconds."""
        if self.done:
            return
        self.cancelled = True
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._reader.join(10)

    def result(self, timeout: Optional[float] = None) -> ConversionResult:
        """Waits for the end; returns the result or raises ConversionError."""
        if threading.current_thread() is not self._reader:  # a progress callback may ask from the watcher
            self._reader.join(timeout)
        if not self.done:
            raise TimeoutError(f"the conversion is still running ({self.stage}) after {timeout} s")
        if isinstance(self._final, ConversionError):
            raise self._final
        return self._final

    @property
    def log(self) -> str:
        if self._log_text is not None:
            return self._log_text
        self._log.flush()
        return self._log_path.read_text(errors="replace")

    def _remove_workdirs(self) -> None:
        """The job's temp folders (its spec and log; a warm worker's log folder) go when it
        ends, however it ended: the log is kept in memory for `log`."""
        self._log_text = self.log
        self._log.close()
        tempdirs.remove(self.workdir)
        if self._log_path.parent != self.workdir:
            tempdirs.remove(self._log_path.parent)

    def _tail(self, n: int = 25) -> str:
        return "\n".join(self.log.rstrip().splitlines()[-n:])

    def _cleanup_partial(self) -> None:
        import shutil

        for key in ("partial", "manifest_partial"):
            Path(self.spec[key]).unlink(missing_ok=True)
        if self.spec.get("staging"):  # export_hf's working folder
            shutil.rmtree(self.spec["staging"], ignore_errors=True)
            Path(self.spec["staging"] + "-recipe.json").unlink(missing_ok=True)

    def _finish(self) -> None:
        try:
            self._settle()
        finally:
            self._remove_workdirs()

    def _settle(self) -> None:
        self._log.flush()
        rc = self.proc.returncode
        stage = self.stage
        if self.cancelled:
            self._cleanup_partial()
            self._final = ConversionError(f"cancelled during {stage}", "nothing was written", stage=stage,
                                          log_tail=self._tail(), peak_rss_bytes=self.peak_rss_bytes)
            return
        if rc != 0 or not self._outcome or self._outcome["event"] != "done":
            self._cleanup_partial()
            if self._outcome and self._outcome["event"] == "error":
                self._final = ConversionError(f"{self._outcome['error']} (during {stage})", self._outcome["hint"],
                                              stage=stage, log_tail=self._tail(),
                                              peak_rss_bytes=self.peak_rss_bytes)
                return
            sig = signal.Signals(-rc).name if rc and rc < 0 else ""
            what = f"killed by {sig}" if sig else f"exited with code {rc}"
            hint = "see the log tail"
            if sig == "SIGKILL":
                hint = (f"killed at {_gb(self.peak_rss_bytes)} during {stage}, likely out of memory: try "
                        "dynamic_int4_block128, a smaller kv, or fewer prefill lengths")
            self._final = ConversionError(f"the conversion {what} at {_gb(self.peak_rss_bytes)} during {stage}",
                                          hint, stage=stage, signal_name=sig, log_tail=self._tail(),
                                          peak_rss_bytes=self.peak_rss_bytes)
            return
        try:
            self._final = self._publish(self._outcome)
        except Exception as e:  # noqa: BLE001 - publishing failures are conversion failures
            self._cleanup_partial()
            self._final = ConversionError(f"could not write the result: {e}", "check the output folder",
                                          stage="write", log_tail=self._tail(), peak_rss_bytes=self.peak_rss_bytes)

    def _publish(self, done: dict) -> ConversionResult:
        """Writes the manifest beside the checked model, then renames both into place."""
        import importlib.metadata as md

        from workbench.checkpoint import tokenizer_digest

        spec, s = self.spec, self.settings
        partial, final = Path(spec["partial"]), Path(spec["path"])
        check = done["check"]
        if not check.get("skipped") and not check.get("finite", False):
            raise ConversionError("the converted model produced non-finite logits", "see the log")
        sigs = done["signatures"]
        versions = {}
        for dist in ("litert-torch", "torch", "ai-edge-litert", "ai-edge-quantizer", "transformers"):
            try:
                versions[dist] = md.version(dist)
            except md.PackageNotFoundError:
                versions[dist] = None
        manifest = {
            "kind": "edge-workbench/conversion", "schema": 1, "model": final.name,
            "recipe": s.recipe.to_json(), "recipe_description": s.recipe.describe(),
            "schemes": spec["schemes"],
            "path": s.path,
            "prefill": list(s.prefill), "kv": s.kv, "kv_layout": s.kv_layout,
            "signatures": sigs,
            "size_bytes": partial.stat().st_size, "estimated_size_bytes": spec.get("estimated_bytes"),
            "estimated_peak_bytes": spec.get("estimated_peak_bytes"),
            "versions": versions, "blueprint_fingerprint": spec["blueprint_fingerprint"],
            "mapping_hash": spec["mapping_hash"], "seconds": done["seconds"],
            "peak_rss_bytes": self.peak_rss_bytes, "check": check, "checkpoint": spec["checkpoint"],
            "quant_error": done.get("quant_error"),
            "stage_memory": done.get("stage_memory"),  # stage -> {rss_end_bytes, peak_bytes} of the child
            "tokenizer_digest": tokenizer_digest(Path(spec["checkpoint"])),
            "settings": spec["settings"],  # ConvertSettings, resolved: a re-run starts from them
            **spec.get("manifest_extra", {}),
        }
        mp = Path(spec["manifest_partial"])
        mp.write_text(json.dumps(manifest, indent=1))
        with open(mp) as f:
            os.fsync(f.fileno())
        os.replace(partial, final)
        manifest_path = final.with_suffix(".json")
        os.replace(mp, manifest_path)
        return ConversionResult(final, manifest_path, manifest["size_bytes"], list(sigs), check, done["seconds"],
                                self.peak_rss_bytes, s.recipe.to_json(), manifest["quant_error"])

    def __repr__(self) -> str:
        s = self.status()
        return (f"Job({self.spec['name']}: {s['stage']}, {s['elapsed_s']:.0f} s, "
                f"peak {_gb(s['peak_rss_bytes'])}{', done' if s['done'] else ''})")


# What a conversion needs, from benchmarks/convert_memory.py (#23; figures in docs/convert-memory.md).
# "Needed" is the peak of anonymous memory plus the file pages a stage keeps touching (the
# converted file, read at every step of the check): the rest of the resident peak is mapped
# file pages (the checkpoint, the scratch file of fp32 weights, the float file) that the
# kernel drops under pressure. Measured on the low-memory route, kv 1024:
#   1.1B fp32 int8: anonymous 2.05 GB (quantize), resident 5.94 GB
#   3.2B bf16 int8: anonymous 4.20 GB (quantize); check 2.84 GB + its 3.24 GB file; fits in 8 GiB
#   3.8B bf16 int4: anonymous 5.89 GB (quantize; 7.47 before unpacked int4 values were freed); fits in 8 GiB
# -> 1.5 GB + the larger of: the quantizer's hold (one byte a weight, whatever the bits, plus
# scales: ~1.25x an int8 file) and the check's (fp32 embedding and head, which transformers'
# streamed reference upcasts, plus the converted file).
#   in RAM (analyze, or low_memory=False; fp32 weights in anonymous memory): 1.1B 6.30 GB
#     -> 1.9 GB + 1.05 W, + 1.5 W with the quantization-error view (validate keeps every tensor)
#   export_hf (litert-torch's direct export, all in RAM): 44M 2.26, 156M 4.10, 1.1B 14.77 GB
#     -> 2.5 GB + 2.81 W
# (W: the model's fp32 weight bytes.)
_NEEDED_BASE = 1.5e9
_QUANTIZER_HOLD = 1.25
_IN_RAM_FIT = (1.9e9, 1.05)
_ANALYZE_SLOPE = 1.5
_EXPORT_HF_FIT = (2.5e9, 2.81)


def estimate_peak_bytes(bp, path: str = "reauthored", analyze: Optional[bool] = None, *, recipe=None,
                        kv: Optional[int] = None, low_memory: bool = True) -> int:
    """The memory a conversion needs at its peak (bytes), from the measured runs: its peak
    anonymous memory plus the file pages it must keep (the converted file during the check).

    This, not the resident peak, is what `memory_warning` holds against the memory available:
    the rest of the resident peak is mapped file pages (the checkpoint, the scratch file of
    fp32 weights, the float file), which the kernel reclaims under pressure and which
    "available" already counts as free (3.2B bf16 converted inside an 8 GiB cgroup, resident
    ~15 GB unlimited). So the checkpoint's dtype does not change it: a bf16 checkpoint is
    widened into the scratch file (mapped), an fp32 one is copied there. The route does:
    `low_memory` without `analyze` (the default above 300M parameters) keeps the weights out of
    anonymous memory; `analyze` or `low_memory=False` hold them in RAM as fp32 (`analyze=None`:
    the default for the model, as `ConvertSettings.resolve` decides it). `recipe` (a name or
    Recipe; default dynamic_int8) and `kv` size the converted file."""
    from workbench.convert_settings import ANALYZE_BELOW_PARAMS

    w = bp.summary().weights_bytes["fp32"]
    r = Recipe.parse(recipe if recipe is not None else "dynamic_int8")
    if analyze is None:
        analyze = bp.summary().params < ANALYZE_BELOW_PARAMS and r.name != "none"
    if path == "export_hf":
        return int(_EXPORT_HF_FIT[0] + _EXPORT_HF_FIT[1] * w)
    if analyze or not low_memory:
        return int(_IN_RAM_FIT[0] + (_IN_RAM_FIT[1] + (_ANALYZE_SLOPE if analyze else 0.0)) * w)
    head = 4 * bp.vocab_size * bp.hidden_size * (1 if bp.tie_embeddings else 2)
    check = head + r.estimate_bytes(bp, kv)
    held = 0 if r.name == "none" else _QUANTIZER_HOLD * Recipe.parse("dynamic_int8").estimate_bytes(bp, kv)
    return int(_NEEDED_BASE + max(check, held))


def memory_warning(estimate: int) -> str:
    """A sentence when the memory a conversion needs (`estimate_peak_bytes`) exceeds the memory
    available now (free plus reclaimable page cache), else ''."""
    import psutil

    avail = psutil.virtual_memory().available
    if estimate <= avail:
        return ""
    return (f"this conversion is expected to need about {estimate / 1e9:.1f} GB at its peak, but only {avail / 1e9:.1f} GB are "
            "available now: it may be killed for memory; close other work, or convert a smaller model")


def _export_hf_recipe(r: Recipe, folder: Path) -> Any:
    """export_hf's quantization for a recipe, or a clear refusal."""
    from workbench.checkpoint import VOCABULARY_FILES, has_tokenizer

    if r.name == "mixed":
        raise ConversionError("litert-torch's direct export takes one recipe for the whole model, not a per-layer "
                              "mix", hint="use a recipe name with path='export_hf', or the re-authored path for "
                                          "per-layer recipes")
    if not has_tokenizer(folder):
        raise ConversionError(f"litert-torch's direct export needs the model's tokenizer, and {folder} has none "
                              f"({', '.join(VOCABULARY_FILES)})", hint="put the tokenizer files beside config.json, "
                                                                       "or use the re-authored path")
    return EXPORT_HF_RECIPES[r.name]


def mapping_for(source, verb: str = "convert", error: type = ConversionError):
    """The Mapping a conversion or sweep works on: a Mapping as given, or the proposed one for a
    Hugging Face folder or Hub id (org/name[@rev])."""
    from workbench.blueprint import Blueprint
    from workbench.hub import resolve as resolve_hub
    from workbench.mapping import Mapping

    if isinstance(source, Mapping):
        return source
    if not isinstance(source, (str, Path)):
        raise error(f"cannot {verb} a {type(source).__name__}",
                    hint="pass a Mapping (blueprint + checkpoint) or a Hugging Face folder")
    folder = resolve_hub(source)
    if not (Path(folder) / "config.json").is_file():
        raise error(f"{source} is not a Hugging Face model folder (no config.json)",
                    hint="give the folder with config.json and the safetensors, or a project")
    return Mapping.propose(Blueprint.from_hf(folder), folder)


def convert(source, settings: Union[ConvertSettings, str, dict, Path, Recipe, None] = None, *,
            out: Union[str, Path] = "out", name: Optional[str] = None, progress: Optional[Callable] = None,
            manifest_extra: Optional[dict] = None, **changes: Any) -> Job:
    """Starts a conversion in a child process and returns its Job at once.

    `source`: a Mapping (its Blueprint rides along), or a Hugging Face folder (the
    proposed mapping is used). `settings`: a `ConvertSettings` (or just a recipe); keyword
    `changes` set its fields (`recipe=`, `prefill=`, `kv=`, `path=`, `kv_layout=`, `threads=`,
    `check_steps=`, `analyze=`, `low_memory=`: see `workbench.convert_settings`). Everything
    that can be refused is refused here, before the child starts: a mapping with problems,
    prefill longer than kv, a kv the model cannot hold, an unknown recipe or a per-layer recipe
    naming missing layers, an output folder that cannot be written. `manifest_extra`: more
    fields for the manifest (a project records what the result was computed from there).

    The low-memory route (default): weights lowered as zero-copy constants, the float model
    written straight to a file, the PyTorch weights freed, then ai-edge-quantizer from file to
    file. `path="export_hf"` converts the same Hugging Face folder with litert-torch's direct
    export instead (no re-authoring; one recipe name for the whole model), in the same job
    machinery, with the same check and manifest. The manifest records the resolved settings
    (`ConvertSettings.from_manifest` gives them back for a re-run).
    """
    mapping = mapping_for(source)
    bp = mapping.blueprint
    if settings is None or isinstance(settings, ConvertSettings):
        settings = (settings or ConvertSettings()).replace(**changes)
    else:
        settings = ConvertSettings(recipe=settings, **changes)
    if settings.path == "reauthored":
        problems = mapping.problems() + [f"{n}: unused" for n in mapping.unused()]
        if problems:
            raise ConversionError("the mapping has problems; converting would bake them in:\n"
                                  + "\n".join(f"  - {p}" for p in problems[:20]),
                                  hint="fix the mapping first (m.problems() lists them)").with_cli(
                "see them with edge-workbench map, fix the mapping file and pass it with --mapping FILE")
    s = settings.resolve(bp)
    r, kv, path = s.recipe, s.kv, s.path
    export_recipe = None
    if path == "export_hf":
        export_recipe = _export_hf_recipe(r, Path(mapping.checkpoint.root))
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".ewb-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_text("x")
        probe.unlink()
    except OSError as e:
        raise ConversionError(f"cannot write to the output folder {str(out)!r}: {e.strerror or e}",
                              hint="choose a folder you can write to") from None
    suffix = "_export_hf" if path == "export_hf" else ""
    name = name or f"{(bp.name or bp.family).replace('/', '_')}_{s.recipe_label}_kv{kv}{suffix}"
    final = out / f"{name}.tflite"
    workdir = tempdirs.make("job", name)
    mapping_path = mapping.save(workdir / "mapping.json")
    # What to do is `settings` (resolved: the worker reads nothing else for it); the rest is
    # where to write, what the manifest records, and what was derived here.
    spec = {
        "name": name, "settings": s.to_json(), "path": str(final.resolve()),
        "partial": str((out / f".{name}.tflite.partial-{uuid.uuid4().hex[:8]}").resolve()),
        "manifest_partial": str((out / f".{name}.json.partial-{uuid.uuid4().hex[:8]}").resolve()),
        "mapping": str(mapping_path), "checkpoint": str(Path(mapping.checkpoint.root).resolve()),
        "blueprint_fingerprint": bp.fingerprint(), "mapping_hash": digest(mapping.to_json()["tensor_names"]),
        "estimated_bytes": r.estimate_bytes(bp, kv),
        "estimated_peak_bytes": estimate_peak_bytes(bp, path, s.analyze, recipe=r, kv=kv, low_memory=s.low_memory),
        "schemes": {"embedding": r.scheme_of("embedding"),
                    "layers": [{"layer": i, "attention": r.scheme_of("attention", i),
                                "feedforward": r.scheme_of("feedforward", i)} for i in range(bp.num_layers)]},
        "manifest_extra": manifest_extra or {},
        "export_recipe": export_recipe,
        "staging": str((out / f".{name}.staging.partial-{uuid.uuid4().hex[:8]}").resolve()),
    }
    (workdir / "spec.json").write_text(json.dumps(spec, indent=1))
    return Job(spec, workdir, progress)
