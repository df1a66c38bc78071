"""``veriml operator``: bind nodes to an operator account (docs/network.md, "Operators").

An operator is an account (a key) that stakes; each of its nodes carries the operator's signed
binding in its registration. ``veriml operator bind`` signs one, so the operator key never
has to live on the node's machine::

    veriml key new --out operator.key                       # the operator account
    veriml operator bind --key operator.key --node node.key.pub --out node-binding.json
    veriml node serve --operator-binding node-binding.json ...
    veriml ledger stake 1000 --key operator.key             # the operator's stake
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from veriml.cli._common import JsonOpt, console, print_json
from veriml.cli.key import read_passphrase

app = typer.Typer(help="Bind nodes to an operator account.", no_args_is_help=True)


@app.command("bind")
def bind(
    key: Annotated[
        Path, typer.Option("--key", envvar="VERIML_OPERATOR_KEY", help="The operator's key.")
    ],
    node: Annotated[
        Path,
        typer.Option(
            "--node", help="The node's public key (node.key.pub), or the node's private key."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the binding (JSON).")],
    passphrase_env: Annotated[
        str | None,
        typer.Option("--passphrase-env", help="The operator key's passphrase variable."),
    ] = "VERIML_OPERATOR_PASSPHRASE",  # noqa: S107 - a variable's name, not a passphrase
    json_out: JsonOpt = False,
) -> None:
    """Sign the operator's binding of one node (a DSSE envelope) and write it to OUT."""
    from veriml.core.errors import KeyFileError
    from veriml.core.keys import load_private_key, load_public_key
    from veriml.protocol.accounts import OperatorBinding

    operator = load_private_key(key, passphrase=read_passphrase(passphrase_env, optional=True))
    try:
        node_key = load_public_key(node, kind="ed25519")
    except KeyFileError:
        node_key = load_private_key(node, kind="ed25519").public
    envelope = OperatorBinding.of(operator, node_key.key_id).sign(operator)
    out.write_bytes(envelope.to_bytes() + b"\n")
    info = {"operator": operator.key_id, "node": node_key.key_id, "binding": str(out)}
    if json_out:
        print_json(info)
    else:
        console.print(f"wrote {out}: operator {operator.key_id} binds node {node_key.key_id}")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="operator")
