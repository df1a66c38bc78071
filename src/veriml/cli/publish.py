"""``veriml publish`` and ``veriml models``: the hub, through the SDK.

``publish`` signs the folder (OMS, EC key) when its ``model.sig`` is absent or stale and
streams it to the coordinator, which verifies the signature before registering anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from veriml.cli._common import JsonOpt, console, print_json
from veriml.cli.key import read_passphrase

if TYPE_CHECKING:
    from veriml.core.keys import SigningKey

__all__ = ["CoordinatorOpt", "SignKeyOpt", "load_request_key", "register"]

CoordinatorOpt = Annotated[
    str | None,
    typer.Option(
        "--coordinator",
        "-c",
        envvar="VERIML_URL",
        help="Coordinator URL (default: the local network's, from network.json).",
    ),
]


SignKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--sign-key",
        envvar="VERIML_CLIENT_KEY",
        help="Sign the request with this private key (Ed25519 or EC); the coordinator records "
        "its key id (docs/network.md, request signatures).",
    ),
]


def load_request_key(path: Path | None) -> SigningKey | None:
    """The request-signing key, if one is given; its passphrase from VERIML_CLIENT_PASSPHRASE."""
    if path is None:
        return None
    from veriml.core.keys import load_private_key

    return load_private_key(
        path, passphrase=read_passphrase("VERIML_CLIENT_PASSPHRASE", optional=True)
    )


def publish(
    folder: Annotated[Path, typer.Argument(help="Model folder.", show_default=False)],
    key: Annotated[
        Path, typer.Option("--key", "-k", envvar="VERIML_PUBLISHER_KEY", help="EC private key.")
    ],
    coordinator: CoordinatorOpt = None,
    passphrase_env: Annotated[
        str | None,
        typer.Option(
            "--passphrase-env",
            envvar="VERIML_PUBLISHER_PASSPHRASE_ENV",
            help="Environment variable holding the key's passphrase.",
        ),
    ] = None,
    sign_key: SignKeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Sign (if needed) and publish a model folder to the hub."""
    from veriml.client import Client

    with Client(coordinator, verify=False, key=load_request_key(sign_key)) as client:
        model = client.publish(folder, key, passphrase=read_passphrase(passphrase_env))
    if json_out:
        print_json(model)
        return
    name = f"{model.get('name')}@{model.get('version')}"
    console.print(
        f"published {name} {model.get('digest')} (log index {model.get('log_index')})",
        markup=False,
    )


def models(
    coordinator: CoordinatorOpt = None,
    name: Annotated[str | None, typer.Option(help="Only this model name.")] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    publisher: Annotated[str | None, typer.Option(help="Only this publisher key id.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the hub's models."""
    from veriml.client import Client

    with Client(coordinator, verify=False) as client:
        found = client.models(name=name, task=task, publisher=publisher)
    if json_out:
        print_json(found)
        return
    table = Table(show_header=True, header_style="bold")
    for column in ("name", "version", "task", "digest", "publisher", "log"):
        table.add_column(column)
    for m in found:
        pub = m.get("publisher")
        pub_id = pub.get("key_id", "") if isinstance(pub, dict) else m.get("publisher_key_id", "")
        table.add_row(
            str(m.get("name")),
            str(m.get("version")),
            str(m.get("task") or ""),
            str(m.get("digest")),
            str(pub_id)[:19],
            str(m.get("log_index", "")),
        )
    console.print(table)


def register(root: typer.Typer) -> None:
    root.command("publish")(publish)
    root.command("models")(models)
