"""Build a normalised prompt/response JSONL from several source files (data preparation, before stage 1).

Each source is ``PRESET=PATH`` (PATH may be a glob, e.g. every BBH task file); rows are read with the
preset's field mapping, sampled evenly across files (round-robin over a seeded shuffle of each file),
and written as ``{"id": "<file stem>:<row>", "prompt", "response", "source"}``. Ids are stable: the
same sources, n and seed always give the same file.
"""

from __future__ import annotations

import glob
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from .records import PRESETS, read_records

__all__ = ["MixSpec", "parse_source", "mix_records", "write_mix", "data_root"]


@dataclass
class MixSpec:
    """``influcoder mix``: rows from several files (round-robin over files, seeded) into one prompt/response JSONL."""

    source: list[str]
    """PRESET=PATH (glob allowed), e.g. alpaca=../shared/data/alpaca/alpaca_en_demo.json; repeatable."""
    n: int
    """Rows to write."""
    out: str
    """Output .jsonl."""
    seed: int = 0
    """Seed of the mix."""

    def __post_init__(self):
        if self.n < 1:
            raise UserError(f"n must be ≥ 1, got {self.n}")


def data_root() -> Path:
    """The shared data folder: ``$INFLUCODER_DATA`` or ``../shared/data``."""
    return Path(os.environ.get("INFLUCODER_DATA", "../shared/data"))


def parse_source(spec: str) -> tuple[str, list[Path]]:
    if "=" not in spec:
        raise UserError(f"source '{spec}' must look like PRESET=PATH (presets: {', '.join(PRESETS)})")
    preset, pattern = spec.split("=", 1)
    if preset not in PRESETS:
        raise UserError(f"source '{spec}': unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)))
    if not paths:
        raise UserError(f"source '{spec}': no file matches {pattern}")
    return preset, paths


def mix_records(sources: list[str], n: int, seed: int = 0) -> list[dict]:
    """``n`` rows drawn round-robin over all source files (draw more and split for disjoint sets)."""
    rng = random.Random(seed)
    queues = []
    for spec in sources:
        preset, paths = parse_source(spec)
        for p in paths:
            recs, _ = read_records(p, PRESETS[preset], skip_invalid=True)
            recs = [r for r in recs if r.prompt.strip()]
            rng.shuffle(recs)
            queues.append((p, recs))
    out: list[dict] = []
    pos = 0
    while len(out) < n and any(pos < len(q) for _, q in queues):
        for p, q in queues:
            if pos < len(q):
                r = q[pos]
                out.append({"id": f"{p.stem}:{r.row}", "prompt": r.prompt, "response": r.response, "source": p.name})
                if len(out) >= n:
                    break
        pos += 1
    if len(out) < n:
        raise UserError(f"only {len(out)} rows available in {', '.join(sources)}, asked for {n}")
    return out


def write_mix(rows: list[dict], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, out)
    return out

