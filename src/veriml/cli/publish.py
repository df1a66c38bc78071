"""``veriml model publish`` and ``veriml model list``: the hub, through the SDK.

(``veriml publish`` and ``veriml models`` are the old spellings, hidden, for one release.)
``publish`` signs the folder (OMS, EC key) when its ``model.sig`` is absent or stale and
streams it to the coordinator, the request signed by the same key; the coordinator verifies
both before registering anything, and the first key to publish in a namespace (``acme`` of
``acme/iris``) owns it (docs/models.md, "Names"). ``models`` marks unsigned models, which a
coordinator lists only if its operator allows unsigned publishing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from veriml.cli._common import (
    JsonOpt,
    ProgressOpt,
    console,
    passphrase_env_option,
    print_json,
    progress_bar,
)
from veriml.cli.key import read_passphrase

if TYPE_CHECKING:
    from veriml.core.keys import SigningKey

__all__ = ["UNSIGNED", "CoordinatorOpt", "SignKeyOpt", "load_request_key", "register"]

UNSIGNED = "UNSIGNED"

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
        str | None, passphrase_env_option("VERIML_PUBLISHER_PASSPHRASE_ENV")
    ] = None,
    json_out: JsonOpt = False,
    show_progress: ProgressOpt = False,
) -> None:
    """Sign (if needed) and publish a model folder to the hub; the request is signed by the
    publisher key too. The key claims the name's namespace if nobody has."""
    from veriml.client import Client

    passphrase = read_passphrase(passphrase_env)
    with (
        Client(coordinator, verify=False) as client,
        progress_bar("uploading", forced=show_progress) as progress,
    ):
        model = client.publish(folder, key, passphrase=passphrase, progress=progress)
    if json_out:
        print_json(model)
        return
    name = f"{model.get('name')}@{model.get('version')}"
    console.print(
        f"published {name} {model.get('digest')} (log index {model.get('log_index')})",
        markup=False,
    )


def models_table(found: list[dict[str, Any]]) -> Table:
    """The hub's models as a table; an unsigned model is marked, never shown as anyone's."""
    table = Table(show_header=True, header_style="bold")
    for column in ("name", "version", "task", "digest", "publisher", "log"):
        table.add_column(column, no_wrap=column == "digest")
    for m in found:
        pub = m.get("publisher")
        # An unsigned model is marked, never shown as if its name were anyone's.
        signer = (
            Text(UNSIGNED, style="bold red")
            if m.get("unsigned") or not isinstance(pub, dict)
            else Text(str(pub.get("key_id", ""))[:19])
        )
        table.add_row(
            Text(str(m.get("name"))),
            Text(str(m.get("version"))),
            Text(str(m.get("task") or "")),
            Text(str(m.get("digest"))),
            signer,
            Text(str(m.get("log_index", ""))),
        )
    return table


def _print_whole(table: Table) -> None:
    """Print ``table`` at its natural width even on a narrower terminal (which then wraps the
    lines): a digest is what a user copies, and the only way to an unsigned model, so it is
    never cut to fit."""
    from rich.console import Console
    from rich.measure import Measurement

    need = Measurement.get(console, console.options.update_width(1 << 16), table).maximum
    wide = console if need <= console.width else Console(width=need, highlight=False)
    wide.print(table)


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
    _print_whole(models_table(found))
    if any(m.get("unsigned") for m in found):
        console.print(
            f"{UNSIGNED}: no publisher signed it; no name reaches it (use its digest)",
            markup=False,
        )


def register(root: typer.Typer, model_app: typer.Typer) -> None:
    """Add ``model publish`` and ``model list``, and the hidden old ``publish`` and ``models``."""
    model_app.command("publish")(publish)
    model_app.command("list")(models)
    root.command("publish", hidden=True)(publish)
    root.command("models", hidden=True)(models)
