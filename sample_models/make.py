"""Build the tiny sample checkpoints in this folder: llama-tiny, qwen2-tiny, gemma-tiny.

Each folder looks like a Hugging Face checkpoint a user could have downloaded
(config.json, model.safetensors, generation_config.json, tokenizer files), but
the tokenizers are trained offline on corpus.txt (original prose written for this
project) and the weights, from a seeded random start, are trained briefly on the
same corpus (CPU, deterministic ops), so that greedy text is words rather than
byte soup. Nothing is downloaded.

    python sample_models/make.py [--out DIR] [--only NAME ...]

The output is deterministic: running this twice gives byte-identical files.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

# Offline and quiet before transformers is imported. The builds are reproducible
# with any thread count (checked); one thread for the tokenizers trainer is a safe default.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    GemmaConfig,
    GemmaTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaTokenizer,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2Tokenizer,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus.txt"
VOCAB_SIZE = 512  # every tokenizer has exactly this many ids, specials included
MAX_POSITIONS = 256

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

# Shared by all three: only the differences live in SAMPLES below.
COMMON_CONFIG: dict[str, Any] = dict(
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=3,
    num_attention_heads=4,
    max_position_embeddings=MAX_POSITIONS,
)


@dataclass(frozen=True)
class Sample:
    """One sample checkpoint: a config class, its differences, a tokenizer recipe."""

    name: str
    config_cls: type[PreTrainedConfig]
    config_kwargs: dict[str, Any]
    tokenizer: str  # key of TOKENIZER_BUILDERS
    seed: int


SAMPLES: dict[str, Sample] = {
    s.name: s
    for s in [
        Sample(
            name="llama-tiny",
            config_cls=LlamaConfig,
            config_kwargs=dict(
                num_key_value_heads=2,
                rms_norm_eps=1e-5,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                tie_word_embeddings=False,
            ),
            tokenizer="sentencepiece-llama",
            seed=1001,
        ),
        Sample(
            name="qwen2-tiny",
            config_cls=Qwen2Config,
            config_kwargs=dict(
                num_key_value_heads=2,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                tie_word_embeddings=True,
                use_sliding_window=False,
                max_window_layers=3,
            ),
            tokenizer="bytelevel-qwen2",
            seed=1002,
        ),
        Sample(
            name="gemma-tiny",
            config_cls=GemmaConfig,
            config_kwargs=dict(
                num_key_value_heads=1,
                head_dim=32,  # 4 heads * 32 = 128 != hidden 64, as in real Gemma
                rms_norm_eps=1e-6,
                hidden_act="gelu_pytorch_tanh",
                hidden_activation="gelu_pytorch_tanh",  # the key Gemma checkpoints carry
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                tie_word_embeddings=True,
            ),
            tokenizer="sentencepiece-gemma",
            seed=1003,
        ),
    ]
}


# --------------------------------------------------------------------------- tokenizers


def corpus_lines(path: Path = CORPUS) -> list[str]:
    """Non-empty lines of the training corpus."""
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class SpmRecipe:
    """A SentencePiece tokenizer: trainer settings and the transformers class wrapped around it."""

    tokenizer_cls: type[PreTrainedTokenizerBase]
    ids: dict[str, int]  # unk/bos/eos/pad id (-1 = absent)
    pieces: dict[str, str]  # unk/bos/eos/pad piece text
    add_dummy_prefix: bool
    tokenizer_kwargs: dict[str, Any]
    control_symbols: tuple[str, ...] = ()
    user_defined_symbols: tuple[str, ...] = ()  # matched whole in text; special in transformers


SPM_RECIPES: dict[str, SpmRecipe] = {
    # Llama 2 / TinyLlama: <unk>=0 <s>=1 </s>=2, a dummy prefix space, no pad piece
    # (pad with </s>, as TinyLlama-Chat does).
    "llama": SpmRecipe(
        tokenizer_cls=LlamaTokenizer,
        ids=dict(unk=0, bos=1, eos=2, pad=-1),
        pieces=dict(unk="<unk>", bos="<s>", eos="</s>", pad="<pad>"),
        add_dummy_prefix=True,
        tokenizer_kwargs=dict(legacy=False, pad_token="</s>"),
    ),
    # Gemma: <pad>=0 <eos>=1 <bos>=2 <unk>=3 <mask>=4, no dummy prefix, turn markers.
    "gemma": SpmRecipe(
        tokenizer_cls=GemmaTokenizer,
        ids=dict(pad=0, eos=1, bos=2, unk=3),
        pieces=dict(unk="<unk>", bos="<bos>", eos="<eos>", pad="<pad>"),
        add_dummy_prefix=False,
        tokenizer_kwargs=dict(chat_template=GEMMA_TEMPLATE),
        control_symbols=("<mask>",),
        user_defined_symbols=("<start_of_turn>", "<end_of_turn>"),
    ),
}


def train_sentencepiece(recipe: SpmRecipe, lines: list[str], vocab_size: int = VOCAB_SIZE) -> bytes:
    """Train a byte-fallback SentencePiece BPE model and return the serialized tokenizer.model."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),  # not `input=`: that path would be stored in the model
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=recipe.add_dummy_prefix,
        unk_id=recipe.ids["unk"],
        bos_id=recipe.ids["bos"],
        eos_id=recipe.ids["eos"],
        pad_id=recipe.ids["pad"],
        unk_piece=recipe.pieces["unk"],
        bos_piece=recipe.pieces["bos"],
        eos_piece=recipe.pieces["eos"],
        pad_piece=recipe.pieces["pad"],
        control_symbols=list(recipe.control_symbols),
        user_defined_symbols=list(recipe.user_defined_symbols),
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def build_spm_tokenizer(
    recipe: SpmRecipe, lines: list[str], workdir: Path
) -> tuple[PreTrainedTokenizerBase, dict[str, bytes]]:
    """Train tokenizer.model, then let transformers' own SentencePiece converter build the fast tokenizer."""
    proto = train_sentencepiece(recipe, lines)
    model_file = workdir / "tokenizer.model"
    model_file.write_bytes(proto)
    cls = recipe.tokenizer_cls
    # The same path `from_pretrained` takes for a folder holding only tokenizer.model: vocab + merges.
    native = cls.convert_to_native_format(vocab_file=str(model_file))
    # Control pieces come back as "additional special tokens"; they are already named tokens.
    native.pop("additional_special_tokens", None)
    native.pop("vocab_file", None)
    extra = [AddedToken(t, special=True, normalized=False) for t in recipe.user_defined_symbols]
    tok = cls(
        **native,
        **recipe.tokenizer_kwargs,
        **({"extra_special_tokens": extra} if extra else {}),
        add_bos_token=True,
        add_eos_token=False,
        model_max_length=MAX_POSITIONS,
    )
    return tok, {"tokenizer.model": proto}


QWEN2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def build_qwen2_tokenizer(lines: list[str], workdir: Path) -> tuple[PreTrainedTokenizerBase, dict[str, bytes]]:
    """Qwen2-style tokenizer: byte-level BPE trained with `tokenizers`, specials appended after it."""
    trainer_tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    # The same normalizer / pre-tokenizer as transformers' Qwen2Tokenizer.
    trainer_tok.normalizer = normalizers.NFC()
    trainer_tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(QWEN2_SPECIALS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    trainer_tok.train_from_iterator(lines, trainer=trainer)
    model = json.loads(trainer_tok.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(QWEN2_SPECIALS[1:]),
        model_max_length=MAX_POSITIONS,
        chat_template=CHATML_TEMPLATE,
    )
    return tok, {}


TokenizerBuilder = Callable[[list[str], Path], tuple[PreTrainedTokenizerBase, dict[str, bytes]]]
TOKENIZER_BUILDERS: dict[str, TokenizerBuilder] = {
    "sentencepiece-llama": partial(build_spm_tokenizer, SPM_RECIPES["llama"]),
    "sentencepiece-gemma": partial(build_spm_tokenizer, SPM_RECIPES["gemma"]),
    "bytelevel-qwen2": build_qwen2_tokenizer,
}


def special_ids(tok: PreTrainedTokenizerBase) -> dict[str, int | None]:
    """bos/eos/pad ids for config.json and generation_config.json (bos falls back to eos, as Qwen2 does)."""
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return dict(bos_token_id=bos, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def write_special_tokens_map(tok: PreTrainedTokenizerBase, folder: Path) -> None:
    """Write special_tokens_map.json as transformers 4.x did (5.x keeps this in tokenizer_config.json)."""
    data: dict[str, Any] = dict(tok.special_tokens_map)
    extra = [str(t) for t in tok.extra_special_tokens]
    data.pop("extra_special_tokens", None)
    data.pop("additional_special_tokens", None)
    if extra:
        data["additional_special_tokens"] = extra
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    (folder / "special_tokens_map.json").write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- weights


@torch.no_grad()
def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Give every parameter distinct random values, so a swapped or missed weight shows.

    Matrices get extra noise (this also fills the zero padding row of the embedding);
    1-D tensors (RMSNorm weights, which start at 1, or at 0 for Gemma's 1+w form, and
    q/k/v biases, which start at 0) are moved by 0.1 * randn around their init value.
    """
    gen = torch.Generator().manual_seed(seed)
    for _, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if p.ndim >= 2:
            p.add_(0.03 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        else:
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


TRAIN_STEPS = 400
TRAIN_BATCH = 16
TRAIN_LEN = 64  # tokens per training row, after the start token
TRAIN_LR = 3e-3


def train_(model: torch.nn.Module, tok: PreTrainedTokenizerBase, lines: list[str], seed: int,
           steps: int = TRAIN_STEPS) -> float:
    """Trains the model briefly on the corpus (next-token loss on random windows of it, each
    after the start token, as prompts are); returns the last loss. Deterministic: a seeded
    generator picks the windows, torch's deterministic algorithms on one CPU thread (a
    float sum's order can depend on the thread count, and 400 steps would amplify it)."""
    ids = tok("\n".join(lines), add_special_tokens=False)["input_ids"]
    data = torch.tensor(ids, dtype=torch.long)
    bos = special_ids(tok).get("bos_token_id")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / 20) * (1 - step / steps))
    was, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    model.train()
    try:
        for _ in range(steps):
            starts = torch.randint(0, len(data) - TRAIN_LEN, (TRAIN_BATCH,), generator=gen)
            batch = torch.stack([data[i : i + TRAIN_LEN] for i in starts.tolist()])
            if bos is not None:
                batch = torch.cat([torch.full((TRAIN_BATCH, 1), bos, dtype=torch.long), batch], dim=1)
            loss = model(input_ids=batch, labels=batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.use_deterministic_algorithms(was)
        torch.set_num_threads(threads)
        model.eval()
    return loss.item()


def build_model(sample: Sample, tok: PreTrainedTokenizerBase, lines: list[str] | None = None) -> torch.nn.Module:
    """A perturbed float32 model whose vocab matches `tok`, trained briefly on `lines` (when given)."""
    config = sample.config_cls(
        **COMMON_CONFIG,
        **sample.config_kwargs,
        vocab_size=len(tok),
        **special_ids(tok),
        dtype="float32",
    )
    torch.manual_seed(sample.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    perturb_(model, sample.seed)
    if lines:
        train_(model, tok, lines, sample.seed)
    model.generation_config = GenerationConfig(**special_ids(tok), max_length=MAX_POSITIONS)
    return model.eval()


# --------------------------------------------------------------------------- assembly


def folder_size(folder: Path) -> int:
    """Total bytes of the files in `folder`."""
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def make_sample(sample: Sample, out_dir: Path, corpus: Path = CORPUS) -> dict[str, Any]:
    """Write one sample checkpoint folder under `out_dir`; return a summary."""
    folder = out_dir / sample.name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    lines = corpus_lines(corpus)
    with tempfile.TemporaryDirectory() as tmp:
        tok, extra_files = TOKENIZER_BUILDERS[sample.tokenizer](lines, Path(tmp))
    model = build_model(sample, tok, lines)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder, save_jinja_files=False)  # chat template inside tokenizer_config.json
    write_special_tokens_map(tok, folder)
    for name, data in extra_files.items():
        (folder / name).write_bytes(data)
    return dict(
        name=sample.name,
        path=folder,
        params=model.num_parameters(),
        vocab_size=len(tok),
        bytes=folder_size(folder),
        **special_ids(tok),
    )


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output directory (default: next to make.py)")
    parser.add_argument("--only", nargs="+", choices=sorted(SAMPLES), metavar="NAME", help="build only these samples")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    for name in args.only or list(SAMPLES):
        info = make_sample(SAMPLES[name], args.out)
        print(
            f"{info['path']}  params={info['params']:,}  vocab={info['vocab_size']}  "
            f"size={info['bytes'] / 1024:.0f} KiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
