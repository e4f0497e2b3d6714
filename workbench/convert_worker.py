"""The conversion child process: `python -m workbench.convert_worker SPEC.json`.

Started by `workbench.convert.convert` with `subprocess` (never multiprocessing: Dask
workers are daemonic and cannot fork children that way). It reports to its parent
through JSON lines on its real stdout (events: stage, progress, done, error); every
library's own printing goes to stderr, which the parent keeps as the job's log.

It writes the model to a temporary name beside the target, checks it, writes the
manifest, and only then renames both into place: a failed or killed conversion leaves
nothing that looks finished.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path

from workbench.convert_settings import ConvertSettings

_EVENTS = None  # the real stdout, kept for events


class _StageMemory:
    """Per-stage memory of this process: at the end of each stage, its RSS then and the peak
    reached within it. The peak is the kernel's high-water mark (VmHWM), reset at each stage's
    start through /proc/self/clear_refs ("5"), so it sees the converter's C++ spikes that hold
    the GIL; a light sampler thread (0.05 s) stands in where the reset is not allowed. The
    reset also lowers `ru_maxrss` (it reads the same mark), so the whole run's peak is kept
    here too (`overall`). RSS counts mapped file pages (the float file the quantizer reads,
    the file it writes, the checkpoint): `anon_end_bytes` / `anon_peak_bytes` (sampled) are
    the anonymous part alone, the memory that cannot be dropped under pressure."""

    def __init__(self) -> None:
        self.stages: dict[str, dict] = {}
        self.current: str | None = None
        self.overall = 0
        self._peak = 0
        self._anon_peak = 0
        self._resettable = True
        self._lock = threading.Lock()
        self._thread = None

    @staticmethod
    def _status(*keys: str) -> tuple[int, ...]:
        """Fields of /proc/self/status in bytes (0 where unreadable), one read for all."""
        got = dict.fromkeys(keys, 0)
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    key = line.split(":", 1)[0]
                    if key in got:
                        got[key] = int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return tuple(got[k] for k in keys)

    def rss(self) -> int:
        return self._status("VmRSS")[0]

    def _sample(self) -> None:
        while True:
            rss, anon = self._status("VmRSS", "RssAnon")
            with self._lock:
                self._peak = max(self._peak, rss)
                self._anon_peak = max(self._anon_peak, anon)
            time.sleep(0.05)

    def _reset(self) -> None:
        if self._resettable:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self._resettable = False
        rss, anon = self._status("VmRSS", "RssAnon")
        with self._lock:
            self._peak, self._anon_peak = rss, anon

    def _stage_peak(self) -> tuple[int, int]:
        with self._lock:
            peak, anon = self._peak, self._anon_peak
        return max(peak, self._status("VmHWM")[0] if self._resettable else 0), anon

    def enter(self, stage: str) -> None:
        """A stage begins (a repeated one, e.g. litert-torch's nested tasks, continues it)."""
        if stage == self.current:
            return
        self.close()
        if self._thread is None:
            self.overall = max(self.overall, _ru_maxrss())  # before the first reset lowers it
            self._thread = threading.Thread(target=self._sample, daemon=True, name="ewb-stage-memory")
            self._thread.start()
        self.current = stage
        self._reset()

    def close(self) -> None:
        """Ends the current stage: records its RSS now and its peak (a stage met twice keeps
        the larger peak and the later RSS)."""
        if self.current is None:
            return
        (peak, anon_peak), (rss, anon) = self._stage_peak(), self._status("VmRSS", "RssAnon")
        peak = max(peak, rss)
        self.overall = max(self.overall, peak)
        rec = self.stages.setdefault(self.current, {"rss_end_bytes": 0, "peak_bytes": 0, "anon_end_bytes": 0,
                                                    "anon_peak_bytes": 0})
        rec["rss_end_bytes"], rec["anon_end_bytes"] = rss, anon
        rec["peak_bytes"] = max(rec["peak_bytes"], peak)
        rec["anon_peak_bytes"] = max(rec["anon_peak_bytes"], anon_peak, anon)
        self.current = None

    def report(self) -> dict:
        self.close()
        return {k: dict(v) for k, v in self.stages.items()}


_MEM = _StageMemory()


def emit(event: str, **data) -> None:
    if event == "stage" and data.get("stage"):
        _MEM.enter(data["stage"])
    _EVENTS.write(json.dumps({"event": event, "t": time.time(), **data}) + "\n")
    _EVENTS.flush()
    # Test seams: hold (to cancel or kill there) or crash at the start of a named stage.
    if event == "stage" and os.environ.get("EWB_TEST_SLEEP_AT") == data.get("stage"):
        time.sleep(600)
    if event == "stage" and os.environ.get("EWB_TEST_CRASH_AT") == data.get("stage"):
        os.abort()


def _litert_stage(name: str) -> str | None:
    """litert-torch's progress task names -> our stages."""
    if name.startswith("Torch Export"):
        return "export"
    if name.startswith(("Run FX Passes", "Lower to MLIR", "Create MLIR", "Merge MLIR", "Run LiteRT Converter")):
        return "lower"
    if name.startswith("Quantiz"):  # litert-torch's in-memory "Quantize Model"
        return "quantize"
    if name.startswith("Write Model"):
        return "write"
    return None


def _hook_litert_progress() -> None:
    """Wraps litert-torch's `progress.task` so its nested stages reach the parent."""
    from litert_torch import progress

    original = progress.task

    @contextlib.contextmanager
    def task(name: str):
        stage = _litert_stage(name)
        if stage:
            emit("stage", stage=stage, detail=name)
        with original(name):
            yield

    task._ewb_hooked = True
    progress.task = task
    import litert_torch._convert.converter_v2 as cv2  # it imported `progress` by module, so patch is seen

    cv2.progress = progress


def _export_hf_stage(name: str) -> str | None:
    """litert-torch's export_hf task names -> our stages."""
    if name.startswith("Load source model"):
        return "load weights"
    if name.startswith(("Write Model", "Export tokenizer")):
        return "write"
    if name.startswith("Quantize model"):
        return "quantize"
    return _litert_stage(name)


class _ExportProgress:
    """Stands in for litert-torch's progress console during export_hf: its `task`
    decorators were bound at import, but they look the console up at each call, so
    every "[START] A > B" line reaches us here."""

    line = re.compile(r"^\((\d+:\d+)\) \[\s*(START|DONE|FAIL|INFO)\] (.*?)(?: \(\+(\d+:\d+)\))?$")

    def print(self, msg, *args, **kwargs) -> None:
        from rich.text import Text

        plain = Text.from_markup(str(msg)).plain
        sys.stderr.write(plain + "\n")
        m = self.line.match(plain)
        if m and m.group(2) == "START":
            task = m.group(3).split(" > ")[-1]
            stage = _export_hf_stage(task)
            if stage:
                emit("stage", stage=stage, detail=task)

    def __getattr__(self, name):  # anything else rich's Console offers: do nothing
        return lambda *a, **k: None


def run_export_hf(spec: dict, s: ConvertSettings) -> dict:
    """litert-torch's direct Hugging Face export, into a staging folder we own; the
    chosen file moves to the partial name and is checked like ours."""
    import shutil

    from workbench._quiet import import_stack, quiet

    emit("stage", stage="build", detail="importing litert-torch's export_hf")
    import_stack()
    from litert_torch import progress

    with quiet():
        from litert_torch.generative.export_hf import export
    progress.console = _ExportProgress()
    from workbench import check as checks

    import torch

    torch.set_num_threads(_threads(s))
    folder = spec["checkpoint"]
    stage_dir = Path(spec["staging"])  # beside the output, named as a partial: never mistaken for a result
    stage_dir.mkdir()
    try:
        recipe = spec["export_recipe"]
        if isinstance(recipe, list):  # a recipe of rules: export_hf reads it from a .json path
            rules = stage_dir.parent / f"{stage_dir.name}-recipe.json"
            rules.write_text(json.dumps(recipe))
            recipe = str(rules)
        out_dir = stage_dir / "out"
        out_dir.mkdir()
        if os.environ.get("EWB_TEST_DISK_FULL"):
            emit("stage", stage="write", detail="model.tflite")
            raise OSError(errno.ENOSPC, "No space left on device (simulated)", str(out_dir))
        export.export(model=folder, output_dir=str(out_dir), prefill_lengths=list(s.prefill),
                      cache_length=s.kv, quantization_recipe=recipe, bundle_litert_lm=False,
                      keep_temporary_files=True)
        made = out_dir / ("model.tflite" if spec["export_recipe"] == "none" else "model_quantized.tflite")
        if not made.is_file():
            raise RuntimeError(f"litert-torch's export_hf finished without writing {made.name}")
        emit("stage", stage="write", detail=Path(spec["path"]).name)
        shutil.move(str(made), spec["partial"])
        os.chmod(spec["partial"], 0o644)  # export_hf writes it executable
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)
        Path(f"{stage_dir}-recipe.json").unlink(missing_ok=True)
    partial = Path(spec["partial"])
    emit("stage", stage="check", detail="ai-edge-litert: prefill then decode, against transformers")
    if s.check_steps > 0:
        result = checks.check_tflite(partial, None, folder, prefill=min(s.prefill), kv=s.kv,
                                     steps=s.check_steps)
    else:
        result = {"skipped": True}
    return {"check": result, "quant_error": None, "signatures": checks.describe_signatures(partial)}


def _free_unpacked_after_packing() -> None:
    """Makes ai-edge-quantizer drop each tensor's unpacked quantized data once it is packed into
    the model's buffer. Its params generator keeps every tensor's quantized values (one byte per
    weight, even for int4) in the quantization parameters, and packing into the buffer (half a
    byte per weight for int4) leaves them there until the model is written: int4 held 1.6 bytes a
    weight at once (7.5 GB anonymous at 3.8B). Nothing reads them after packing (the buffer's
    origin is tested by identity, the tensor's quantization from the scales), so they go. The
    parameters are frozen dataclasses, hence `object.__setattr__`. Idempotent."""
    from ai_edge_quantizer.transformations import quantize_tensor as qt

    if getattr(qt.quantize_tensor, "_ewb_frees", False):
        return
    original = qt.quantize_tensor

    def quantize_tensor(transformation_input):
        info = original(transformation_input)
        params = transformation_input.quant_params
        if getattr(params, "quantized_data", None) is not None and getattr(params, "num_bits", 8) < 8:
            object.__setattr__(params, "quantized_data", None)
        return info

    quantize_tensor._ewb_frees = True
    qt.quantize_tensor = quantize_tensor  # TransformationPerformer looks it up when it is made


def _ru_maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss() -> int:
    """This process's own peak RSS (the kernel's count: it sees C++ spikes a sampler misses).
    The per-stage high-water resets lower `ru_maxrss`, so the stages' peaks count too."""
    _MEM.close()
    return max(_ru_maxrss(), _MEM.overall)


def _threads(s: ConvertSettings) -> int:
    """The threads the job's torch and checks use: the settings', else every core."""
    return max(1, int(s.threads or os.cpu_count() or 1))


def run(spec: dict) -> dict:
    import gc

    s = ConvertSettings.from_json(spec["settings"])  # resolved by convert()
    if s.path == "export_hf":
        return run_export_hf(spec, s)
    from workbench._quiet import import_stack

    emit("stage", stage="build", detail="importing litert-torch")
    import_stack()
    import numpy as np
    import torch

    from workbench import check as checks
    from workbench.mapping import Mapping

    from litert_torch import progress as _progress

    if not getattr(_progress.task, "_ewb_hooked", False):
        _hook_litert_progress()
    from litert_torch._convert import interface as converter_utils
    from litert_torch.generative.utilities import converter

    torch.set_num_threads(_threads(s))
    emit("stage", stage="build", detail="model on the meta device")
    m = Mapping.open(spec["mapping"], checkpoint=spec["checkpoint"])
    bp = m.blueprint
    kv, recipe = s.kv, s.recipe
    analyze = bool(s.analyze)
    low_memory = s.low_memory and not analyze
    # The low-memory route keeps the float32 weights in a scratch file in the job's temp folder
    # (file-backed pages the kernel can reclaim; unlinked at once, so nothing is left behind).
    scratch = Path(spec["_workdir"]) / "weights.scratch" if low_memory and spec.get("_workdir") else None
    emit("stage", stage="load weights", detail=f"{len(m.checkpoint.tensors)} tensors"
         + (" into a scratch file" if scratch else ""))
    model = m.load(kv_cache_length=kv, scratch=scratch,
                   progress=lambda st, d, t, detail="": emit("progress", stage="load weights", done=d, total=t))
    reference = None
    if s.check_steps > 0:
        # The check's re-authored side, now, while the model is in memory: it is never reloaded.
        emit("stage", stage="check: re-authored model", detail="our logits on the check prompt")
        reference = checks.reference(model, spec["checkpoint"], prefill=min(s.prefill), kv=kv,
                                     steps=s.check_steps)
    conv = converter_utils.Converter()
    export_config = converter.ExportConfig()
    if s.kv_layout == "transposed":
        from litert_torch.generative.layers import kv_cache as kv_utils

        export_config.kvcache_layout = kv_utils.KV_LAYOUT_TRANSPOSED
    converter._add_signatures(conv, model, list(s.prefill), kv, None, 0, model.config, [None], export_config)
    quant_config = None
    if recipe.name != "none" and not analyze and not low_memory:
        # Quantize in memory inside litert-torch's converter, as its own recipes would, but
        # under our ai-edge-quantizer rules (its translation matches no 0.10 tensor names).
        from litert_torch.generative.quantize import quant_recipes
        from litert_torch.quantize import translate_recipe

        ours = recipe.ai_edge_recipe(tied_head=bp.tie_embeddings)
        translate_recipe.translate_to_ai_edge_recipe = lambda _generative_recipe: ours
        quant_config = quant_recipes.full_dynamic_recipe(mcfg=model.config)  # only carries "quantize"
    emit("stage", stage="export", detail="torch.export of every signature")
    final = Path(spec["path"])
    partial = Path(spec["partial"])
    if low_memory:
        # Weights as zero-copy resource constants (not DenseElementsAttr copies), no runtime
        # constant folding, the float model written by C++ straight to a file; then the
        # PyTorch weights are freed and ai-edge-quantizer quantizes file to file (mmapped).
        edge = conv.convert(lightweight_conversion=True, runtime_constant_folding=False)
    else:
        edge = conv.convert(quant_config=quant_config)
    emit("stage", stage="write", detail=str(final.name))
    if os.environ.get("EWB_TEST_DISK_FULL"):
        raise OSError(errno.ENOSPC, "No space left on device (simulated)", str(partial))
    float_file = partial.with_name(partial.name + ".float") if low_memory and recipe.name != "none" else partial
    edge.export(str(float_file))
    del edge, conv
    if low_memory and recipe.name != "none":

        from ai_edge_quantizer import quantizer

        for prm in model.parameters():  # the converter is gone: nothing else holds the float weights
            prm.data = torch.empty(0)
        model = None
        gc.collect()
        checks.trim_heap()
        emit("stage", stage="quantize", detail=recipe.describe() + " (ai-edge-quantizer, file to file)")
        _free_unpacked_after_packing()
        try:
            quantizer.Quantizer(str(float_file), recipe.ai_edge_recipe(tied_head=bp.tie_embeddings)).quantize(
                serialize_to_path=str(partial), enable_progress_report=False)
        finally:
            float_file.unlink(missing_ok=True)
        os.chmod(partial, 0o644)
    quant_error = None
    if analyze:
        # Float first, then ai-edge-quantizer here: its validate needs both models.
        from ai_edge_quantizer import quantizer

        from workbench import quant_error as qe

        emit("stage", stage="quantize", detail=recipe.describe())
        qt = quantizer.Quantizer(str(partial), recipe.ai_edge_recipe(tied_head=bp.tie_embeddings))
        quantized = qt.quantize(enable_progress_report=False).quantized_model
        emit("stage", stage="quantize", detail="per-op error against float (ai-edge-quantizer validate)")
        sm = checks.SignatureModel(partial, threads=1)
        ids = checks.prompt_ids(spec["checkpoint"], min(s.prefill) + 1)
        if len(ids) > 1:
            sm.prefill(ids[:-1])
        inputs = {"tokens": np.array([[ids[-1]]], dtype=np.int32),
                  "input_pos": np.array([len(ids) - 1], dtype=np.int32), **sm.kv}
        del sm
        val = qt.validate(test_data={"decode": [inputs]}, num_threads=_threads(s))
        quant_error = qe.summarize(val.get_all_tensor_results(), recipe, bp.num_layers)
        del val
        emit("stage", stage="write", detail=f"{final.name} (quantized)")
        partial.write_bytes(bytes(quantized))
        del quantized, qt
    emit("stage", stage="check", detail="ai-edge-litert: prefill then decode, against PyTorch and transformers")
    if reference is not None:
        del model  # the check needs only the reference computed after loading
        gc.collect()
        checks.trim_heap()
        result = checks.check_tflite(partial, reference, spec["checkpoint"], prefill=min(s.prefill), kv=kv,
                                     steps=s.check_steps)
    else:
        result = {"skipped": True}
    return {"check": result, "quant_error": quant_error, "signatures": checks.describe_signatures(partial)}


def main(argv: list[str]) -> int:
    global _EVENTS
    _EVENTS = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # libraries that print to stdout now print into the log
    sys.stdout = sys.stderr
    if argv[0] == "--serve":
        # A warm worker: import the stack now, then wait for one spec path on stdin
        # (EOF — the parent went away — ends it quietly).
        from workbench._quiet import import_stack

        import_stack()
        _hook_litert_progress()
        import litert_torch._convert.interface  # noqa: F401
        import litert_torch.generative.utilities.converter  # noqa: F401

        emit("ready")
        line = sys.stdin.readline().strip()
        if not line:
            return 0
        argv = [line]
    spec = json.loads(Path(argv[0]).read_text())
    spec.setdefault("_workdir", str(Path(argv[0]).resolve().parent))  # the job's temp folder
    t0 = time.time()
    try:
        out = run(spec)
    except Exception as e:  # noqa: BLE001 - every failure becomes an error event
        traceback.print_exc()
        from workbench.errors import WorkbenchError

        if isinstance(e, WorkbenchError):
            emit("error", error=e.message, hint=e.hint, kind=type(e).__name__)
        elif isinstance(e, OSError) and e.errno == errno.ENOSPC:
            emit("error", error=f"the disk is full while writing {Path(spec['path']).name}",
                 hint="free space in the output folder's disk, or choose another folder", kind="DiskFull")
        else:
            emit("error", error=f"{type(e).__name__}: {e}", hint="see the job's log for the traceback",
                 kind=type(e).__name__)
        return 1
    peak = _peak_rss()
    emit("done", seconds=time.time() - t0, peak_rss_self=peak, stage_memory=_MEM.report(), **out)
    return 0


def _exit_now(code: int) -> None:
    """Ends at once: tearing down torch/TensorFlow takes seconds the parent would wait for,
    and every result is already written and reported."""
    sys.stderr.flush()
    _EVENTS.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main(sys.argv[1:]))
