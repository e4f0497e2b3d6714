"""The conversion's memory levers at tiny size: transformers' reference streamed layer by layer
from a bf16 checkpoint (the same numbers as its fp32 model), our reference computed once in the
worker, and the float weights in a scratch file that is gone with the job however it ends."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from workbench import Blueprint
from workbench.convert import ConversionError, convert
from workbench.mapping import Mapping

KV, PREFILL = 64, [8]
TOKENS = [1, 5, 9, 14, 22, 31, 40, 57, 63, 70, 88, 99]


@pytest.fixture(scope="session")
def llama_bf16(samples, tmp_path_factory) -> Path:
    """The llama sample saved in bfloat16, as real checkpoints are."""
    import torch
    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("bf16") / "llama-tiny-bf16"
    shutil.copytree(samples["llama"], out)
    sd = load_file(samples["llama"] / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, out / "model.safetensors", metadata={"format": "pt"})
    return out


def _fp32_logits(folder, tokens):
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(torch.tensor([list(tokens)])).logits[0].numpy()


def test_bf16_reference_streamed_layer_by_layer_equals_the_fp32_model(llama_bf16):
    import torch
    from transformers import AutoModelForCausalLM

    from workbench.check import transformers_logits

    streamed = transformers_logits(llama_bf16, TOKENS)
    assert np.array_equal(streamed, _fp32_logits(llama_bf16, TOKENS))  # bf16 -> fp32 is exact
    # ... and the upcast matters: bf16 arithmetic gives other numbers
    hf = AutoModelForCausalLM.from_pretrained(llama_bf16, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        narrow = hf(torch.tensor([TOKENS])).logits[0].float().numpy()
    assert not np.array_equal(streamed, narrow)


def test_scratch_load_equals_the_load_in_ram_and_leaves_no_file(llama_bf16, tmp_path):
    import torch

    from workbench import layers

    m = Mapping.propose(Blueprint.from_hf(llama_bf16), llama_bf16)
    ram = m.load(kv_cache_length=KV)
    filed = m.load(kv_cache_length=KV, scratch=tmp_path / "weights.scratch")
    assert not list(tmp_path.iterdir())  # unlinked at once: only the mapping holds it
    maps = Path("/proc/self/maps").read_text()
    assert f"{tmp_path / 'weights.scratch'} (deleted)" in maps
    a, b = dict(ram.named_parameters()), dict(filed.named_parameters())
    assert a.keys() == b.keys() and all(b[k].dtype == torch.float32 and torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(layers.logits(ram, TOKENS), layers.logits(filed, TOKENS))
    del filed, b
    import gc

    gc.collect()
    assert f"{tmp_path / 'weights.scratch'}" not in Path("/proc/self/maps").read_text()


@pytest.fixture(scope="session")
def bf16_job(llama_bf16, tmp_path_factory):
    """One low-memory int8 conversion of the bf16 sample (the scratch-file route)."""
    out = tmp_path_factory.mktemp("bf16-out")
    seen: list[str] = []
    m = Mapping.propose(Blueprint.from_hf(llama_bf16), llama_bf16)
    job = convert(m, recipe="dynamic_int8", prefill=PREFILL, kv=KV, out=out, threads=1, analyze=False,
                  low_memory=True, progress=lambda stage, done, total, detail="": seen.append(f"{stage}: {detail}"))
    return job, job.result(timeout=600), seen


def test_finished_job_used_the_scratch_file_and_left_nothing(bf16_job):
    job, r, seen = bf16_job
    assert any(s.startswith("load weights:") and "into a scratch file" in s for s in seen), seen
    assert not job.workdir.exists()  # the job's temp folder, where the scratch file was made
    assert r.check["finite"] and r.check["mean_cosine"] > 0.99 and r.check["vs_reauthored"]["mean_cosine"] > 0.99
    import json

    stages = json.loads(r.manifest_path.read_text())["stage_memory"]
    assert {"load weights", "check: re-authored model", "quantize", "check"} <= set(stages)


def test_check_figures_equal_with_the_streamed_reference_and_with_the_fp32_model(bf16_job, llama_bf16,
                                                                                 monkeypatch):
    """The check on the converted file, recomputed two ways: bf16 streamed layer by layer (the
    route), and transformers' whole fp32 model (the route before): the same figures."""
    from workbench import check

    _, r, _ = bf16_job
    ours = Mapping.propose(Blueprint.from_hf(llama_bf16), llama_bf16).load(kv_cache_length=KV)
    ref = check.reference(ours, llama_bf16, prefill=PREFILL[0], kv=KV, steps=6)
    streamed = check.check_tflite(r.path, ref, llama_bf16, prefill=PREFILL[0], kv=KV, steps=6, threads=1)
    monkeypatch.setattr(check, "transformers_logits", _fp32_logits)
    whole = check.check_tflite(r.path, ours, llama_bf16, prefill=PREFILL[0], kv=KV, steps=6, threads=1)
    assert streamed == whole
    assert streamed["vs_transformers"] == r.check["vs_transformers"]  # the job's own check agrees


def _wait_for_stage(job, stage, timeout=240):
    deadline = time.time() + timeout
    while job.stage != stage and not job.done and time.time() < deadline:
        time.sleep(0.05)
    assert job.stage == stage, (job.status(), job.log[-2000:])


@pytest.mark.parametrize("ending", ["cancelled", "failed"])
def test_scratch_file_is_gone_when_the_job_is_cancelled_or_fails(ending, llama_bf16, tmp_path, monkeypatch):
    monkeypatch.setenv("EWB_TEST_SLEEP_AT" if ending == "cancelled" else "EWB_TEST_CRASH_AT", "export")
    m = Mapping.propose(Blueprint.from_hf(llama_bf16), llama_bf16)
    job = convert(m, recipe="dynamic_int8", prefill=PREFILL, kv=KV, out=tmp_path, threads=1, analyze=False,
                  low_memory=True)
    if ending == "cancelled":
        _wait_for_stage(job, "export")
        maps = Path(f"/proc/{job.proc.pid}/maps").read_text()
        assert f"{job.workdir / 'weights.scratch'} (deleted)" in maps  # in use, and already unlinked
        job.cancel()
    with pytest.raises(ConversionError):
        job.result(240)
    assert not job.workdir.exists() and not list(tmp_path.iterdir())


# The 3-4B shapes of benchmarks/convert_memory.py --shape, as Hugging Face configs.
LLAMA32_3B = dict(model_type="llama", vocab_size=128256, hidden_size=3072, intermediate_size=8192,
                  num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                  max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
                  rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 8192})
PHI3_MINI = dict(model_type="phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                 original_max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                 hidden_act="silu", rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
GB, GIB = 1e9, 2**30


@pytest.mark.parametrize("shape,recipe,anon_peak,check_anon,file,fits_in", [
    # benchmarks/convert_memory.py --shape ... (low-memory route, kv 1024; docs/convert-memory.md)
    ("tinyllama-1.1b", "dynamic_int8", 2.05 * GB, 0.92 * GB, 1.12 * GB, None),  # fp32, unlimited
    ("llama3.2-3b", "dynamic_int8", 4.20 * GB, 2.84 * GB, 3.24 * GB, 8 * GIB),  # bf16, 8 GiB cgroup
    ("phi3-mini", "dynamic_int4_block32", 5.89 * GB, 2.07 * GB, 2.16 * GB, 8 * GIB),  # bf16, 8 GiB cgroup
])
def test_estimate_is_above_every_measured_need_and_below_the_cgroup_it_fit_in(shape, recipe, anon_peak, check_anon,
                                                                                file, fits_in):
    """The estimate shown before converting is the memory needed (anonymous + the converted file the
    check keeps reading): above each measured run's, and no higher than a memory cgroup the run was
    shown to fit in (so it does not warn where the conversion fits)."""
    from workbench.convert import estimate_peak_bytes

    bp = {"llama3.2-3b": lambda: Blueprint.from_hf_config(LLAMA32_3B),
          "phi3-mini": lambda: Blueprint.from_hf_config(PHI3_MINI)}.get(shape, lambda: Blueprint.preset(shape))()
    est = estimate_peak_bytes(bp, recipe=recipe, kv=1024)
    assert est > max(anon_peak, check_anon + file)
    if fits_in:
        assert est < fits_in
    # the route decides: the same model with its weights held in RAM (quantization-error view) needs more
    assert estimate_peak_bytes(bp, analyze=True) > bp.summary().weights_bytes["fp32"] > est
