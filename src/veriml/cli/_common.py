"""Shared CLI plumbing: consoles, JSON output and the error boundary.

Every command is a thin layer over the public API. Errors are printed as one line naming what
was wrong; the traceback only appears with ``--verbose`` (or ``VERIML_VERBOSE=1``).
Exit codes: 0 success, 1 failed verification or service failure, 2 usage or bad input.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["JsonOpt", "console", "err_console", "fail", "print_json", "state"]

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


def fail(message: str, *, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True)
    return typer.Exit(code)


def existing_dir(path: Path) -> Path:
    if not path.is_dir():
        raise fail(f"{path}: not a directory")
    return path
