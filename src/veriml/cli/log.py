"""``veriml log``: create, serve and append to a transparency log.

``log new`` writes the log's Ed25519 key (``FILE``, mode 0600; ``FILE.pub`` PEM) and a sidecar
``FILE.json`` holding ``{"origin": ..., "vkey": ...}``, so ``log serve --key FILE`` needs no
``--origin``. ``prove``, ``verify-proof`` and ``audit`` come from
:mod:`veriml.cli.log_client`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from veriml.cli._common import JsonOpt, console, print_json
from veriml.cli.key import read_passphrase
from veriml.cli.log_client import register_log_commands

if TYPE_CHECKING:
    import httpx

    from veriml.tlog.note import NoteSigner

app = typer.Typer(help="Run, use and audit a transparency log.", no_args_is_help=True)

_MAX_CHECKPOINT = 1 << 20


def _sidecar(key: Path) -> Path:
    return key.with_name(key.name + ".json")


def load_log_signer(key: Path, origin: str | None, passphrase_env: str | None = None) -> NoteSigner:
    """The note signer for a log key file; the origin comes from ``origin`` or the sidecar."""
    from veriml.core.errors import KeyFileError
    from veriml.core.keys import load_private_key
    from veriml.tlog.note import NoteSigner

    if origin is None:
        try:
            meta = json.loads(_sidecar(key).read_text())
            origin = str(meta["origin"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(
                "no --origin and no readable origin sidecar", path=str(_sidecar(key))
            ) from exc
    signing = load_private_key(key, passphrase=read_passphrase(passphrase_env), kind="ed25519")
    return NoteSigner(origin, signing)


@app.command("new")
def new(
    origin: Annotated[
        str,
        typer.Option(
            "--origin", envvar="VERIML_LOG_ORIGIN", help="Checkpoint origin, e.g. example.com/log"
        ),
    ],
    key_out: Annotated[
        Path, typer.Option("--key-out", envvar="VERIML_LOG_KEY", help="Private key file to write.")
    ],
    passphrase_env: Annotated[
        str | None,
        typer.Option("--passphrase-env", help="Encrypt with the passphrase in this variable."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Create a log key (0600) and print the log's verifier key (name+hash+base64)."""
    from veriml.core.errors import KeyFileError
    from veriml.core.keys import generate_key
    from veriml.tlog.note import NoteSigner

    key = generate_key("ed25519")
    signer = NoteSigner(origin, key)  # checks the origin is a valid key name first
    sidecar = _sidecar(key_out)
    if sidecar.exists() and not force:  # checked first, so a refusal writes nothing
        raise KeyFileError("refusing to overwrite an existing file", path=str(sidecar))
    key.save(key_out, passphrase=read_passphrase(passphrase_env), overwrite=force)
    sidecar.write_text(json.dumps({"origin": origin, "vkey": signer.vkey}, indent=2) + "\n")
    if json_out:
        print_json({"origin": origin, "vkey": signer.vkey, "key": str(key_out)})
    else:
        console.print(signer.vkey)


@app.command("serve")
def serve(
    db: Annotated[
        str,
        typer.Option(
            "--db", envvar="VERIML_LOG_DB", help="sqlite:///file.db or postgresql+psycopg://..."
        ),
    ],
    key: Annotated[Path, typer.Option("--key", envvar="VERIML_LOG_KEY", help="Log key file.")],
    origin: Annotated[
        str | None, typer.Option("--origin", envvar="VERIML_LOG_ORIGIN", help="Default: sidecar.")
    ] = None,
    witness: Annotated[
        list[str] | None,
        typer.Option(
            "--witness", envvar="VERIML_LOG_WITNESSES", help="VKEY=URL of a witness (repeatable)."
        ),
    ] = None,
    quorum: Annotated[
        int, typer.Option(envvar="VERIML_LOG_QUORUM", help="Witnesses needed to publish.")
    ] = 0,
    host: Annotated[
        str, typer.Option(envvar="VERIML_LOG_HOST", help="Bind address.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="VERIML_LOG_PORT", help="TCP port.")] = 8470,
    batch_size: Annotated[int, typer.Option(envvar="VERIML_LOG_BATCH_SIZE")] = 4096,
    batch_interval: Annotated[
        float, typer.Option(envvar="VERIML_LOG_BATCH_INTERVAL", help="Seconds to gather a batch.")
    ] = 0.05,
    dedup: Annotated[
        bool, typer.Option("--dedup", envvar="VERIML_LOG_DEDUP", help="Same entry, same index.")
    ] = False,
    readonly: Annotated[bool, typer.Option("--no-add", help="Do not accept POST /add.")] = False,
    passphrase_env: Annotated[
        str | None, typer.Option("--passphrase-env", help="Key passphrase variable.")
    ] = None,
) -> None:
    """Serve the log (tiles, checkpoint, proofs, POST /add) until interrupted."""
    import uvicorn

    from veriml.core.errors import FormatError
    from veriml.tlog.cosignature import CosignatureVerifier
    from veriml.tlog.log import Log, LogOptions
    from veriml.tlog.server import create_log_app
    from veriml.tlog.witness import WitnessClient

    signer = load_log_signer(key, origin, passphrase_env)
    clients: list[WitnessClient] = []
    for spec in witness or []:
        vkey, sep, url = spec.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise FormatError("--witness must be VKEY=URL", value=spec[:80])
        clients.append(WitnessClient(url, CosignatureVerifier.from_vkey(vkey)))
    options = LogOptions(
        batch_size=batch_size,
        batch_interval=batch_interval,
        dedup=dedup,
        witnesses=tuple(clients),
        quorum=quorum,
    )
    log = Log.open(db, signer, origin=origin or signer.name, options=options)
    try:
        app_ = create_log_app(log, allow_add=not readonly)
        console.print(f"log {log.origin} serving on http://{host}:{port}/ (vkey {log.vkey})")
        uvicorn.run(app_, host=host, port=port, log_level="warning")
    finally:
        log.close()
        for client in clients:
            client.close()


def _http(url: str, method: str, path: str, content: bytes | None = None) -> httpx.Response:
    import httpx

    from veriml.core.errors import FormatError, NodeUnavailableError, StorageError

    target = url.rstrip("/") + "/" + path
    try:
        response = httpx.request(method, target, content=content, timeout=60.0)
    except httpx.HTTPError as exc:
        raise NodeUnavailableError("log unreachable", url=target, reason=str(exc)) from exc
    if response.status_code >= 400:
        try:
            detail = str(response.json().get("detail", ""))
        except ValueError:
            detail = response.text[:200]
        error = StorageError if response.status_code >= 500 else FormatError
        raise error("log refused the request", status=response.status_code, detail=detail)
    return response


@app.command("add")
def add(
    url: Annotated[str, typer.Argument(envvar="VERIML_LOG_URL", help="The log's URL prefix.")],
    files: Annotated[list[Path], typer.Argument(help="Files, one entry each.")],
    json_out: JsonOpt = False,
) -> None:
    """Add each FILE as one entry; print the indexes."""
    from veriml.core.errors import FormatError
    from veriml.tlog.tiles import MAX_ENTRY_SIZE

    results = []
    for file in files:
        size = file.stat().st_size
        if size > MAX_ENTRY_SIZE:
            raise FormatError("entry file is too large", path=str(file), size=size)
        response = _http(url, "POST", "add", file.read_bytes())
        index = int(response.json()["index"])
        results.append({"file": str(file), "index": index})
        if not json_out:
            console.print(f"{index}\t{file}")
    if json_out:
        print_json(results)


@app.command("checkpoint")
def checkpoint(
    url: Annotated[str, typer.Argument(envvar="VERIML_LOG_URL", help="The log's URL prefix.")],
    json_out: JsonOpt = False,
) -> None:
    """Print the log's current signed checkpoint (not verified: see `log audit`)."""
    from veriml.tlog.checkpoint import Checkpoint
    from veriml.tlog.note import Note

    body = _http(url, "GET", "checkpoint").content[:_MAX_CHECKPOINT]
    if json_out:
        note = Note.from_bytes(body)
        parsed = Checkpoint.from_text(note.text)
        print_json(
            {
                "origin": parsed.origin,
                "size": parsed.size,
                "root_hash": parsed.root_hash.hex(),
                "note": body.decode(),
            }
        )
    else:
        typer.echo(body.decode(), nl=False)


@app.command("publish")
def publish(
    target: Annotated[
        str,
        typer.Argument(
            envvar="VERIML_LOG_PUBLISH_URL",
            help="fsspec URL to write to: file:///srv/log, s3://bucket/log, ...",
        ),
    ],
    db: Annotated[
        str, typer.Option("--db", envvar="VERIML_LOG_DB", help="The log's database URL.")
    ],
    json_out: JsonOpt = False,
) -> None:
    """Write the log's checkpoint, tiles and entry bundles (what is new) to TARGET."""
    from veriml.tlog.log import Log
    from veriml.tlog.publish import publish_log

    log = Log.open_readonly(db)
    try:
        report = publish_log(log, target)
    finally:
        log.close()
    if json_out:
        print_json(
            {
                "old_size": report.old_size,
                "size": report.size,
                "files": report.files,
                "bytes": report.bytes,
            }
        )
    else:
        console.print(
            f"published size {report.size} (was {report.old_size}): "
            f"{report.files} files, {report.bytes} bytes"
        )


def register(root: typer.Typer) -> None:
    """Add the ``log`` group (with ``prove``, ``verify-proof`` and ``audit``) to the root app."""
    register_log_commands(app)
    root.add_typer(app, name="log")
