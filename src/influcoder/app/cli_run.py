"""``influcoder run RUN.yaml``: the whole job from one config; every config field is also a flag
(``--student.epochs 3``, ``--pool.path data.jsonl``...) that overrides the YAML file."""

from __future__ import annotations

import inspect

import typer


def _apply_overrides(cfg, values: dict, ctx) -> object:
    """The config with the flags given on the command line (not their defaults) written over it."""
    from ..run.config import RunConfig
    from ..core.config import from_dict, to_dict

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


def _run(values: dict, extras: dict):
    import sys

    from rich.console import Console

    from ..run.config import RunConfig, find_run_config
    from ..core.config import load_yaml
    from ..run.pipeline import Pipeline

    cfg = _apply_overrides(load_yaml(RunConfig, find_run_config(extras["config"])), values, extras["ctx"])
    console = Console(stderr=True)
    quiet = extras["quiet"]
    pipe = Pipeline(cfg, log=(lambda s: None) if quiet else (lambda s: console.print(s, highlight=False, markup=False)),
                    progress=not quiet)
    pipe.run()
    from ..run.report import last_screen

    print(last_screen(pipe.root), file=sys.stdout)


def register(app: typer.Typer) -> None:
    from ..run.config import RunConfig
    from ..core.config import command_from

    extra = [
        inspect.Parameter("config", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str,
                          default=typer.Argument(..., help="Run config: a YAML file (e.g. configs/own_data.yaml) or a shipped config's name (demo).")),
        inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--quiet", help="No progress bars or log lines.")),
    ]
    shown = ("out", "pool__path", "pool__prompt_field", "pool__response_field", "queries__path", "sample__n_stock",
             "teacher__model", "student__encoder", "device", "precision", "steps")
    cmd = command_from(RunConfig, lambda values, extras: _run(values, extras), extra=extra, context=True, shown=shown, doc=(
        "Run the whole job from a config: sample → stock → labels → train → embed → index → attribute/filter → "
        "fidelity report. Every step is cached by its config and inputs; rerun the same command after an "
        "interruption to resume. Flags override the file's values."))
    app.command("run")(cmd)

    @app.command("exact-query")
    def exact_query_cmd(
        run_dir: str = typer.Argument(..., help="A run folder whose exact_query step is done."),
        queries: str = typer.Option(..., "--queries", help="New queries (records file); only they are stocked."),
        out: str = typer.Option(..., "--out", help="Output JSONL: query_id, rank, id, score."),
        top_k: int = typer.Option(None, "--top-k", help="Pool examples per query (default: the run's exact_query.top_k)."),
        aggregate: bool = typer.Option(False, "--aggregate", help="Rank every pool row by its mean score over the "
                                       "queries (a filter ranking: rank, id, score) instead of top-k per query."),
        preset: str = typer.Option(None, "--preset", help="Field mapping of the queries file."),
        prompt_field: str = typer.Option(None, "--prompt-field"),
        response_field: str = typer.Option(None, "--response-field"),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars or log lines."),
    ):
        """Attribute new queries by exact-query scoring against a finished run: stock only them with the run's
        teacher, project them on its basis, rank its pool. README: docs/METHOD.md, "Exact-query scoring"."""
        from pathlib import Path

        from rich.console import Console

        from ..run.config import RunConfig
        from ..core.config import load_yaml
        from ..core.errors import UserError
        from ..run.pipeline import Pipeline
        from ..data.records import DataSpec

        cfg_path = Path(run_dir) / "config.yaml"
        if not cfg_path.is_file():
            raise UserError(f"{run_dir}: not a run folder (no config.yaml)")
        import dataclasses

        cfg = dataclasses.replace(load_yaml(RunConfig, cfg_path), out=str(run_dir))  # wherever the folder now is
        console = Console(stderr=True)
        pipe = Pipeline(cfg, log=(lambda s: None) if quiet else (lambda s: console.print(s, highlight=False, markup=False)),
                        progress=not quiet)
        path = pipe.exact_query_attribute(DataSpec(path=queries, preset=preset, prompt_field=prompt_field,
                                                   response_field=response_field), out, top_k, aggregate=aggregate)
        print(path)
