"""Options several commands share: ``--quiet``, and the short flags kept beside the generated ones of a data-spec
section (``--preset`` for ``--data.preset``), the ``ood`` section and the ``ray`` section."""

from __future__ import annotations

import inspect

import typer

__all__ = ["param", "quiet_param", "data_aliases", "DATA_FLAGS", "OOD_ALIASES", "RAY_ALIASES"]


def param(name: str, annotation, option, *, positional: bool = False) -> inspect.Parameter:
    """A parameter of a generated command besides its config's fields (``extra`` of ``command_from``)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if positional else inspect.Parameter.KEYWORD_ONLY
    return inspect.Parameter(name, kind, annotation=annotation, default=option)


def quiet_param(help: str = "No progress bar.") -> inspect.Parameter:
    """``--quiet``."""
    return param("quiet", bool, typer.Option(False, "--quiet", help=help))


DATA_FLAGS = {"path": "", "preset": "--preset", "prompt_field": "--prompt-field", "response_field": "--response-field",
              "messages_field": "--messages-field", "id_field": "--id-field", "limit": "--limit",
              "skip_invalid": "--skip-invalid"}
"""The short flags of a command's ``data`` section (``--data.preset`` is also ``--preset``; its path is ``--data``)."""


def data_aliases(section: str, short: str, prefix: str = "") -> dict[str, str]:
    """Aliases of a DataSpec section's flags: ``--<short>`` for its path and ``--<prefix>preset`` … for its fields
    (``data_aliases("queries", "queries", "query-")`` → ``--queries``, ``--query-preset``, …)."""
    out = {f"{section}.path": f"--{short}"}
    for k, flag in DATA_FLAGS.items():
        if flag:
            out[f"{section}.{k}"] = "--" + prefix + flag[2:]
    return out


OOD_ALIASES = {"ood.reference": "--reference", "ood.reference_preset": "--reference-preset",
               "ood.threshold": "--ood-threshold", "ood.enabled": "/--no-ood"}
"""The short flags of a command's ``ood`` section (influcoder.search.ood.OODConfig)."""

RAY_ALIASES = {"ray.address": "--ray", "ray.num_actors": "--ray-actors", "ray.cpus_per_actor": "--ray-cpus",
               "ray.gpus_per_actor": "--ray-gpus", "ray.rows_per_batch": "--ray-batch-rows"}
"""The short flags of the ``ray`` section (influcoder.search.ray_backend.RayConfig) of ``embed`` and ``filter``:
``--ray [ADDRESS]`` runs the command on Ray (a cluster ADDRESS, or alone: RAY_ADDRESS or a local instance)."""
