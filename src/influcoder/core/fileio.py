"""Crash-safe file writing and checksums shared by every stage (no dependencies on other modules)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import json

import numpy as np

__all__ = ["sha256_file", "atomic_write", "atomic_write_text", "atomic_save_npy", "read_manifest"]


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``:
    a reader sees the old file or the whole new one, never a half-written one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_save_npy(path: str | Path, arr: np.ndarray) -> None:
    """``np.save`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: np.save(f, arr))


def read_manifest(root: str | Path, name: str, fmt: str, error: type[Exception], what: str, missing_hint: str) -> dict:
    """Read the JSON manifest ``root/name`` and check its ``format``; every problem raises ``error``
    with a message naming the file (``missing_hint`` finishes the message for a missing manifest)."""
    root = Path(root)
    mpath = root / name
    if not mpath.exists():
        raise error(f"{root}: {missing_hint}")
    try:
        m = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{mpath}: corrupted manifest ({e})") from None
    if m.get("format") != fmt:
        raise error(f"{root}: unknown {what} format {m.get('format')!r}")
    return m
