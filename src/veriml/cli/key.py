"""``veriml key``: create and inspect signing keys."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from veriml.cli._common import JsonOpt, console, print_json

if TYPE_CHECKING:
    from veriml.core.keys import KeyKind

app = typer.Typer(help="Create and inspect keys.", no_args_is_help=True)


def read_passphrase(env: str | None, *, optional: bool = False) -> bytes | None:
    """The passphrase from the named environment variable, never from argv (argv leaks).

    A variable that is named but unset is a usage error, unless ``optional``.
    """
    if not env:
        return None
    value = os.environ.get(env)
    if value is None:
        if optional:
            return None
        raise typer.BadParameter(f"environment variable {env} is not set")
    return value.encode()


@app.command("new")
def new(
    out: Annotated[Path, typer.Option("--out", "-o", help="Private key file; FILE.pub too.")],
    key_type: Annotated[
        str, typer.Option("--type", "-t", help="ed25519 (nodes, logs) or ec (publishers).")
    ] = "ed25519",
    curve: Annotated[str, typer.Option(help="EC curve: P-256 or P-384.")] = "P-256",
    passphrase_env: Annotated[
        str | None,
        typer.Option(
            "--passphrase-env", help="Encrypt with the passphrase in this environment variable."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a new private key (mode 0600) to FILE and its public key to FILE.pub."""
    from veriml.core.keys import generate_key

    if key_type not in ("ed25519", "ec"):
        raise typer.BadParameter("must be ed25519 or ec", param_hint="--type")
    kind: KeyKind = "ed25519" if key_type == "ed25519" else "ec"
    key = generate_key(kind, curve=curve)
    key.save(out, passphrase=read_passphrase(passphrase_env), overwrite=force)
    info = {"type": kind, "key_id": key.key_id, "private": str(out), "public": f"{out}.pub"}
    if json_out:
        print_json(info)
    else:
        console.print(f"wrote {out} (private, 0600) and {out}.pub")
        console.print(f"key id {key.key_id}")


@app.command("id")
def key_id(
    pubkey: Annotated[Path, typer.Argument(help="A PEM public key file.")],
    json_out: JsonOpt = False,
) -> None:
    """Print the key id (sha256 of the DER SubjectPublicKeyInfo) of a public key."""
    from veriml.core.keys import load_public_key

    key = load_public_key(pubkey)
    if json_out:
        print_json({"type": key.kind, "key_id": key.key_id})
    else:
        console.print(key.key_id)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="key")
