"""Shared CLI plumbing: consoles, JSON output and the error boundary.

Every command is a thin layer over the public API. Errors are printed as one line naming what
was wrong; the traceback only appears with ``--verbose`` (or ``VERIML_VERBOSE=1``).
Long operations (hashing, uploads, pulls) show a progress bar on stderr
(:func:`progress_bar`) when stderr is a terminal or ``--progress`` asks for one; stdout, and
so ``--json`` output, never carries it.
Exit codes (:data:`EXIT_CODES`, docs/sdk.md): 0 success; 1 the evidence is wrong (a check
failed) or the service refused or failed the request; 2 a usage error or bad input; 3 the
service could not be reached.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    "ProgressOpt",
    "console",
    "err_console",
    "fail",
    "home_or_default",
    "passphrase_env_option",
    "print_json",
    "progress_bar",
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
ProgressOpt = Annotated[
    bool,
    typer.Option("--progress", help="Show the progress bar even when stderr is not a terminal."),
]


def passphrase_env_option(
    envvar: str, *, help: str = "Name of the environment variable holding the key's passphrase."
) -> Any:
    """The ``--passphrase-env`` option of a command that reads an encrypted key (its value is
    a variable's name, never the passphrase itself), also set by the variable ``envvar``."""
    return typer.Option("--passphrase-env", envvar=envvar, help=help)


@contextmanager
def progress_bar(
    description: str, *, forced: bool = False
) -> Iterator[Callable[[int, int | None], None] | None]:
    """A byte progress bar on stderr, yielded as a ``(done, total)`` callback (the SDK's and
    veriml.models' ``progress=``); None, and nothing printed, unless stderr is a terminal or
    the bar is ``forced``. The bar appears with the first bytes. Calls may come from worker
    threads but must not overlap (model_digest's counter makes them one at a time)."""
    if not (forced or err_console.is_terminal):
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        redirect_stdout=False,  # stdout stays the command's own (JSON included)
        redirect_stderr=False,
    )
    tasks: list[TaskID] = []

    def update(done: int, total: int | None) -> None:
        if not tasks:  # drawn from the first bytes on: an operation that moves none shows none
            bar.start()
            tasks.append(bar.add_task(description, total=total))
        bar.update(tasks[0], completed=done, total=total)

    try:
        yield update
    finally:
        if tasks:
            bar.stop()


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
