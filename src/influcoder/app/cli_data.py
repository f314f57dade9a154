"""``influcoder mix``: normalise and mix source files into one prompt/response JSONL."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("mix")(mix_cmd)


def mix_cmd(
    source: list[str] = typer.Option(..., "--source", help="PRESET=PATH (glob allowed), e.g. alpaca=../shared/data/alpaca/alpaca_en_demo.json; repeatable."),
    n: int = typer.Option(..., "--n", help="Rows to write."),
    out: Path = typer.Option(..., "--out", help="Output .jsonl."),
    seed: int = typer.Option(0, "--seed"),
):
    """Mix rows from several files (round-robin over files, seeded) into one prompt/response JSONL."""
    from ..data.mix import mix_records, write_mix

    rows = mix_records(source, n, seed)
    write_mix(rows, out)
    console.print(f"wrote {len(rows)} rows to {out}")
