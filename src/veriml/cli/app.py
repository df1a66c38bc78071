"""The root ``veriml`` typer app: commands grouped by noun, one error boundary."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.markup import escape

from veriml.cli import (
    chat,
    demo,
    infer,
    key,
    ledger,
    log,
    model,
    operator,
    publish,
    run,
    serve,
    up,
    watch,
    witness,
)
from veriml.cli._common import err_console, state
from veriml.core.errors import Error

__all__ = ["app", "main"]

app = typer.Typer(
    name="veriml",
    help="veriml: signed models, verifiable inference, and a transparency log.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", envvar="VERIML_VERBOSE", help="Show tracebacks."),
    ] = False,
) -> None:
    state.verbose = verbose


for _module in (
    key,
    model,
    run,
    log,
    witness,
    operator,
    serve,
    up,
    publish,
    infer,
    ledger,
    demo,
    watch,
):
    _module.register(app)
chat.register(app)


def main() -> None:
    """Console entry point: runs the app and turns veriml errors into one-line messages."""
    verbose = state.verbose or os.environ.get("VERIML_VERBOSE", "") not in ("", "0")
    try:
        app()
    except Error as exc:
        if state.verbose or verbose:
            raise
        # Escaped: diagnostics hold shapes like [n,5] that rich would take for markup.
        err_console.print(f"[bold red]error:[/] {escape(exc.diagnostics())}", markup=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
