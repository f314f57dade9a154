"""torchrun: 2 CPU processes (gloo) write the same store as 1 process; a dead rank's work is resumed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

from influcoder.teacher.stock import StockConfig, stock
from influcoder.teacher.store import open_store

ARGS = ["--proj-dim", "32", "--shard-size", "2", "--batch-size", "3", "--quiet"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_two_gloo_ranks_equal_one_process(tiny_model_dir, sample_jsonl, tmp_path):
    single = stock(StockConfig(model=str(tiny_model_dir), data=str(sample_jsonl), out=str(tmp_path / "one"),
                               proj_dim=32, shard_size=2, batch_size=3), progress=False)
    p = torchrun("-m", "influcoder", "stock", "--model", tiny_model_dir, "--data", sample_jsonl,
                 "--out", tmp_path / "two", *ARGS)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = open_store(single, verify=True), open_store(tmp_path / "two", verify=True)
    assert a.ids == b.ids
    np.testing.assert_allclose(np.asarray(b.matrix), np.asarray(a.matrix), rtol=1e-5, atol=1e-7)
    assert b.manifest["stats"]["world_size"] == 2 and not list((tmp_path / "two" / "parts").glob("*.json"))
    np.testing.assert_allclose(b.losses(), a.losses(), rtol=1e-5)


DIE = textwrap.dedent(
    """
    import os, signal, sys
    from influcoder.teacher.stock import StockConfig, stock
    cfg = StockConfig(model=sys.argv[1], data=sys.argv[2], out=sys.argv[3], proj_dim=32, shard_size=2, batch_size=3)
    def maybe_die(shard):
        if os.environ["RANK"] == "1":
            os.kill(os.getpid(), signal.SIGKILL)  # rank 1 dies right after its first shard
    stock(cfg, progress=False, on_shard=maybe_die)
    """
)


def test_dead_rank_is_resumed(tiny_model_dir, sample_jsonl, tmp_path):
    script = tmp_path / "die.py"
    script.write_text(DIE)
    out = tmp_path / "store"
    p = torchrun(script, tiny_model_dir, sample_jsonl, out)
    assert p.returncode != 0
    assert not open_store(out, allow_incomplete=True).manifest["complete"]
    p = torchrun("-m", "influcoder", "stock", "--model", tiny_model_dir, "--data", sample_jsonl, "--out", out, *ARGS)
    assert p.returncode == 0, p.stderr[-3000:]
    clean = stock(StockConfig(model=str(tiny_model_dir), data=str(sample_jsonl), out=str(tmp_path / "clean"),
                              proj_dim=32, shard_size=2, batch_size=3), progress=False)
    a, b = open_store(clean), open_store(out, verify=True)
    assert a.ids == b.ids
    np.testing.assert_allclose(np.asarray(b.matrix), np.asarray(a.matrix), rtol=1e-5, atol=1e-7)
