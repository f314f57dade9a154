"""The main job: ``influcoder demo`` is ``influcoder run demo``, the run config shipped as
``influcoder/run/configs/demo.yaml`` (``make demo`` runs it); in Python, ``run_demo({...})`` with overrides of
that file's values. Both go through :mod:`influcoder.run.pipeline`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import UserError

__all__ = ["demo_run_config", "run_demo", "DEMO_YAML"]

DEMO_YAML = Path(__file__).resolve().parent / "configs" / "demo.yaml"


def demo_run_config(overrides: dict[str, Any] | None = None):
    """The shipped demo.yaml as a :class:`~influcoder.run.config.RunConfig`, with ``overrides`` (a nested mapping of
    run-config keys, e.g. ``{"sample": {"n_stock": 40}}``) written over it."""
    from ..core.config import from_dict, load_yaml, merged, to_dict
    from .config import RunConfig

    if not DEMO_YAML.exists():
        raise UserError(f"{DEMO_YAML}: the demo config is missing from this installation of influcoder")
    cfg = load_yaml(RunConfig, DEMO_YAML)
    if not overrides:
        return cfg
    return from_dict(RunConfig, merged(to_dict(cfg), overrides), where=f"{DEMO_YAML} with overrides")


def run_demo(overrides: dict[str, Any] | None = None, *, progress: bool = True, log=None) -> dict:
    """Run the demo; returns the run manifest (paths relative to the run folder) with ``root`` added."""
    from ..data.mix import data_root
    from .pipeline import Pipeline

    if not (data_root() / "alpaca").exists():
        raise UserError(f"data folder {data_root()} not found: set INFLUCODER_DATA to the shared data folder")
    pipe = Pipeline(demo_run_config(overrides), progress=progress, log=log)
    return {**pipe.run(), "root": str(pipe.root)}
