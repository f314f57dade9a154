"""``influcoder evaluate CONFIG.yaml``: run an evaluation experiment (see influcoder.eval.evaluate); its options are
generated from :class:`influcoder.eval.config.EvaluateCommand`."""

from __future__ import annotations

import sys

import typer

from .options import param


def _evaluate(values: dict, extras: dict):
    from dataclasses import replace

    from rich.console import Console

    from ..core.config import config_from_flags
    from ..core.errors import UserError
    from ..eval.config import EvaluateCommand, load_config
    from ..eval.evaluate import run

    opts = config_from_flags(EvaluateCommand, values)
    cfg = load_config(extras["config"])
    if opts.device or opts.precision:  # replace() re-runs the config's checks on the overridden values
        cfg = replace(cfg, **{k: v for k, v in (("device", opts.device), ("precision", opts.precision)) if v})
    try:
        chosen = opts.seed_list()
    except UserError as e:
        raise typer.BadParameter(f"--{e}") from None
    if opts.committed_only and not (cfg.experiment == "toxicity" and cfg.parts_dir):
        raise typer.BadParameter("--committed-only: only for a toxicity config with parts_dir")
    if opts.out_dir:
        cfg.out_dir = opts.out_dir
    if opts.work_dir:
        cfg.work_dir = opts.work_dir
    console = Console(stderr=True)
    log = (lambda s: None) if opts.quiet else (lambda s: console.log(s))
    only = set(opts.methods.split(",")) if opts.methods else None
    res = run(cfg, progress=not opts.quiet, log=log, command="influcoder " + " ".join(sys.argv[1:]),
              committed_only=opts.committed_only, only_methods=only, only_seeds=chosen)
    took = f"  ({res['seconds_this_run']:.0f} s)" if "seconds_this_run" in res else ""
    print(f"{cfg.out_dir}/eval_{cfg.name}.json{took}")


def register(app: typer.Typer) -> None:
    from ..core.config import command_from
    from ..eval.config import EvaluateCommand

    config = param("config", str, typer.Argument(..., help="Experiment config (YAML): configs/exp1_ranking.yaml, ..."),
                   positional=True)
    app.command("evaluate")(command_from(EvaluateCommand, _evaluate, extra=[config], doc=(
        "Run an experiment from a config: caches features, labels, students and scores under work_dir (a rerun "
        "recomputes only what changed), writes eval_<name>.json/.md/.png under out_dir.")))
