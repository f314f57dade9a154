"""Projectors against dense reference matrices built from the same seeded hash/signs/entries."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from influcoder.teacher.projection import BLOCK, ProjectionConfig, _block_generator, make_projector


def _countsketch_matrix(d: int, k: int, seed: int) -> torch.Tensor:
    """The (d × k) matrix CountSketch applies, built independently from its documented hash and signs."""
    m = torch.zeros(d, k, dtype=torch.float64)
    for b in range(0, (d + BLOCK - 1) // BLOCK):
        size = min(BLOCK, d - b * BLOCK)
        rng = _block_generator(seed, b, 1)
        buckets = rng.integers(0, k, size=size, dtype=np.int64)
        signs = rng.integers(0, 2, size=size, dtype=np.int8).astype(np.float64) * 2 - 1
        rows = np.arange(b * BLOCK, b * BLOCK + size)
        m[rows, buckets] = torch.from_numpy(signs)
    return m


def _dense_matrix(d: int, k: int, seed: int, kind: str) -> torch.Tensor:
    """Whole (d × k) dense JL matrix generated in one go per block (no row chunking)."""
    parts = []
    for b in range(0, (d + BLOCK - 1) // BLOCK):
        size = min(BLOCK, d - b * BLOCK)
        rng = _block_generator(seed, b, 2 if kind == "rademacher" else 3)
        if kind == "rademacher":
            m = (rng.integers(0, 2, size=(size, k), dtype=np.int8).astype(np.float32) * 2 - 1)
        else:
            m = rng.standard_normal(size=(size, k), dtype=np.float32)
        parts.append(torch.from_numpy(m * np.float32(1 / np.sqrt(k))))
    return torch.cat(parts)


def test_countsketch_equals_its_dense_matrix():
    d, k = BLOCK + 1234, 64  # two generation blocks, the second partial
    x = torch.randn(3, d, dtype=torch.float64)
    got = make_projector(d, ProjectionConfig("countsketch", k, 5)).project(x.float())
    ref = x @ _countsketch_matrix(d, k, 5)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4)
    # each coordinate lands in exactly one bucket with sign ±1
    m = _countsketch_matrix(d, k, 5)
    assert torch.equal(m.abs().sum(1), torch.ones(d, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_dense_chunked_equals_unchunked_product(kind, monkeypatch):
    d, k = 3000, 4096  # one block, rows generated in chunks of (1<<25)//k = 8192 (so one chunk here)
    x = torch.randn(2, d)
    ref = x.double() @ _dense_matrix(d, k, 11, kind).double()
    got = make_projector(d, ProjectionConfig(kind, k, 11)).project(x)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)


def test_dense_row_chunking_does_not_change_the_matrix():
    # k large enough that rows are generated in several chunks inside one block: (1<<25)//k rows each
    d, k = 1500, 1 << 15  # chunk = 1024 rows → two chunks
    x = torch.randn(2, d)
    ref = x.double() @ _dense_matrix(d, k, 3, "rademacher").double()
    got = make_projector(d, ProjectionConfig("rademacher", k, 3)).project(x)
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["countsketch", "rademacher", "none"])
def test_project_pieces_equals_project_of_concatenation(kind):
    torch.manual_seed(0)
    widths = [7, BLOCK - 3, 40, 1, 900]
    pieces = [torch.randn(4, w) for w in widths]
    d = sum(widths)
    p = make_projector(d, ProjectionConfig(kind, 256, 2))
    whole = p.project(torch.cat(pieces, 1))
    torch.testing.assert_close(p.project_pieces(pieces), whole, rtol=1e-5, atol=1e-5)


def test_pieces_must_cover_the_input_dim():
    p = make_projector(100, ProjectionConfig("countsketch", 8, 0))
    with pytest.raises(ValueError):
        p.project_pieces([torch.randn(1, 60)])
    with pytest.raises(ValueError):
        p.project_pieces([torch.randn(1, 60), torch.randn(1, 60)])


_CHILD = """
import sys, numpy as np, torch
from influcoder.teacher.projection import ProjectionConfig, make_projector
torch.manual_seed(123)
x = torch.randn(3, 70000)
for kind in ("countsketch", "rademacher", "gaussian"):
    y = make_projector(70000, ProjectionConfig(kind, 512, 9)).project(x)
    sys.stdout.write(kind + " " + y.numpy().tobytes().hex() + "\\n")
"""


def test_same_seed_bit_identical_in_another_process():
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True).stdout.split("\n")
    torch.manual_seed(123)
    x = torch.randn(3, 70000)
    lines = dict(line.split(" ", 1) for line in out if line)
    for kind in ("countsketch", "rademacher", "gaussian"):
        mine = make_projector(70000, ProjectionConfig(kind, 512, 9)).project(x).numpy().tobytes().hex()
        assert lines[kind] == mine, kind
    other = make_projector(70000, ProjectionConfig("countsketch", 512, 10)).project(x).numpy().tobytes().hex()
    assert other != lines["countsketch"]


@pytest.mark.parametrize("kind", ["countsketch", "rademacher"])
def test_inner_products_preserved_in_expectation(kind):
    torch.manual_seed(1)
    d, k = 5000, 256
    x = torch.randn(d)
    y = 0.6 * x + 0.8 * torch.randn(d)
    true = float(x @ y)
    est = []
    for seed in range(40):
        p = make_projector(d, ProjectionConfig(kind, k, seed))
        z = p.project(torch.stack([x, y]))
        est.append(float(z[0] @ z[1]))
    est = np.array(est)
    # unbiased: the mean over seeds is within 4 standard errors of <x, y>
    assert abs(est.mean() - true) < 4 * est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - true) / true < 0.1


def test_project_rows_streams_blocks_and_equals_projecting_the_whole_float32_matrix():
    from influcoder.teacher.projection import ProjectionConfig, make_projector

    G = np.random.default_rng(1).normal(size=(150, 300)).astype(np.float16)  # three blocks of 64
    for kind in ("countsketch", "rademacher"):
        proj = make_projector(300, ProjectionConfig(kind, 16, 2))
        want = proj.project(torch.from_numpy(G.astype(np.float32))).numpy()
        np.testing.assert_allclose(proj.project_rows(G), want, rtol=1e-5, atol=1e-5)
        assert proj.project_rows(G[:0]).shape == (0, 16)
