"""``veriml up``: a coordinator, N nodes and a witness on this machine, in the foreground,
supervised.

It writes ``HOME/network.json`` (``{"url", "log_vkey", "nodes": [{"id", "url", "pid"}],
"witnesses": [vkey], "witness_quorum": 1}``) once every node is registered, so ``veriml
publish``, ``veriml infer`` and the SDK find the network, pin its log key and require its
witness's cosignature without further configuration. ``--witnesses N`` starts N witnesses
(all must cosign each checkpoint); ``--witnesses 0`` none.

Ports: the coordinator listens on ``--port`` (exit 2 if it is taken); the nodes and
witnesses on the next free ports above it, skipping any port something holds. ``--port 0``
picks free ports for all of them.

Supervision (``LocalNetwork.supervise``): a child that crashes (exits non-zero or by a signal)
is reported and, under ``--restart on-failure[:N]`` (the default, N = 5), started again after an
exponential backoff with jitter (1 s doubling to 30 s) while the others keep serving; its new
pid goes into ``network.json`` and a restarted node registers again with the coordinator.
After N crashes in a row, each within 30 s of its start, the child is given up. ``--restart
no`` restarts nothing. A child that exits with code 0 was stopped on purpose and stays
stopped. ``veriml up`` exits 1 when the network is down for good: the coordinator or a
witness given up (nothing would verify), or every node; one node given up while others serve
is reported and the network goes on.

Ctrl-C or SIGTERM stops every child (nodes, then the coordinator, then the witnesses): SIGTERM,
then SIGKILL for a child still running ``--grace`` seconds later (a second Ctrl-C kills at
once); ``network.json`` is removed and the exit code is 0.

``--byzantine INDEX:MODE`` (repeatable; INDEX 0-based in ``network.json``'s ``nodes``) starts
that node cheating on purpose, for tests and demos (docs/verification.md, "Byzantine
harness"); a bad INDEX or MODE is a usage error (exit 2).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from veriml.cli._common import console, err_console, home_or_default

if TYPE_CHECKING:
    from veriml.client import LocalNetwork

__all__ = ["register"]


def parse_byzantine(specs: list[str], nodes: int) -> dict[int, str]:
    """``INDEX:MODE`` options as ``{index: mode}``; :class:`typer.BadParameter` (exit 2) for a
    malformed spec, an index outside ``0..nodes-1``, an index given twice or an unknown mode."""
    from veriml.protocol.byzantine import BYZANTINE_MODES

    chosen: dict[int, str] = {}
    for spec in specs:
        index_text, sep, mode = spec.partition(":")
        hint = "'--byzantine'"
        if not sep or not (index_text.isascii() and index_text.isdigit()):
            raise typer.BadParameter(f"{spec!r} is not INDEX:MODE", param_hint=hint)
        index = int(index_text)
        if index >= nodes:
            raise typer.BadParameter(
                f"node index {index} is out of range (0-{nodes - 1})", param_hint=hint
            )
        if mode not in BYZANTINE_MODES:
            raise typer.BadParameter(
                f"{mode!r} is not one of {', '.join(BYZANTINE_MODES)}", param_hint=hint
            )
        if index in chosen:
            raise typer.BadParameter(f"node {index} is given two modes", param_hint=hint)
        chosen[index] = mode
    return chosen


DEFAULT_MAX_FAILURES = 5


def parse_restart(spec: str) -> tuple[bool, int]:
    """``on-failure[:N]`` or ``no`` as ``(restart, max_failures)``; :class:`typer.BadParameter`
    (exit 2) otherwise."""
    mode, sep, count = spec.partition(":")
    hint = "'--restart'"
    if mode == "no" and not sep:
        return False, 1
    if mode != "on-failure":
        raise typer.BadParameter(f"{spec!r} is not on-failure[:N] or no", param_hint=hint)
    if not sep:
        return True, DEFAULT_MAX_FAILURES
    if not (count.isascii() and count.isdigit()) or not 1 <= int(count) <= 1000:
        raise typer.BadParameter(f"{count!r} is not a count of 1-1000", param_hint=hint)
    return True, int(count)


def up(
    nodes: Annotated[
        int, typer.Option("--nodes", "-n", min=1, max=16, envvar="VERIML_NODES", help="Nodes.")
    ] = 3,
    port: Annotated[
        int,
        typer.Option(
            envvar="VERIML_PORT",
            help="Coordinator port; nodes and witnesses take the free ports above it "
            "(0: free ports for all).",
        ),
    ] = 8700,
    home: Annotated[
        Path | None,
        typer.Option(
            envvar="VERIML_HOME",
            help="Keys, database, blobs and network.json (default: veriml config get home).",
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(envvar="VERIML_DB", help="Coordinator database URL (default: SQLite)."),
    ] = None,
    byzantine: Annotated[
        list[str] | None,
        typer.Option(
            "--byzantine",
            metavar="INDEX:MODE",
            help="TESTS AND DEMOS ONLY: start node INDEX (0-based, network.json order) "
            "cheating in MODE (wrong-output, lazy, substitute, fp16, replay, impersonate, "
            "collude). Repeatable.",
        ),
    ] = None,
    stake: Annotated[
        int,
        typer.Option(min=0, help="Deposit and stake this amount for every node once registered."),
    ] = 1000,
    min_stake: Annotated[
        int,
        typer.Option(min=0, help="Stake a node needs to receive jobs (the coordinator's rule)."),
    ] = 100,
    allow_unsigned_publish: Annotated[
        bool,
        typer.Option(
            "--allow-unsigned-publish",
            envvar="VERIML_ALLOW_UNSIGNED_PUBLISH",
            help="UNSAFE outside development: the coordinator registers model folders that no "
            "publisher signed, as unsigned models (marked, reachable by digest only).",
        ),
    ] = False,
    witnesses: Annotated[
        int,
        typer.Option(
            "--witnesses",
            min=0,
            max=8,
            envvar="VERIML_UP_WITNESSES",
            help="Witnesses that cosign every checkpoint (clients of network.json require "
            "them all); 0 runs without one.",
        ),
    ] = 1,
    restart: Annotated[
        str,
        typer.Option(
            "--restart",
            metavar="on-failure[:N]|no",
            envvar="VERIML_UP_RESTART",
            help="Restart a child that crashes, with backoff; give it up after N crashes in "
            "a row (default 5). 'no' restarts nothing.",
        ),
    ] = "on-failure",
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0,
            max=3600,
            metavar="SECONDS",
            envvar="VERIML_UP_GRACE",
            help="On Ctrl-C/SIGTERM, seconds a child gets to stop before SIGKILL.",
        ),
    ] = 10.0,
) -> None:
    """Start a local network (coordinator + nodes + witness) and keep it running until Ctrl-C:
    a child that crashes is restarted."""
    cheats = parse_byzantine(byzantine or [], nodes)
    restarts, max_failures = parse_restart(restart)
    from veriml.client import LocalNetwork  # imported here: CLI start-up stays light
    from veriml.core.errors import NodeUnavailableError

    network = LocalNetwork(
        home_or_default(home),
        nodes=nodes,
        port=port,
        db=db,
        byzantine=cheats,
        stake=stake,
        min_stake=min_stake,
        env={"VERIML_ALLOW_UNSIGNED_PUBLISH": "1"} if allow_unsigned_publish else None,
        witnesses=witnesses,
    )
    stop, hurry = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():  # a second Ctrl-C: no more grace
            hurry.set()
        stop.set()
        network.cancel.set()  # a start under way gives up

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        try:
            network.start()
        except NodeUnavailableError:
            if not stop.is_set():
                raise
            return  # stopped while starting: the finally below stops what did start
        _print_network(network, cheats, allow_unsigned_publish)
        code = network.supervise(stop, _report, restart=restarts, max_failures=max_failures)
        console.print("stopping", markup=False)
    finally:
        for child in network.stop(grace=grace, hurry=hurry):
            err_console.print(
                f"warning: {child.name} did not stop within {grace:g} s: killed", markup=False
            )
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code:
        raise typer.Exit(code)


def _report(line: str, error: bool) -> None:
    if error:
        err_console.print(f"error: {line}", markup=False)
    else:
        console.print(line, markup=False)


def _print_network(network: LocalNetwork, cheats: dict[int, str], unsigned: bool) -> None:
    console.print(f"coordinator  {network.url}", markup=False)
    for index, node in enumerate(network.nodes):
        mode = f"  BYZANTINE {cheats[index]}" if index in cheats else ""
        console.print(f"{node.name:<12} {node.url}  {node.node_id}{mode}", markup=False)
    console.print(f"log key      {network.log_vkey}", markup=False)
    for child, vkey in zip(network.witnesses, network.witness_vkeys, strict=True):
        console.print(f"{child.name:<12} {child.url}  {vkey}", markup=False)
    if not network.witnesses:
        err_console.print(
            "warning: no witness: checkpoints are published without cosignatures", markup=False
        )
    if unsigned:
        err_console.print(
            "warning: unsigned publishing is on (models marked unsigned, by digest only)",
            markup=False,
        )
    console.print(f"wrote {network.home / 'network.json'}; Ctrl-C to stop", markup=False)


def register(root: typer.Typer) -> None:
    root.command("up")(up)
