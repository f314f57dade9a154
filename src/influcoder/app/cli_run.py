"""``influcoder run RUN.yaml``, ``influcoder demo`` and ``influcoder exact-query RUN``: the whole job from one config;
every config field is also a flag (``--student.epochs 3``, ``--pool.path data.jsonl``...) that overrides the YAML
file. ``demo`` is ``run`` with the shipped demo config (its flags show that file's values)."""

from __future__ import annotations

import inspect

import typer

DEMO_ALIASES = {"out": "--workdir", "mix.pool_n": "--pool-size", "sample.n_stock": "--n-stock", "mix.queries_n": "--queries",
                "student.epochs": "--epochs", "teacher.model": "--decoder", "student.encoder": "--encoder",
                "teacher.dtype": "--dtype"}
"""The demo's short flags (``--n-stock 40`` is ``--sample.n-stock 40``)."""
SEEDED = ("mix", "sample", "teacher", "student")
"""The run-config sections whose ``seed`` the demo's ``--seed`` sets."""


def _apply_overrides(cfg, values: dict, ctx) -> object:
    """The config with the flags given on the command line (not their defaults) written over it."""
    from ..core.config import from_dict, to_dict
    from ..run.config import RunConfig

    d = to_dict(cfg)
    for name, value in values.items():
        source = ctx.get_parameter_source(name)
        if getattr(source, "name", None) != "COMMANDLINE":  # typer may vendor its own click: compare by name
            continue
        *sections, leaf = name.split("__")
        node = d
        for s in sections:
            node = node[s]
        node[leaf] = list(value) if isinstance(value, (list, tuple)) else value
    return from_dict(RunConfig, d, where="command line")


def run_config(cfg, quiet: bool) -> None:
    """Run a resolved RunConfig (``influcoder run`` and ``influcoder demo``) and print the last screen."""
    import sys

    from rich.console import Console

    from ..run.pipeline import Pipeline
    from ..run.report import last_screen

    console = Console(stderr=True)
    pipe = Pipeline(cfg, log=(lambda s: None) if quiet else (lambda s: console.print(s, highlight=False, markup=False)),
                    progress=not quiet)
    pipe.run()
    print(last_screen(pipe.root), file=sys.stdout)


def _run(values: dict, extras: dict):
    from ..core.config import load_yaml
    from ..run.config import RunConfig, find_run_config

    run_config(_apply_overrides(load_yaml(RunConfig, find_run_config(extras["config"])), values, extras["ctx"]),
               extras["quiet"])


def _demo(values: dict, extras: dict):
    from ..core.config import from_dict, to_dict
    from ..run.config import RunConfig
    from ..run.demo import demo_run_config

    cfg = _apply_overrides(demo_run_config(), values, extras["ctx"])
    if extras["seed"] is not None:
        d = to_dict(cfg)
        for section in SEEDED:
            d[section]["seed"] = extras["seed"]
        cfg = from_dict(RunConfig, d, where="command line")
    run_config(cfg, extras["quiet"])


def _quiet() -> inspect.Parameter:
    return inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                             default=typer.Option(False, "--quiet", help="No progress bars or log lines."))


def _exact_query(values: dict, extras: dict):
    import dataclasses
    from pathlib import Path

    from rich.console import Console

    from ..core.config import config_from_flags, load_yaml
    from ..core.errors import UserError
    from ..run.config import ExactQueryAttributeConfig, RunConfig
    from ..run.layout import RunLayout
    from ..run.pipeline import Pipeline

    eq = config_from_flags(ExactQueryAttributeConfig, values)
    run_dir = extras["run_dir"]
    layout = RunLayout(run_dir)
    if not layout.config.is_file():
        raise UserError(f"{run_dir}: not a run folder (no {layout.config.name})")
    cfg = dataclasses.replace(load_yaml(RunConfig, layout.config), out=str(run_dir))  # wherever the folder now is
    console = Console(stderr=True)
    quiet = extras["quiet"]
    pipe = Pipeline(cfg, log=(lambda s: None) if quiet else (lambda s: console.print(s, highlight=False, markup=False)),
                    progress=not quiet)
    print(pipe.exact_query_attribute(eq.queries, Path(eq.out), eq.top_k, aggregate=eq.aggregate))


def register(app: typer.Typer) -> None:
    from ..core.config import command_from
    from ..run.config import ExactQueryAttributeConfig, RunConfig
    from ..run.demo import demo_run_config
    from .cli_stock import data_aliases

    config = inspect.Parameter("config", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str, default=typer.Argument(
        ..., help="Run config: a YAML file (e.g. configs/own_data.yaml) or a shipped config's name (demo)."))
    shown = ("out", "pool__path", "pool__prompt_field", "pool__response_field", "queries__path", "sample__n_stock",
             "teacher__model", "student__encoder", "device", "precision", "steps")
    app.command("run")(command_from(RunConfig, lambda values, extras: _run(values, extras), extra=[config, _quiet()], context=True, shown=shown, doc=(
        "Run the whole job from a config: sample → stock → labels → train → embed → index → attribute/filter → "
        "fidelity report. Every step is cached by its config and inputs; rerun the same command after an "
        "interruption to resume. Flags override the file's values.")))

    seed = inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, annotation=int, default=typer.Option(
        None, "--seed", help="Seed of the mix, the sample, the LoRA init and sketch, and the student (each section's seed)."))
    demo_shown = ("out", "mix__pool_n", "mix__queries_n", "sample__n_stock", "student__epochs", "teacher__model",
                  "student__encoder", "teacher__dtype", "device", "precision")
    app.command("demo")(command_from(RunConfig, _demo, extra=[seed, _quiet()], context=True, shown=demo_shown,
                                     aliases=DEMO_ALIASES, base=demo_run_config(), doc=(
        "The main job on real data: `influcoder run demo` (the shipped demo config, whose values the flags show).")))

    run_dir = inspect.Parameter("run_dir", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str, default=typer.Argument(
        ..., help="A run folder whose exact_query step is done."))
    app.command("exact-query")(command_from(
        ExactQueryAttributeConfig, _exact_query, extra=[run_dir, _quiet()],
        aliases=data_aliases("queries", "queries"),
        shown=("queries__path", "out", "top_k", "aggregate", "queries__preset", "queries__prompt_field",
               "queries__response_field"),
        doc=("Attribute new queries by exact-query scoring against a finished run: stock only them with the run's "
             "teacher, project them on its basis, rank its pool. README: docs/METHOD.md, \"Exact-query scoring\".")))
