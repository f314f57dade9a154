"""``influcoder demo``: ``influcoder run demo`` (the shipped demo config) with its sizes as flags."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)


def demo_cmd(
    workdir: str = typer.Option("work/demo", "--workdir", help="Run folder."),
    pool_size: int = typer.Option(600, "--pool-size", help="Pool examples mixed (all embedded and indexed)."),
    n_stock: int = typer.Option(120, "--n-stock", help="Pool examples stocked for training."),
    n_queries: int = typer.Option(40, "--queries", help="BBH queries (all stocked)."),
    epochs: int = typer.Option(3, "--epochs", help="Distillation epochs."),
    decoder: str = typer.Option("smollm2-135m-instruct", "--decoder", help="Teacher decoder."),
    encoder: str = typer.Option("minilm-l6", "--encoder", help="Student encoder."),
    dtype: str = typer.Option("auto", "--dtype", help="Stocking precision: auto (bf16 where native), float32, bfloat16."),
    seed: int = typer.Option(0, "--seed"),
):
    """The main job on real data (the shipped demo config; same as `influcoder run demo`). README: "Set-up"."""
    from rich.console import Console

    from ..run.demo import DemoConfig, run_demo

    console = Console(stderr=True)
    m = run_demo(DemoConfig(workdir=workdir, pool_size=pool_size, n_stock=n_stock, n_queries=n_queries, epochs=epochs,
                            decoder=decoder, encoder=encoder, dtype=dtype, seed=seed),
                 log=lambda s: console.print(s, highlight=False, markup=False))
    from ..run.report import last_screen

    print(last_screen(m["root"]))
