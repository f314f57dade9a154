"""The ``influcoder`` command line (typer + rich). Each pipeline stage registers its commands from
its own ``cli_<stage>.py`` module through a ``register(app)`` function."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from .. import __version__

app = typer.Typer(
    name="influcoder",
    help="Influence-based data attribution for LLMs: stock LoRA gradients, label influence, distil an encoder, attribute at scale.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    epilog="Start with `make demo`, then README \"Run it on your data\"; each command's --help names its section.",
)
console = Console(stderr=True)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
):
    if version:
        print(__version__)
        raise typer.Exit()


from . import cli_attribute, cli_data, cli_distill, cli_evaluate, cli_run, cli_serve, cli_stock  # noqa: E402

for _module in (cli_data, cli_stock, cli_evaluate, cli_distill, cli_attribute, cli_serve, cli_run):
    _module.register(app)  # each command's flags are generated from its config dataclass

README_SECTION = {
    "run": "Run it on your data", "demo": "Set-up: two commands", "serve": "Explore",
    "filter": "Filter a data set", "attribute": "Filter a data set", "evaluate": "More (docs/METHOD.md#evaluation)",
}
"""The README section each command's --help points to (the others: docs/METHOD.md, the stages one by one)."""
for _info in app.registered_commands:
    _name = _info.name or ""
    _where = README_SECTION.get(_name)
    _info.epilog = (f"README: \"{_where}\"." if _where else
                    "README: \"More\" → docs/METHOD.md, \"The stages one by one\".")


def main() -> None:
    """Entry point: user-facing errors print one line and exit 2; no traceback for bad input."""
    import os
    import warnings

    from ..core.errors import UserError

    warnings.filterwarnings("ignore", category=FutureWarning)
    # transformers' log level and progress bars, set without importing it (--help and config checks load no torch)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        app(standalone_mode=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)  # plain: never wrapped, no markup in paths
        sys.exit(2)


if __name__ == "__main__":
    main()
