"""``veriml up``: a coordinator, N nodes and a witness on this machine, in the foreground.

It writes ``HOME/network.json`` (``{"url", "log_vkey", "nodes": [{"id", "url", "pid"}],
"witnesses": [vkey], "witness_quorum": 1}``) once every node is registered, so ``veriml
publish``, ``veriml infer`` and the SDK find the network, pin its log key and require its
witness's cosignature without further configuration. ``--witnesses N`` starts N witnesses
(all must cosign each checkpoint); ``--witnesses 0`` none. Ctrl-C or SIGTERM stops every
child and removes the file; a child that dies is reported and the rest are stopped.

``--byzantine INDEX:MODE`` (repeatable; INDEX 0-based in ``network.json``'s ``nodes``) starts
that node cheating on purpose, for tests and demos (docs/verification.md, "Byzantine
harness"); a bad INDEX or MODE is a usage error (exit 2).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from veriml.cli._common import console, err_console

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


def up(
    nodes: Annotated[
        int, typer.Option("--nodes", "-n", min=1, max=16, envvar="VERIML_NODES", help="Nodes.")
    ] = 3,
    port: Annotated[
        int,
        typer.Option(
            envvar="VERIML_PORT", help="Coordinator port; node i listens on PORT+i (0: free)."
        ),
    ] = 8700,
    home: Annotated[
        Path, typer.Option(envvar="VERIML_HOME", help="Keys, database, blobs and network.json.")
    ] = Path(".veriml"),
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
            "them all); 0 runs without one. Witness j listens on PORT+nodes+j.",
        ),
    ] = 1,
) -> None:
    """Start a local network (coordinator + nodes + witness) and keep it running until Ctrl-C."""
    cheats = parse_byzantine(byzantine or [], nodes)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    from veriml.client import LocalNetwork  # imported here: CLI start-up stays light

    network = LocalNetwork(
        home,
        nodes=nodes,
        port=port,
        db=db,
        byzantine=cheats,
        stake=stake,
        min_stake=min_stake,
        env={"VERIML_ALLOW_UNSIGNED_PUBLISH": "1"} if allow_unsigned_publish else None,
        witnesses=witnesses,
    )
    try:
        with network:
            console.print(f"coordinator  {network.url}", markup=False)
            for index, node in enumerate(network.nodes):
                mode = f"  BYZANTINE {cheats[index]}" if index in cheats else ""
                console.print(f"{node.name:<12} {node.url}  {node.node_id}{mode}", markup=False)
            console.print(f"log key      {network.log_vkey}", markup=False)
            for child, vkey in zip(network.witnesses, network.witness_vkeys, strict=True):
                console.print(f"{child.name:<12} {child.url}  {vkey}", markup=False)
            if not network.witnesses:
                err_console.print(
                    "warning: no witness: checkpoints are published without cosignatures",
                    markup=False,
                )
            if allow_unsigned_publish:
                err_console.print(
                    "warning: unsigned publishing is on (models marked unsigned, by digest only)",
                    markup=False,
                )
            console.print(f"wrote {network.home / 'network.json'}; Ctrl-C to stop", markup=False)
            while not stop.wait(0.5):
                dead = network.dead()
                if dead:
                    for child in dead:
                        code = child.process.returncode if child.process else None
                        err_console.print(
                            f"error: {child.name} exited (code {code}); see {child.log_path}",
                            markup=False,
                        )
                    raise typer.Exit(1)
            console.print("stopping", markup=False)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def register(root: typer.Typer) -> None:
    root.command("up")(up)
