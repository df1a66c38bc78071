"""The root ``veriml`` typer app: commands grouped by noun, one error boundary.

Commands read ``veriml <noun> <verb>``, as in ``gh`` and ``docker``: ``veriml model digest``,
``veriml model list``, ``veriml node serve``, ``veriml coordinator serve``, ``veriml log
serve``, ``veriml witness serve``, ``veriml config set``. Each noun has its own ``verify``
verb for its own kind of evidence (``model verify`` a signature, ``log verify-proof`` an
inclusion proof, ``log audit`` a whole log), because each needs a different trust anchor (a
publisher key or certificate, a log key): one ``verify`` guessing the kind of a file would
also have to guess which anchor the user meant. The few top-level verbs are the everyday
workflows, short as ``docker run``: ``up``, ``run`` and ``verify`` (an inference result, the
evidence users check most), ``infer``, ``chat``, ``watch``, ``challenge``, ``demo``.

The old spellings (``serve coordinator``, ``serve node``, ``models``, ``publish``) still run,
hidden from the help, for one release. Exit codes are listed in :data:`EXIT_CODES` and in the
help's epilog (docs/sdk.md, "Exit codes"). Every command imports what it uses inside its
function, so ``veriml --help`` loads neither the ONNX stack nor the servers.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.markup import escape

from veriml.cli import (
    chat,
    config,
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
from veriml.cli._common import EXIT_CODES, EXIT_UNREACHABLE, err_console, state

__all__ = ["app", "main"]

_EPILOG = "Exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items())


def _version(value: bool) -> None:
    if value:
        from veriml import __version__

        typer.echo(f"veriml {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="veriml",
    help="veriml: signed models, verifiable inference, and a transparency log.",
    epilog=_EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", envvar="VERIML_VERBOSE", help="Show tracebacks."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
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
    infer,
    ledger,
    demo,
    watch,
    config,
    chat,
):
    _module.register(app)
publish.register(app, model.app)


def main() -> None:
    """Console entry point: runs the app and turns veriml errors into one-line messages."""
    verbose = state.verbose or os.environ.get("VERIML_VERBOSE", "") not in ("", "0")
    from veriml._extras import missing_extra

    try:
        # A command that imports a server, a node or llama.cpp lazily and lacks its extra
        # fails with one line naming the `pip install` (veriml/_extras.py).
        with missing_extra():
            app()
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        # Imported here: the error tree comes with veriml.core, which ``--help`` never needs.
        from veriml.core.errors import Error, NodeUnavailableError

        if not isinstance(exc, Error) or state.verbose or verbose:
            raise
        # Escaped: diagnostics hold shapes like [n,5] that rich would take for markup.
        err_console.print(f"[bold red]error:[/] {escape(exc.diagnostics())}", markup=True)
        sys.exit(EXIT_UNREACHABLE if isinstance(exc, NodeUnavailableError) else exc.exit_code)
