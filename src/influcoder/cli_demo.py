"""``influcoder demo``: the main job, end to end on the packaged models and ../shared/data."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)


def demo_cmd(
    workdir: str = typer.Option("work/demo", "--workdir", help="Where artefacts go."),
    pool_size: int = typer.Option(160, "--pool-size", help="Training-pool examples to stock."),
    n_queries: int = typer.Option(40, "--queries", help="BBH queries to stock."),
    epochs: int = typer.Option(3, "--epochs", help="Distillation epochs."),
    decoder: str = typer.Option("smollm2-135m-instruct", "--decoder", help="Teacher decoder."),
    encoder: str = typer.Option("minilm-l6", "--encoder", help="Student encoder."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="Stocking precision."),
    seed: int = typer.Option(0, "--seed"),
):
    """Run the whole pipeline on real data: stock → influence → train → embed → index → attribute."""
    from .demo import DemoConfig, run_demo

    run_demo(DemoConfig(workdir=workdir, pool_size=pool_size, n_queries=n_queries, epochs=epochs, decoder=decoder,
                        encoder=encoder, dtype=dtype, seed=seed))
