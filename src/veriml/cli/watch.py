"""``veriml watch`` and ``veriml challenge``: re-execute logged inferences on this machine and
dispute any answer that differs (docs/watcher.md).

    veriml watch --sample 0.05 --key watcher.key --state watch.json      # follow the log
    veriml watch --sample 1 --once --json                                # check everything now
    veriml challenge 3f2c...-uuid --key watcher.key                      # one inference

Exit codes: 0 when every checked answer matched, 1 when one differed (or a check failed),
2 on bad usage.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from veriml.cli._common import JsonOpt, ProgressOpt, console, err_console, fail, progress_bar
from veriml.cli.infer import LogVkeyOpt
from veriml.cli.publish import CoordinatorOpt, load_request_key

if TYPE_CHECKING:
    from veriml.client import CheckedInference, WatchSummary

__all__ = ["register"]

KeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--key",
        envvar="VERIML_WATCH_KEY",
        help="Sign disputes with this private key (Ed25519 or EC); its key id is the "
        "challenger's account. Without it mismatches are reported, not disputed.",
    ),
]
CacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache",
        envvar="VERIML_WATCH_CACHE",
        help="Where pulled models are kept (default: $VERIML_HOME/watch/models).",
    ),
]


def _emit(checked: CheckedInference, json_out: bool) -> None:
    if json_out:
        sys.stdout.write(json.dumps(checked.to_json(), separators=(",", ":")) + "\n")
        sys.stdout.flush()
    else:
        style = {"match": "green", "mismatch": "bold red", "error": "yellow"}.get(checked.result)
        line = checked.line()
        # Escaped: details can hold shapes like [n,5] that rich would take for markup.
        console.print(f"[{style}]{escape(line)}[/]" if style else line, markup=bool(style))


def _summary(summary: WatchSummary, json_out: bool) -> None:
    if json_out:
        line = {"summary": summary.to_json()}
        sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    else:
        console.print(summary.line(), markup=False)


def watch(
    sample: Annotated[
        float,
        typer.Option(
            "--sample",
            envvar="VERIML_WATCH_SAMPLE",
            min=0.0,
            max=1.0,
            help="Probability of re-executing each logged inference (0..1).",
        ),
    ],
    coordinator: CoordinatorOpt = None,
    key: KeyOpt = None,
    log_vkey: LogVkeyOpt = None,
    once: Annotated[
        bool,
        typer.Option("--once", help="Process what the log holds now, then exit."),
    ] = False,
    interval: Annotated[
        float,
        typer.Option(
            "--interval",
            envvar="VERIML_WATCH_INTERVAL",
            min=0.1,
            help="Seconds between polls of the log's checkpoint.",
        ),
    ] = 10.0,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            envvar="VERIML_WATCH_STATE",
            help="Remember the position and last checkpoint here; resume from it next time.",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", help="Seed the sampling (reproducible, hence predictable: tests only)."
        ),
    ] = None,
    cache: CacheOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print JSON lines: one per check, then a summary.")
    ] = False,
    show_progress: ProgressOpt = False,
) -> None:
    """Follow the log, re-execute a random sample of inferences, dispute any mismatch."""
    from veriml.client import Client, Watcher
    from veriml.core.errors import NodeUnavailableError

    signing = load_request_key(key)
    if signing is None:
        err_console.print("no --key: mismatches will be reported but not disputed")
    with (
        Client(coordinator, log_vkey=log_vkey, key=signing) as client,
        progress_bar("pulling model", forced=show_progress) as progress,
        Watcher(
            client, sample=sample, seed=seed, state=state, cache_dir=cache, pull_progress=progress
        ) as watcher,
    ):
        try:
            while True:
                try:
                    watcher.poll(lambda checked: _emit(checked, json_out))
                except NodeUnavailableError as exc:
                    if once:
                        raise
                    # Following: an unreachable coordinator is retried at the next poll (a
                    # forked log or a bad signature is not: those stop the watcher).
                    err_console.print(
                        f"coordinator unavailable, retrying: {exc.diagnostics()}", markup=False
                    )
                if once:
                    break
                time.sleep(interval)
        except KeyboardInterrupt:
            err_console.print("interrupted")
        _summary(watcher.summary, json_out)
        if watcher.summary.mismatched or watcher.summary.errors:
            raise typer.Exit(1)


def challenge(
    inference: Annotated[str, typer.Argument(help="The inference (request) id to check.")],
    key: Annotated[
        Path,
        typer.Option(
            "--key",
            envvar="VERIML_WATCH_KEY",
            help="Sign the dispute with this private key (Ed25519 or EC).",
        ),
    ],
    node: Annotated[
        str | None,
        typer.Option("--node", help="The node to challenge (default: the first agreeing one)."),
    ] = None,
    coordinator: CoordinatorOpt = None,
    log_vkey: LogVkeyOpt = None,
    cache: CacheOpt = None,
    json_out: JsonOpt = False,
    show_progress: ProgressOpt = False,
) -> None:
    """Re-execute one inference locally; if a node's answer differs, dispute it."""
    from veriml.client import Client, Watcher

    signing = load_request_key(key)
    with (
        Client(coordinator, log_vkey=log_vkey, key=signing) as client,
        progress_bar("pulling model", forced=show_progress) as progress,
        Watcher(client, sample=1.0, cache_dir=cache, pull_progress=progress) as watcher,
    ):
        # The answer is verified (receipts, log inclusion, verdict) before it is re-executed.
        checked = watcher.check_answer(client.inference(inference), node=node)
    if checked.result == "error":
        raise fail(f"cannot check inference {inference}: {checked.detail}", code=1)
    _emit(checked, json_out)
    if checked.result != "match":
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    root.command("watch")(watch)
    root.command("challenge")(challenge)
