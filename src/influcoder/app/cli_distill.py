"""``influcoder train``: distil influence labels into an encoder. Its flags are generated from
:class:`influcoder.student.distill.DistillConfig`'s fields (one flag each, same default, the field's docstring as help)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

from .options import data_aliases, param, quiet_param

console = Console(stderr=True)

# options that are not DistillConfig fields: field mappings for both files at once, and --quiet
_BOTH = {"preset": "Field preset for both files (alpaca, dolly, bbh, prompt-response, ...); --pool-preset / --query-preset beat it.",
         "prompt_field": "Prompt field(s) for both files, comma-separated.",
         "response_field": "Response field for both files.",
         "id_field": "Id field for both files."}
EXTRA = [param(k, Optional[str], typer.Option(None, "--" + k.replace("_", "-"), help=h)) for k, h in _BOTH.items()] + [
    quiet_param()]


def _train(values: dict, extras: dict):
    from ..core.config import config_from_flags
    from ..student.config import DistillConfig
    from ..student.distill import train

    for side in ("pool", "query"):
        for k in _BOTH:
            name = f"{side}_data__{k}"
            values[name] = values.get(name) or extras.get(k)
    cfg = config_from_flags(DistillConfig, values)
    path = train(cfg, progress=not extras["quiet"], log=lambda s: console.print(s, highlight=False))
    console.print(f"encoder saved to {path}")


def register(app: typer.Typer) -> None:
    from ..core.config import command_from
    from ..student.config import DistillConfig

    shown = ("pool_data__path", "query_data__path", "labels", "out", "encoder", "max_length", "max_train_seconds",
             "epochs", "seed", "device", "precision")
    aliases = {**data_aliases("pool_data", "pool-data", "pool-"), **data_aliases("query_data", "query-data", "query-")}
    app.command("train")(command_from(DistillConfig, _train, extra=EXTRA, shown=shown, aliases=aliases, doc=(
        "Distil the teacher's influence rankings (label file) into a bi-encoder, with a leak-free held-out split. "
        "Checkpoints each epoch: the same command resumes an interrupted run.")))
