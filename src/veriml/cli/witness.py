"""``veriml witness``: run a C2SP tlog-witness that cosigns the checkpoints of trusted logs.

veriml witness new --name witness.example/w1 --key-out w1.key   # prints the vkey
veriml witness serve --key w1.key --log "example.com/log+1234abcd+AQ..." --port 8081
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from veriml.cli._common import JsonOpt, console, err_console, home_or_default, print_json

__all__ = ["app", "read_vkey", "register"]

app = typer.Typer(help="Run a witness that cosigns log checkpoints.", no_args_is_help=True)


def read_vkey(value: str) -> str:
    """A verifier key given inline, or the path of a file holding one."""
    path = Path(value)
    if "+" not in value and path.is_file():
        data = path.read_bytes()[:4096]
        return data.decode("utf-8", "replace").strip()
    return value.strip()


def _vkey_file(key: Path) -> Path:
    return key.with_name(key.name + ".vkey")


@app.command("new")
def new(
    name: Annotated[
        str,
        typer.Option(
            "--name", envvar="VERIML_WITNESS_NAME", help="Witness name (a schema-less URL)."
        ),
    ],
    key_out: Annotated[
        Path,
        typer.Option("--key-out", help="Private key file (0600); FILE.pub and FILE.vkey too."),
    ],
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create a witness key and print its cosignature/v1 verifier key (for log operators)."""
    from veriml.core.errors import KeyFileError
    from veriml.core.keys import generate_key
    from veriml.tlog.cosignature import CosignatureSigner

    key = generate_key("ed25519")
    signer = CosignatureSigner(name, key)
    vkey_file = _vkey_file(key_out)
    if vkey_file.exists() and not force:  # checked first, so a refusal writes nothing
        raise KeyFileError("refusing to overwrite an existing file", path=str(vkey_file))
    key.save(key_out, overwrite=force)
    vkey_file.write_text(signer.vkey + "\n")
    if json_out:
        print_json({"name": name, "vkey": signer.vkey, "key": str(key_out)})
    else:
        console.print(signer.vkey)


@app.command("serve")
def serve(
    key: Annotated[
        Path, typer.Option("--key", envvar="VERIML_WITNESS_KEY", help="Witness private key.")
    ],
    logs: Annotated[
        list[str],
        typer.Option(
            "--log",
            envvar="VERIML_WITNESS_LOGS",
            help="Trusted log verifier key (or a file holding one); repeat for more logs.",
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            envvar="VERIML_WITNESS_NAME",
            help="Witness name; defaults to the name in KEY.vkey written by 'witness new'.",
        ),
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            envvar="VERIML_WITNESS_STATE",
            help="SQLite file or SQLAlchemy URL for the latest cosigned checkpoints.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(envvar="VERIML_WITNESS_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="VERIML_WITNESS_PORT")] = 8081,
) -> None:
    """Serve POST /add-checkpoint (c2sp.org/tlog-witness) for the given logs."""
    import uvicorn

    from veriml.core.keys import load_private_key
    from veriml.tlog.cosignature import CosignatureSigner
    from veriml.tlog.note import NoteVerifier
    from veriml.tlog.witness import create_witness_app

    signer = CosignatureSigner(_witness_name(key, name), load_private_key(key, kind="ed25519"))
    verifiers = [NoteVerifier.from_vkey(read_vkey(v)) for v in logs]
    if not verifiers:
        raise typer.BadParameter("give at least one --log", param_hint="--log")
    where = state or str(home_or_default(None) / "witness.db")
    witness_app = create_witness_app(where, signer, verifiers)
    err_console.print(f"witness {signer.vkey}")
    err_console.print(f"logs: {', '.join(v.name for v in verifiers)}; state: {where}")
    uvicorn.run(witness_app, host=host, port=port, log_level="warning")


def _witness_name(key: Path, name: str | None) -> str:
    if name:
        return name
    vkey_file = _vkey_file(key)
    if not vkey_file.is_file():
        raise typer.BadParameter(
            f"no --name given and {vkey_file} does not exist", param_hint="--name"
        )
    return read_vkey(str(vkey_file)).split("+", 1)[0]


def register(root: typer.Typer) -> None:
    """Add ``veriml witness`` to the root app."""
    root.add_typer(app, name="witness")
