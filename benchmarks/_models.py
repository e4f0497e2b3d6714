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
