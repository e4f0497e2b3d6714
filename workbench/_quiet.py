"""Quiet imports of the heavy stack.

Importing litert_torch / transformers prints pages of noise (absl, oneDNN, torchao's
missing CUDA kernels, deprecation warnings) that says nothing to our users. The
first import of each happens under `quiet()`; everything after prints as usual.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# fd 2 is one per process: two threads saving and restoring it in turn could leave it
# pointing at /dev/null for good, so one silence at a time (re-entrant for nested use).
_LOCK = threading.RLock()


@contextlib.contextmanager
def quiet():
    """Silences Python and C-level stderr, and warnings, for the duration (one thread at a
    time: another thread's `quiet()` waits). For imports: it swaps process-wide Python state."""
    with _LOCK, muted_fd2(), warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def muted_fd2():
    """Silences C-level stderr (fd 2) only, one thread at a time. `sys.stderr` and the warning
    filters are left alone, so a notebook's own output (which does not go through fd 2) from
    other threads is untouched; for native libraries that log as they load (ai-edge-litert)."""
    with _LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no real fd 2 (some embedded interpreters)
            saved = None
        try:
            if saved is not None:
                with open(os.devnull, "w") as null:
                    os.dup2(null.fileno(), 2)
            yield
        finally:
            if saved is not None:
                _flush_c_streams()  # what C code buffered goes to /dev/null too, not out later
                os.dup2(saved, 2)
                os.close(saved)


def _flush_c_streams() -> None:
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no C library to ask (not on Linux/macOS)
        pass


def import_stack() -> None:
    """Imports torch, transformers' config registry and litert-torch's layers, quietly."""
    if "litert_torch.generative.layers.model_config" in sys.modules:
        return
    with quiet():
        import transformers.models.auto.configuration_auto  # noqa: F401
        import litert_torch.generative.layers.model_config  # noqa: F401
        import litert_torch.generative.utilities.model_builder  # noqa: F401
        from transformers.utils import logging as hf_logging

    # transformers 5 draws a "Loading weights" bar for every from_pretrained: in a panel or a
    # notebook cell it is noise between our own progress lines.
    hf_logging.disable_progress_bar()
