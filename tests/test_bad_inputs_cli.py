"""Bad input through the real CLI (#21): each is refused on one line that names the problem
and the fix in the command line's words (never a Python call, never a traceback), with the
documented exit code, and leaves nothing behind (no output folder, no temp folder)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import copy_project
from workbench import cli

PYTHON_CALL = re.compile(r"\b(wb|m|bp|Runner|Workbench|Mapping)\b[.(]|\w+\(\)")


def _ours() -> set[str]:
    """The temp working folders this test process owns."""
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"ewb-*-{os.getpid()}-*")}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """`edge-workbench ARGV` in this process (the entry point's own argv parsing)."""
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(code: int, err: str, *words: str, exit_code: int = cli.EXIT_ERROR) -> str:
    """Asserts a one-line refusal naming a CLI fix; returns the line."""
    assert code == exit_code, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("edge-workbench ")]
    assert len(lines) == 1, err
    line = lines[0]
    assert " — fix: " in line, line
    fix = line.split(" — fix: ", 1)[1]
    assert not PYTHON_CALL.search(fix), f"the fix names a Python call: {fix}"
    for w in words:
        assert w in line, (w, line)
    return line


# ---- tracebacks before -------------------------------------------------------------------
def test_blueprint_of_an_impossible_config_lists_problems_without_a_traceback(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 0, "hidden_size": -64, "num_attention_heads": 4,
        "vocab_size": 100, "intermediate_size": 128}))
    code, out, err = run(capsys, "blueprint", str(tmp_path), "--json")
    assert code == cli.EXIT_PROBLEMS and "Traceback" not in err
    data = json.loads(out)
    assert any("num_layers=0" in p for p in data["problems"]) and any("hidden_size=-64" in p for p in data["problems"])
    assert data["config"] is None
    code, out, _ = run(capsys, "blueprint", str(tmp_path))
    assert code == cli.EXIT_PROBLEMS and "num_layers=0" in out and "fix:" in out


def test_convert_on_a_project_with_a_corrupted_blueprint(llama_project, tmp_path, capsys):
    root = copy_project(llama_project, tmp_path, "corrupt")
    (root / "blueprint.json").write_text('{"layers": ')
    before = sorted(p.name for p in (root / "conversions").iterdir())
    code, _, err = run(capsys, "convert", "--project", str(root), "--recipe", "none")
    refused(code, err, "no usable blueprint", f"git -C {root} checkout -- blueprint.json")
    assert sorted(p.name for p in (root / "conversions").iterdir()) == before


# ---- poor messages before ------------------------------------------------------------------
@pytest.mark.parametrize("kv", ["-5", "0", "100000"])
def test_convert_with_an_impossible_kv(samples, tmp_path, capsys, kv):
    out = tmp_path / "new" / "out"
    code, _, err = run(capsys, "convert", str(samples["llama"]), "--kv", kv, "--out", str(out))
    refused(code, err, f"kv {kv}", "--kv between 2 and 256")
    assert not (tmp_path / "new").exists()  # the refused run left no output folder


def test_blueprint_with_a_bad_kv_exits_with_problems(samples, capsys):
    code, out, _ = run(capsys, "blueprint", str(samples["llama"]), "--kv", "-5", "--json")
    assert code == cli.EXIT_PROBLEMS and any("kv_cache_length=-5" in p for p in json.loads(out)["problems"])


def test_map_with_a_shape_mismatch_exits_with_problems(samples, tmp_path, capsys):
    code, out, _ = run(capsys, "map", str(samples["llama"]), "--json")
    assert code == 0
    bad = json.loads(out)
    from workbench import Blueprint
    from workbench.mapping import Mapping

    m = Mapping.propose(Blueprint.from_hf(samples["llama"]), samples["llama"])
    m.set("attn_query_proj", "model.layers.{}.self_attn.k_proj")  # [32, 64] where q needs [64, 64]
    path = m.save(tmp_path / "shapes.json")
    code, out, _ = run(capsys, "map", str(samples["llama"]), "--mapping", str(path), "--json")
    data = json.loads(out)
    assert code == cli.EXIT_PROBLEMS and data["problems"] and bad["problems"] == []
    assert any("q_proj" in u for u in data["unused"])
    code, _, _ = run(capsys, "map", str(samples["llama"]), "--mapping", str(path), "--json", "--allow-problems")
    assert code == 0


def test_project_without_a_saved_mapping_names_map_save(llama_project, tmp_path, capsys):
    root = copy_project(llama_project, tmp_path, "nomap")
    (root / "mapping.json").unlink()
    code, _, err = run(capsys, "convert", "--project", str(root), "--recipe", "none", "--kv", "32")
    refused(code, err, "no saved mapping", f"edge-workbench map --project {root} --save")
    # the fix it names works
    code, out, _ = run(capsys, "map", "--project", str(root), "--save", "--json")
    assert code == 0 and json.loads(out)["saved"] is True and (root / "mapping.json").is_file()


def test_project_whose_checkpoint_vanished_names_set_checkpoint(llama_project, samples, tmp_path, capsys):
    root = copy_project(llama_project, tmp_path, "moved")
    ck = tmp_path / "ck"
    shutil.copytree(samples["llama"], ck)
    code, _, _ = run(capsys, "set-checkpoint", "--project", str(root), str(ck), "--json")
    assert code == 0
    shutil.rmtree(ck)
    code, _, err = run(capsys, "convert", "--project", str(root), "--recipe", "none", "--kv", "32")
    refused(code, err, "checkpoint is not at", f"edge-workbench set-checkpoint --project {root} HF_DIR")
    code, out, _ = run(capsys, "set-checkpoint", "--project", str(root), str(samples["llama"]), "--json")
    data = json.loads(out)
    assert code == 0 and Path(data["checkpoint"]).resolve() == samples["llama"].resolve()
    assert data["steps"]["mapping"] == "fresh"  # the same weights: the saved mapping still holds


def test_run_finds_or_names_the_tokenizer(llama_project, samples, tmp_path, capsys):
    model = llama_project / "conversions" / "fp32.tflite"
    # no --tokenizer: the checkpoint the manifest names is used
    code, out, err = run(capsys, "run", str(model), "--prompt", "Once upon", "--max-new", "2", "--json")
    assert code == 0, err
    assert len(json.loads(out)["ids"]) == 2
    # a model without its manifest: the fix is --tokenizer
    alone = tmp_path / "alone.tflite"
    shutil.copy(model, alone)
    code, _, err = run(capsys, "run", str(alone), "--prompt", "Once upon")
    refused(code, err, "tokenizer", "--tokenizer HF_DIR")


def test_run_refuses_another_models_tokenizer(llama_project, samples, capsys):
    model = llama_project / "conversions" / "fp32.tflite"
    code, _, err = run(capsys, "run", str(model), "--tokenizer", str(samples["qwen2"]), "--prompt", "Once upon")
    line = refused(code, err, "not the one of the checkpoint", "--tokenizer ")
    assert str(samples["qwen2"]) in line
    code, _, err = run(capsys, "run", str(model), "--tokenizer", str(samples["llama"]), "--prompt", "Once upon",
                       "--max-new", "1")
    assert code == 0, err  # the same tokenizer from another folder is the same tokenizer


def test_explore_refuses_a_text_file_and_a_port_out_of_range(samples, tmp_path, capsys):
    text = tmp_path / "notes.tflite"
    text.write_text("hello, not a model")
    code, _, err = run(capsys, "explore", str(samples["llama"]), "--tflite", str(text))
    line = refused(code, err, "notes.tflite is not a LiteRT model", "--tflite")
    assert "File \"" not in line
    code, _, err = run(capsys, "explore", str(samples["llama"]), "--port", "70000")
    refused(code, err, "port 70000", "--port from 1 to 65535")


def test_convert_defaults_fit_the_sample_and_ctrl_c_leaves_nothing(samples, tmp_path):
    """`convert SAMPLE` with every default starts (kv fits the model's 256 positions); Ctrl-C
    mid-job exits 130 with one line and removes the output folder it made and its temp folder."""
    out = tmp_path / "made" / "out"
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "convert", str(samples["llama"]),
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("[") and "starting" not in line:  # the child works on the model
                break
        assert any(ln.startswith("[") for ln in lines), "".join(lines)
        assert out.is_dir()
        jobs = list(Path(tempfile.gettempdir()).glob(f"ewb-job-{proc.pid}-*"))
        assert jobs and "kv256" in jobs[0].name  # min(1024, max_seq_len 256)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == cli.EXIT_INTERRUPTED
    msg = [ln for ln in rest.splitlines() if ln.startswith("edge-workbench convert:")]
    assert msg == ["edge-workbench convert: interrupted; the job was cancelled; nothing was written"], rest
    assert "Traceback" not in rest
    assert not (tmp_path / "made").exists()
    assert not list(Path(tempfile.gettempdir()).glob(f"ewb-job-{proc.pid}-*"))


def test_a_finished_conversion_leaves_no_temp_folder(llama_project, tmp_path, capsys):
    root = copy_project(llama_project, tmp_path, "temp")
    before = _ours()
    code, _, err = run(capsys, "convert", "--project", str(root), "--recipe", "none", "--kv", "32", "--name", "again")
    assert code == 0, err
    assert _ours() <= before  # the job's spec and log folder went with it


def test_stale_working_folders_of_dead_processes_are_swept(tmp_path):
    from workbench import tempdirs

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f"ewb-job-{dead}-model-abc"
    live = tmp_path / f"ewb-explore-{os.getpid()}-xyz"
    other = tmp_path / "ewb-lab-keep"
    for d in (stale, live, other):
        d.mkdir()
        (d / "f").write_text("x")
    assert tempdirs.sweep_stale(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()
