"""``influcoder evaluate CONFIG.yaml``: run an evaluation experiment (see influcoder.evaluate)."""

from __future__ import annotations

import sys

import typer


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        config: str = typer.Argument(..., help="Experiment config (YAML): configs/exp1_ranking.yaml, ..."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars or log lines."),
        out_dir: str = typer.Option(None, "--out-dir", help="Override the config's out_dir."),
        work_dir: str = typer.Option(None, "--work-dir", help="Override the config's work_dir (caches)."),
        device: str = typer.Option(None, "--device", help="Override the config's device (auto, cpu, cuda, cuda:N)."),
        precision: str = typer.Option(None, "--precision", help="Override the config's precision (auto, float32, bfloat16)."),
        seeds: str = typer.Option(None, "--seeds", help="Run only these of the config's seeds (comma-separated)."),
        methods: str = typer.Option(None, "--methods", help="Run only these methods (names, comma-separated)."),
        committed_only: bool = typer.Option(False, "--committed-only", help="Toxicity with parts_dir: compute "
                                            "nothing; build the table from the committed (seed, method) results."),
    ):
        """Run an experiment from a config: caches features, labels, students and scores under work_dir
        (a rerun recomputes only what changed), writes eval_<name>.json/.md/.png under out_dir."""
        from rich.console import Console

        from ..eval.evaluate import load_config, run

        from dataclasses import replace

        cfg = load_config(config)
        if device or precision:  # replace() re-runs the config's checks on the overridden values
            cfg = replace(cfg, **{k: v for k, v in (("device", device), ("precision", precision)) if v})
        chosen = None
        if seeds:
            try:
                chosen = [int(x) for x in seeds.split(",")]
            except ValueError:
                raise typer.BadParameter(f"--seeds: comma-separated integers, got '{seeds}'") from None
        if committed_only and not (cfg.experiment == "toxicity" and cfg.parts_dir):
            raise typer.BadParameter("--committed-only: only for a toxicity config with parts_dir")
        if out_dir:
            cfg.out_dir = out_dir
        if work_dir:
            cfg.work_dir = work_dir
        console = Console(stderr=True)
        log = (lambda s: None) if quiet else (lambda s: console.log(s))
        only = set(methods.split(",")) if methods else None
        res = run(cfg, progress=not quiet, log=log, command="influcoder " + " ".join(sys.argv[1:]),
                  committed_only=committed_only, only_methods=only, only_seeds=chosen)
        took = f"  ({res['seconds_this_run']:.0f} s)" if "seconds_this_run" in res else ""
        print(f"{cfg.out_dir}/eval_{cfg.name}.json{took}")
