"""``influcoder run RUN.yaml``, ``influcoder demo`` and ``influcoder exact-query RUN``: the whole job from one config;
every config field is also a flag (``--student.epochs 3``, ``--pool.path data.jsonl``...) that overrides the YAML
file. ``demo`` is ``run`` with the shipped demo config (its flags show that file's values)."""

from __future__ import annotations

import typer

from .options import data_aliases, param, quiet_param

DEMO_ALIASES = {"out": "--workdir", "mix.pool_n": "--pool-size", "sample.n_stock": "--n-stock", "mix.queries_n": "--queries",
                "student.epochs": "--epochs", "teacher.model": "--decoder", "student.encoder": "--encoder",
                "teacher.dtype": "--dtype"}
"""The demo's short flags (``--n-stock 40`` is ``--sample.n-stock 40``)."""
SEEDED = ("mix", "sample", "teacher", "student")
"""The run-config sections whose ``seed`` the demo's ``--seed`` sets."""


def _given(values: dict, ctx) -> dict:
    """The flags given on the command line (not their defaults)."""
    # typer may vendor its own click: compare the parameter source by name
    return {k: v for k, v in values.items() if getattr(ctx.get_parameter_source(k), "name", None) == "COMMANDLINE"}


def _apply_overrides(cfg, values: dict, ctx) -> object:
    """The config with the flags given on the command line (not their defaults) written over it."""
    from ..core.config import config_from_flags, to_dict
    from ..run.config import RunConfig

    return config_from_flags(RunConfig, _given(values, ctx), base=to_dict(cfg))


def _pipeline(cfg, quiet: bool):
    """The Pipeline of ``cfg``, logging to stderr (nothing with ``quiet``)."""
    from rich.console import Console

    from ..run.pipeline import Pipeline

    console = Console(stderr=True)
    return Pipeline(cfg, log=(lambda s: None) if quiet else (lambda s: console.print(s, highlight=False, markup=False)),
                    progress=not quiet)


def run_config(cfg, quiet: bool) -> None:
    """Run a resolved RunConfig (``influcoder run`` and ``influcoder demo``) and print the last screen."""
    import sys

    from ..run.report import last_screen

    pipe = _pipeline(cfg, quiet)
    pipe.run()
    print(last_screen(pipe.root), file=sys.stdout)


def _run(values: dict, extras: dict):
    from ..core.config import load_yaml
    from ..run.config import RunConfig, find_run_config

    run_config(_apply_overrides(load_yaml(RunConfig, find_run_config(extras["config"])), values, extras["ctx"]),
               extras["quiet"])


def _demo(values: dict, extras: dict):
    from ..core.config import config_from_flags, to_dict
    from ..run.config import RunConfig
    from ..run.demo import demo_run_config

    given = _given(values, extras["ctx"])
    if extras["seed"] is not None:  # --seed sets every section's seed (over a section's own seed flag)
        given.update({f"{section}__seed": extras["seed"] for section in SEEDED})
    run_config(config_from_flags(RunConfig, given, base=to_dict(demo_run_config())), extras["quiet"])


def _exact_query(values: dict, extras: dict):
    import dataclasses
    from pathlib import Path

    from ..core.config import config_from_flags, load_yaml
    from ..core.errors import UserError
    from ..run.config import ExactQueryAttributeConfig, RunConfig
    from ..run.layout import RunLayout

    eq = config_from_flags(ExactQueryAttributeConfig, values)
    run_dir = extras["run_dir"]
    layout = RunLayout(run_dir)
    if not layout.config.is_file():
        raise UserError(f"{run_dir}: not a run folder (no {layout.config.name})")
    cfg = dataclasses.replace(load_yaml(RunConfig, layout.config), out=str(run_dir))  # wherever the folder now is
    print(_pipeline(cfg, extras["quiet"]).exact_query_attribute(eq.queries, Path(eq.out), eq.top_k, aggregate=eq.aggregate))


def register(app: typer.Typer) -> None:
    from ..core.config import command_from
    from ..run.config import ExactQueryAttributeConfig, RunConfig
    from ..run.demo import demo_run_config

    config = param("config", str, typer.Argument(
        ..., help="Run config: a YAML file (e.g. configs/own_data.yaml) or a shipped config's name (demo)."),
        positional=True)
    quiet = quiet_param("No progress bars or log lines.")
    shown = ("out", "pool__path", "pool__prompt_field", "pool__response_field", "queries__path", "sample__n_stock",
             "teacher__model", "student__encoder", "device", "precision", "steps")
    app.command("run")(command_from(RunConfig, lambda values, extras: _run(values, extras), extra=[config, quiet], context=True, shown=shown, doc=(
        "Run the whole job from a config: sample → stock → labels → train → embed → index → attribute/filter → "
        "fidelity report. Every step is cached by its config and inputs; rerun the same command after an "
        "interruption to resume. Flags override the file's values.")))

    seed = param("seed", int, typer.Option(
        None, "--seed", help="Seed of the mix, the sample, the LoRA init and sketch, and the student (each section's seed)."))
    demo_shown = ("out", "mix__pool_n", "mix__queries_n", "sample__n_stock", "student__epochs", "teacher__model",
                  "student__encoder", "teacher__dtype", "device", "precision")
    app.command("demo")(command_from(RunConfig, _demo, extra=[seed, quiet], context=True, shown=demo_shown,
                                     aliases=DEMO_ALIASES, base=demo_run_config(), doc=(
        "The main job on real data: `influcoder run demo` (the shipped demo config, whose values the flags show).")))

    run_dir = param("run_dir", str, typer.Argument(..., help="A run folder whose exact_query step is done."), positional=True)
    app.command("exact-query")(command_from(
        ExactQueryAttributeConfig, _exact_query, extra=[run_dir, quiet],
        aliases=data_aliases("queries", "queries"),
        shown=("queries__path", "out", "top_k", "aggregate", "queries__preset", "queries__prompt_field",
               "queries__response_field"),
        doc=("Attribute new queries by exact-query scoring against a finished run: stock only them with the run's "
             "teacher, project them on its basis, rank its pool. README: docs/METHOD.md, \"Exact-query scoring\".")))
