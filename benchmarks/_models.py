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
