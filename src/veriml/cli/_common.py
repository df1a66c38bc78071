"""Shared CLI plumbing: consoles, JSON output and the error boundary.

Every command is a thin layer over the public API. Errors are printed as one line naming what
was wrong; the traceback only appears with ``--verbose`` (or ``VERIML_VERBOSE=1``).
Exit codes (:data:`EXIT_CODES`, docs/sdk.md): 0 success; 1 the evidence is wrong (a check
failed) or the service refused or failed the request; 2 a usage error or bad input; 3 the
service could not be reached.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

__all__ = [
    "EXIT_CODES",
    "EXIT_FAILED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "JsonOpt",
    "console",
    "err_console",
    "fail",
    "home_or_default",
    "print_json",
    "state",
]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_CODES = {
    0: "success",
    EXIT_FAILED: "the evidence is wrong (a check failed) or the service failed the request",
    EXIT_USAGE: "usage error or bad input",
    EXIT_UNREACHABLE: "the service could not be reached",
    130: "interrupted",
}

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class _State:
    verbose: bool = False


state = _State()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def print_json(value: Any) -> None:
    """Write JSON to stdout without rich markup, so scripts can parse it."""
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def fail(message: str, *, code: int = EXIT_USAGE) -> typer.Exit:
    """Print a one-line error and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True)
    return typer.Exit(code)


def home_or_default(home: Path | None) -> Path:
    """``home`` when given (``--home``, ``$VERIML_HOME``), else the configured one (the
    ``home`` setting, else the user's data directory: ``veriml config get home``)."""
    if home is not None:
        return home
    from veriml.client import default_home

    return default_home()


def existing_dir(path: Path) -> Path:
    if not path.is_dir():
        raise fail(f"{path}: not a directory")
    return path
