"""``veriml up``: a coordinator and N nodes on this machine, in the foreground.

It writes ``HOME/network.json`` (``{"url", "log_vkey", "nodes": [{"id", "url", "pid"}]}``)
once every node is registered, so ``veriml publish``, ``veriml infer`` and the SDK find the
network and pin its log key without further configuration. Ctrl-C or SIGTERM stops every
child and removes the file; a child that dies is reported and the rest are stopped.
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
) -> None:
    """Start a local network (coordinator + nodes) and keep it running until Ctrl-C."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    from veriml.client import LocalNetwork  # imported here: CLI start-up stays light

    network = LocalNetwork(home, nodes=nodes, port=port, db=db)
    try:
        with network:
            console.print(f"coordinator  {network.url}", markup=False)
            for node in network.nodes:
                console.print(f"{node.name:<12} {node.url}  {node.node_id}", markup=False)
            console.print(f"log key      {network.log_vkey}", markup=False)
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
