"""The committed sample checkpoints load, run, tokenize sanely and are what sample_models/make.py makes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES_DIR = ROOT / "sample_models"
MAKE = SAMPLES_DIR / "make.py"
VOCAB_SIZE = 512

# What each folder must be. Param counts: embeddings 512*64 (+ an untied lm_head for
# llama) + 3 layers of attention/MLP/norms (+ q/k/v biases for qwen2) + final norm.
EXPECTED: dict[str, dict[str, Any]] = {
    "llama-tiny": dict(
        model_type="llama",
        architecture="LlamaForCausalLM",
        params=195_008,
        ids=dict(bos_token_id=1, eos_token_id=2, pad_token_id=2),
        tokens=dict(bos_token="<s>", eos_token="</s>", pad_token="</s>", unk_token="<unk>"),
        sentencepiece=True,
        tied=False,
    ),
    "qwen2-tiny": dict(
        model_type="qwen2",
        architecture="Qwen2ForCausalLM",
        params=162_624,
        ids=dict(bos_token_id=509, eos_token_id=509, pad_token_id=509),  # no BOS token: bos id = eos, as in Qwen2
        tokens=dict(bos_token=None, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token=None),
        sentencepiece=False,
        tied=True,
    ),
    "gemma-tiny": dict(
        model_type="gemma",
        architecture="GemmaForCausalLM",
        params=186_816,
        ids=dict(bos_token_id=2, eos_token_id=1, pad_token_id=0),
        tokens=dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"),
        sentencepiece=True,
        tied=True,
    ),
}
NAMES = list(EXPECTED)

SENTENCES = [
    "The lighthouse keeper climbed 148 steps at 6:30, and her cat followed.",
    "Mix 500 grams of flour with 350 grams of warm water; wait 5 minutes!",
    "Where am I? Where do I want to go? (Nobody knew why the soup was green.)",
    "Zürich, naïve café: 3.14159 \u2014 \u201cquoted\u201d text and \u65e5\u672c.",
]


def _paragraphs() -> list[str]:
    text = (SAMPLES_DIR / "corpus.txt").read_text(encoding="utf-8")
    return [p for p in text.split("\n\n") if p.strip()]


@pytest.fixture(scope="module")
def loaded() -> dict[str, tuple[Any, Any, Any]]:
    """(config, model, tokenizer) per sample, loaded once with the Auto classes."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = {}
    for name in NAMES:
        folder = SAMPLES_DIR / name
        config = AutoConfig.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        tok = AutoTokenizer.from_pretrained(folder)
        out[name] = (config, model, tok)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", NAMES)
def test_folder_looks_like_a_checkpoint(name: str) -> None:
    folder = SAMPLES_DIR / name
    files = {p.name for p in folder.iterdir()}
    expected = {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    if EXPECTED[name]["sentencepiece"]:
        expected.add("tokenizer.model")
    assert files == expected
    assert sum((folder / f).stat().st_size for f in files) < 1_000_000


@pytest.mark.parametrize("name", NAMES)
def test_config_and_param_count(name: str, loaded: dict) -> None:
    config, model, tok = loaded[name]
    exp = EXPECTED[name]
    assert config.model_type == exp["model_type"]
    assert type(model).__name__ == exp["architecture"]
    assert config.architectures == [exp["architecture"]]
    assert model.num_parameters() == exp["params"]
    assert config.vocab_size == len(tok) == VOCAB_SIZE
    assert config.tie_word_embeddings is exp["tied"]
    assert model.dtype == torch.float32
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 3, 4)
    if name == "gemma-tiny":
        assert config.head_dim * config.num_attention_heads == 128 != config.hidden_size
        assert config.num_key_value_heads == 1


@pytest.mark.parametrize("name", NAMES)
def test_special_ids_agree_everywhere(name: str, loaded: dict) -> None:
    from transformers import GenerationConfig

    config, _, tok = loaded[name]
    exp = EXPECTED[name]
    for attr, value in exp["tokens"].items():
        assert getattr(tok, attr) == value, attr
        assert getattr(tok, f"{attr}_id") == (None if value is None else tok.convert_tokens_to_ids(value)), attr
    tok_bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    assert (tok_bos, tok.eos_token_id, tok.pad_token_id) == tuple(exp["ids"].values())
    gen = GenerationConfig.from_pretrained(SAMPLES_DIR / name)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(config, attr) == getattr(gen, attr) == exp["ids"][attr], attr
    # special_tokens_map.json (written for older readers) says the same as tokenizer_config.json
    stm = json.loads((SAMPLES_DIR / name / "special_tokens_map.json").read_text())
    cfg = json.loads((SAMPLES_DIR / name / "tokenizer_config.json").read_text())
    for key, value in stm.items():
        cfg_key = "extra_special_tokens" if key == "additional_special_tokens" else key
        assert cfg[cfg_key] == value, key


@pytest.mark.parametrize("name", NAMES)
def test_forward_gives_finite_varied_logits(name: str, loaded: dict) -> None:
    _, model, tok = loaded[name]
    batch = tok(SENTENCES[0], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    seq = batch["input_ids"].shape[1]
    assert logits.shape == (1, seq, VOCAB_SIZE)
    assert torch.isfinite(logits).all()
    assert logits.std() > 0.05
    assert logits.argmax(-1).unique().numel() > 1


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_round_trips_and_stays_in_vocab(name: str, loaded: dict) -> None:
    config, _, tok = loaded[name]
    for text in SENTENCES:
        ids = tok.encode(text)
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert max(ids) < config.vocab_size
    ids = tok(_paragraphs(), add_special_tokens=True)["input_ids"]
    assert max(max(row) for row in ids) < config.vocab_size
    if tok.bos_token is not None:  # llama and gemma prepend BOS, qwen2 adds nothing
        assert tok.encode("Hello")[0] == tok.bos_token_id


@pytest.mark.parametrize("name", [n for n in NAMES if EXPECTED[n]["sentencepiece"]])
def test_sentencepiece_model_agrees_with_tokenizer_json(name: str, loaded: dict) -> None:
    import sentencepiece as spm
    from tokenizers import Tokenizer

    _, _, tok = loaded[name]
    folder = SAMPLES_DIR / name
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert sp.get_piece_size() == len(tok) == raw.get_vocab_size()
    for i in range(sp.get_piece_size()):
        assert sp.id_to_piece(i) == tok.convert_ids_to_tokens(i), i
    for attr in ("bos", "eos", "unk", "pad"):
        sp_id = getattr(sp, f"{attr}_id")()
        if sp_id >= 0:
            assert sp_id == getattr(tok, f"{attr}_token_id"), attr
    for text in SENTENCES + _paragraphs():
        expected = sp.encode(text)
        assert tok.encode(text, add_special_tokens=False) == expected, text
        assert raw.encode(text, add_special_tokens=False).ids == expected, text


def test_chat_templates() -> None:
    from transformers import AutoTokenizer

    chat = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello."}]
    qwen = AutoTokenizer.from_pretrained(SAMPLES_DIR / "qwen2-tiny")
    assert qwen.apply_chat_template(chat, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
    )
    gemma = AutoTokenizer.from_pretrained(SAMPLES_DIR / "gemma-tiny")
    text = gemma.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n"
    ids = gemma.encode(text, add_special_tokens=False)
    assert ids[:2] == [2, gemma.convert_tokens_to_ids("<start_of_turn>")]
    assert gemma.convert_tokens_to_ids("<end_of_turn>") in ids


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_perturbed(name: str) -> None:
    from safetensors.torch import load_file

    tensors = load_file(SAMPLES_DIR / name / "model.safetensors")
    assert tensors, name
    for key, t in tensors.items():
        assert t.dtype == torch.float32, key
        assert torch.isfinite(t).all(), key
        if t.ndim == 1:  # norm weights (init 1, or 0 for Gemma) and biases (init 0)
            assert not torch.all(t == 1) and not torch.all(t == 0), key
            assert t.std() > 0.05, key
        else:  # no zero row, e.g. the embedding's padding row
            assert (t.abs().sum(dim=-1) > 0).all(), key
    # no two tensors of one shape are equal (a swapped pair would go unnoticed)
    by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for t in tensors.values():
        by_shape.setdefault(tuple(t.shape), []).append(t)
    for group in by_shape.values():
        for i, a in enumerate(group):
            assert all(not torch.equal(a, b) for b in group[i + 1 :])


def test_make_reproduces_committed_qwen2(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, str(MAKE), "--out", str(tmp_path), "--only", "qwen2-tiny"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "qwen2-tiny" in run.stdout
    committed = SAMPLES_DIR / "qwen2-tiny"
    rebuilt = tmp_path / "qwen2-tiny"
    assert sorted(p.name for p in rebuilt.iterdir()) == sorted(p.name for p in committed.iterdir())
    for f in committed.iterdir():
        assert _sha256(rebuilt / f.name) == _sha256(f), f.name
