"""The README's own-data commands, taken from the README text itself, run as a new user would run them (from a folder
holding configs/own_data.yaml and two JSONL files in the format the README shows), on tiny models and sizes."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from test_pipeline import WORDS, tiny  # noqa: F401  (the module fixture: tiny decoder and encoder)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def section_commands(heading: str) -> list[str]:
    """The command lines of the first ```bash block under ``## heading`` in the README (continuations joined)."""
    text = README.read_text()
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert m, f"README has no section '## {heading}'"
    block = re.search(r"```bash\n(.*?)```", m.group(1), flags=re.S)
    assert block, f"README section '{heading}' has no bash block"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [line.split(" #")[0].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_readme_is_a_short_user_guide():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, len(lines)
    for target in re.findall(r"\]\(([^)#]+)", README.read_text()):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
    # the two set-up commands, and the demo runs the shipped config (found without the source tree)
    assert section_commands("Set-up: two commands")[:2] == ["make demo", "make test"]
    from influcoder.run.config import SHIPPED_CONFIGS, find_run_config

    assert find_run_config("demo") == SHIPPED_CONFIGS / "demo.yaml"
    assert "run demo" in (ROOT / "Makefile").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_own_data_commands_run_on_a_file_the_test_makes(tiny, tmp_path):  # noqa: F811
    cmds = section_commands("Run it on your data")
    assert [c.split()[:2] for c in cmds] == [["influcoder", "run"], ["influcoder", "serve"]], cmds
    # the user's folder: the template (as a checkout has it) and two files in the format the README shows
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "own_data.yaml", tmp_path / "configs" / "own_data.yaml")
    run_args = shlex.split(cmds[0])
    files = {a for a in run_args if a.endswith(".jsonl")}
    assert files == {"my_pool.jsonl", "my_queries.jsonl"}, run_args
    rng = np.random.default_rng(0)
    rows = {"my_pool.jsonl": [{"id": f"a{i}", "prompt": f"say {' '.join(rng.choice(WORDS, 2, replace=False))}",
                               "response": " ".join([str(rng.choice(WORDS))] * int(rng.integers(1, 6)))} for i in range(40)],
            "my_queries.jsonl": [{"id": f"q{j}", "prompt": f"what is {rng.choice(WORDS)}", "response": str(rng.choice(WORDS))}
                                 for j in range(12)]}
    for name, rs in rows.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rs))
    # tiny models and sizes in place of the template's (flags override the file, as the README says)
    shrink = ["--teacher.model", str(tiny["dec"]), "--teacher.proj-dim", "32", "--teacher.max-length", "64",
              "--student.encoder", str(tiny["enc"]), "--student.epochs", "1", "--student.queries-per-batch", "4",
              "--student.candidates", "6", "--student.val-pool", "4", "--student.val-queries", "2",
              "--student.max-length", "32", "--sample.n-stock", "16", "--sample.holdout-pool", "8",
              "--sample.holdout-queries", "4", "--sample.candidates", "30", "--report.bootstrap", "200",
              "--report.top-k", "3", "--attribute.top-k", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "influcoder", *run_args[1:], *shrink], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / run_args[run_args.index("--out") + 1]
    assert (out / "report" / "fidelity.md").exists() and (out / "attribution" / "attribution.jsonl").exists()
    assert re.search(r"^Verdict: (USE|WEAK|DO NOT USE) — held-out per-anchor Spearman", r.stdout, flags=re.M), r.stdout
    serve_line = next(line for line in r.stdout.splitlines() if line.startswith("Explore: "))
    assert serve_line.startswith("Explore: influcoder serve ")
    assert (tmp_path / serve_line.split()[3]).resolve() == out.resolve()
    ids = {x["id"] for x in map(json.loads, (out / "attribution" / "attribution.jsonl").read_text().splitlines())}
    assert ids <= {r["id"] for r in rows["my_pool.jsonl"]} and ids

    # the README's serve command on that run folder answers
    port = _free_port()
    serve_args = shlex.split(cmds[1])
    p = subprocess.Popen([sys.executable, "-m", "influcoder", *serve_args[1:], "--port", str(port)], cwd=tmp_path,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        t0, info = time.time(), None
        while time.time() - t0 < 300 and p.poll() is None:
            try:
                info = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=5).json()
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert info is not None, (p.poll(), p.stderr.read().decode()[-2000:] if p.poll() is not None else "")
        assert info["n_pool"] == 40 and info["trust"]["word"] in ("USE", "WEAK", "DO NOT USE")
        res = httpx.get(f"http://127.0.0.1:{port}/api/attribute", params={"query_id": "q0", "k": 3}, timeout=60).json()
        assert len(res["results"]) == 3 and res["trust"] == info["trust"]
    finally:
        p.terminate()
        p.wait(timeout=30)
