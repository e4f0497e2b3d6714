"""Random llama-shaped checkpoints for the benchmarks, made once under benchmarks/_work
(git-ignored, never committed)."""

from __future__ import annotations

from pathlib import Path

WORK = Path(__file__).resolve().parent / "_work"


def llama_checkpoint(layers: int, hidden: int) -> Path:
    """A llama checkpoint of `layers` x `hidden` (8 heads, 4 KV heads, vocab 8000), random, seeded."""
    folder = WORK / f"llama-{layers}x{hidden}"
    if not (folder / "config.json").exists():
        import torch
        from transformers import AutoModelForCausalLM, LlamaConfig

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=8000, hidden_size=hidden, intermediate_size=hidden * 3,
                          num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=4,
                          max_position_embeddings=1024)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    return folder


def add_sample_tokenizer(folder: Path) -> Path:
    """Copies the llama-tiny sample's tokenizer beside a benchmark checkpoint (litert-torch's
    direct export refuses a folder without one; the tokens a benchmark feeds are ids)."""
    import shutil

    tiny = Path(__file__).resolve().parent.parent / "sample_models" / "llama-tiny"
    for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if (tiny / f).exists() and not (folder / f).exists():
            shutil.copy(tiny / f, folder / f)
    return folder


def run_sampled(argv: list[str], limit_bytes: float | None = None) -> dict:
    """Runs `argv` in a fresh process (its own session) while sampling the RSS of its whole
    process tree every 0.1 s; past `limit_bytes` the tree is killed (a result, not a crash).
    Returns stdout, returncode, the sampled peak, seconds and whether it was killed."""
    import os
    import signal
    import subprocess
    import threading
    import time

    import psutil

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    peak, killed = [0], [False]

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            except psutil.Error:
                rss = 0
            peak[0] = max(peak[0], rss)
            if limit_bytes is not None and rss > limit_bytes and not killed[0]:
                killed[0] = True
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.1)

    start = time.time()
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stdout, _ = proc.communicate()
    seconds = time.time() - start
    th.join()
    return {"stdout": stdout, "returncode": proc.returncode, "peak": peak[0], "seconds": seconds,
            "killed": killed[0]}


class MemoryCgroup:
    """A memory cgroup of `limit_bytes` made under this process's own memory cgroup (v1 or v2),
    for a benchmark to move one process into: the kernel then holds it to the limit, reclaiming
    file-backed pages (the checkpoint, a scratch file) and killing it only when what cannot be
    reclaimed exceeds the limit. `stats()` gives the cgroup's peak usage and OOM kills; `close()`
    removes it (after its processes have ended). Needs the rights to write the cgroup tree."""

    def __init__(self, limit_bytes: int, name: str) -> None:
        import os

        line = next(ln for ln in Path("/proc/self/cgroup").read_text().splitlines()
                    if ln.split(":")[1] in ("memory", ""))
        hier, rel = line.split(":")[1], line.split(":", 2)[2].lstrip("/")
        root = Path("/sys/fs/cgroup/memory") if hier == "memory" else Path("/sys/fs/cgroup")
        self.v1 = hier == "memory"
        self.path = root / rel / f"{name}-{os.getpid()}"
        self.path.mkdir()
        (self.path / ("memory.limit_in_bytes" if self.v1 else "memory.max")).write_text(str(int(limit_bytes)))
        self.limit = int(limit_bytes)

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def stats(self) -> dict:
        def read(name: str) -> str:
            try:
                return (self.path / name).read_text()
            except OSError:
                return ""
        if self.v1:
            oom = dict(ln.split() for ln in read("memory.oom_control").splitlines() if ln.strip())
            return {"limit_bytes": self.limit, "peak_bytes": int(read("memory.max_usage_in_bytes") or 0),
                    "oom_kills": int(oom.get("oom_kill", 0)), "failcnt": int(read("memory.failcnt") or 0)}
        ev = dict(ln.split() for ln in read("memory.events").splitlines() if ln.strip())
        return {"limit_bytes": self.limit, "peak_bytes": int(read("memory.peak").strip() or 0),
                "oom_kills": int(ev.get("oom_kill", 0)), "failcnt": int(ev.get("max", 0))}

    def close(self) -> None:
        import time

        for _ in range(50):  # the processes may take a moment to leave after they exit
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
