"""``influcoder serve``: the explorer page and JSON API over a run or index folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    from ..core.config import command_from
    from .options import OOD_ALIASES, data_aliases, param
    from .serve import ServeConfig

    path = param("path", Path, typer.Argument(
        ..., help="A run folder (influcoder run) or an index folder (influcoder index --out)."), positional=True)
    aliases = {**data_aliases("queries", "queries", "query-"), **OOD_ALIASES}
    app.command("serve")(command_from(ServeConfig, _serve, extra=[path], aliases=aliases,
                                      shown=("host", "port", "queries__path", "queries__preset", "aggregate", "device"), doc=(
        "Serve an explorer page and JSON API: attribute queries, filter the pool with a slider, export.")))


def _serve(values: dict, extras: dict):
    import uvicorn

    from ..core.config import config_from_flags
    from .serve import ServeConfig, create_app

    cfg = config_from_flags(ServeConfig, values)
    path = extras["path"]
    _check_port(cfg.host, cfg.port)  # before the (slow) loading
    console.print(f"loading {path} …")
    app = create_app(path, aggregate=cfg.aggregate, batch_size=cfg.batch_size, ood=cfg.ood,
                     queries=cfg.queries if cfg.queries.path else None, device=cfg.device, precision=cfg.precision)
    for note in app.state.explorer.notes:
        console.print(f"[yellow]{note}[/]")
    console.print(f"serving {path} at http://{cfg.host}:{cfg.port}/ (Ctrl-C to stop)")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")


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
