"""``influcoder demo``: the main job, end to end on the packaged models and ../shared/data."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_cmd)


def demo_cmd(
    workdir: str = typer.Option("work/demo", "--workdir", help="Where artefacts go."),
    pool_size: int = typer.Option(64, "--pool-size", help="Training-pool examples."),
    n_queries: int = typer.Option(8, "--queries", help="BBH queries."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="Stocking precision."),
    seed: int = typer.Option(0, "--seed"),
):
    """Run the pipeline end to end on real data and print the most influential training examples."""
    from .demo import DemoConfig, run_demo

    run_demo(DemoConfig(workdir=workdir, pool_size=pool_size, n_queries=n_queries, dtype=dtype, seed=seed))
