"""``influcoder mix``: normalise and mix source files into one prompt/response JSONL (flags generated from
:class:`influcoder.data.mix.MixSpec`)."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console(stderr=True)


def _mix(values: dict, extras: dict):
    from ..core.config import config_from_flags
    from ..data.mix import MixSpec, mix_records, write_mix

    cfg = config_from_flags(MixSpec, values)
    rows = mix_records(cfg.source, cfg.n, cfg.seed)
    write_mix(rows, cfg.out)
    console.print(f"wrote {len(rows)} rows to {cfg.out}")


def register(app: typer.Typer) -> None:
    from ..core.config import command_from
    from ..data.mix import MixSpec

    app.command("mix")(command_from(MixSpec, _mix))
