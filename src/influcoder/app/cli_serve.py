"""``influcoder serve``: the explorer page and JSON API over a run or index folder."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)


def serve_cmd(
    path: Path = typer.Argument(..., help="A run folder (influcoder run) or an index folder (influcoder index --out)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="Reference queries records file (for an index folder, or instead of the run's)."),
    query_preset: Optional[str] = typer.Option(None, "--query-preset", help="Field mapping of the queries file (e.g. bbh)."),
    query_prompt_field: Optional[str] = typer.Option(None, "--query-prompt-field"),
    query_response_field: Optional[str] = typer.Option(None, "--query-response-field"),
    query_id_field: Optional[str] = typer.Option(None, "--query-id-field"),
    aggregate: str = typer.Option("mean", "--aggregate", help="mean | max: how the filter aggregates scores over the queries."),
    batch_size: int = typer.Option(64, "--batch-size", help="Encoder batch size."),
    reference: Optional[List[Path]] = typer.Option(None, "--reference", help="Encoder training data for the OOD flags (default: from the encoder's metadata)."),
    reference_preset: Optional[str] = typer.Option(None, "--reference-preset"),
    ood_threshold: Optional[float] = typer.Option(None, "--ood-threshold", help="Flag NN similarity below this (default: calibrated)."),
    no_ood: bool = typer.Option(False, "--no-ood", help="No OOD flags."),
    device: str = typer.Option("auto", "--device", help="Encoder device: auto (CUDA when present), cpu, cuda, cuda:N."),
    precision: str = typer.Option("auto", "--precision", help="Encoder precision: auto (bf16 where native), float32, bfloat16."),
):
    """Serve an explorer page and JSON API: attribute queries, filter the pool with a slider, export."""
    import uvicorn

    from .cli_attribute import _ood_opts
    from .serve import create_app

    _check_port(host, port)  # before the (slow) loading
    console.print(f"loading {path} …")
    app = create_app(path, aggregate=aggregate, batch_size=batch_size,
                     ood=_ood_opts(reference, reference_preset, ood_threshold, no_ood),
                     queries=str(queries) if queries else None, query_preset=query_preset,
                     query_prompt_field=query_prompt_field, query_response_field=query_response_field,
                     query_id_field=query_id_field, device=device, precision=precision)
    for note in app.state.explorer.notes:
        console.print(f"[yellow]{note}[/]")
    console.print(f"serving {path} at http://{host}:{port}/ (Ctrl-C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _check_port(host: str, port: int) -> None:
    """A clear one-line error (exit 2) when the address cannot be listened on."""
    import socket

    from ..core.errors import UserError

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(addr)
    except (OSError, OverflowError) as e:
        raise UserError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e})") from None
