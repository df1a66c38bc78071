"""``veriml log prove | verify-proof | audit``: the client side of the log, added to the
``veriml log`` group by :func:`register_log_commands` (the group itself lives in ``cli/log.py``).

    veriml log prove http://127.0.0.1:8080 42 --out entry42.tlog-proof
    veriml log verify-proof entry42.tlog-proof --vkey LOG_VKEY --witness W_VKEY --quorum 1
    veriml log audit http://127.0.0.1:8080 --vkey LOG_VKEY --state log.audit.json
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from veriml.cli._common import JsonOpt, console, err_console, print_json
from veriml.cli.witness import read_vkey
from veriml.core.errors import FormatError
from veriml.tlog.cosignature import CosignatureVerifier
from veriml.tlog.note import NoteVerifier

__all__ = ["register_log_commands"]

MAX_PROOF_FILE = 1 << 20
MAX_ENTRY_FILE = 1 << 16

VkeyOpt = Annotated[
    str,
    typer.Option("--vkey", envvar="VERIML_LOG_VKEY", help="The log's verifier key (or a file)."),
]
WitnessOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--witness",
        envvar="VERIML_LOG_WITNESSES",
        help="A trusted witness's cosignature verifier key (or a file); repeat for more.",
    ),
]
QuorumOpt = Annotated[
    int,
    typer.Option(
        "--quorum", envvar="VERIML_LOG_QUORUM", min=0, help="Witness cosignatures required."
    ),
]


def _log_verifier(vkey: str) -> NoteVerifier:
    return NoteVerifier.from_vkey(read_vkey(vkey))


def _witnesses(values: list[str] | None) -> list[CosignatureVerifier]:
    return [CosignatureVerifier.from_vkey(read_vkey(v)) for v in values or []]


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise FormatError(f"cannot read the {what}", path=str(path), reason=exc.strerror) from exc
    if len(data) > limit:
        raise FormatError(f"the {what} is too large", path=str(path), limit=limit)
    return data


def prove(
    url: Annotated[str, typer.Argument(help="Log URL: http(s):// or any fsspec URL or path.")],
    index: Annotated[int, typer.Argument(min=0, help="Entry index.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the .tlog-proof.")],
    vkey: Annotated[
        str | None,
        typer.Option(
            "--vkey",
            envvar="VERIML_LOG_VKEY",
            help="Check the checkpoint signature with this log key before writing the proof.",
        ),
    ] = None,
    witnesses: WitnessOpt = None,
    quorum: QuorumOpt = 0,
    json_out: JsonOpt = False,
) -> None:
    """Write a c2sp.org/tlog-proof for entry INDEX, computed from the log's tiles."""
    from veriml.tlog.client import LogClient

    if (witnesses or quorum) and not vkey:
        raise typer.BadParameter("checking witnesses needs the log's --vkey", param_hint="--vkey")
    verifier = _log_verifier(vkey) if vkey else None
    with LogClient(url, verifier, witnesses=_witnesses(witnesses), quorum=quorum) as client:
        proof = client.prove(index)
    data = proof.to_bytes()
    out.write_bytes(data)
    info = {"index": index, "out": str(out), "bytes": len(data)}
    if json_out:
        print_json(info)
    else:
        console.print(f"wrote {out}: entry {index}, {len(data)} bytes")


def verify_proof(
    proof_file: Annotated[Path, typer.Argument(help="A .tlog-proof file.")],
    vkey: VkeyOpt,
    witnesses: WitnessOpt = None,
    quorum: QuorumOpt = 0,
    entry: Annotated[
        Path | None,
        typer.Option("--entry", help="The logged entry; its leaf hash must be the one proven."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Check a tlog-proof offline against the log key and a witness quorum (exit 1 if bad)."""
    from veriml.tlog.proof import verify_tlog_proof

    data = _read_bounded(proof_file, MAX_PROOF_FILE, "proof file")
    entry_bytes = _read_bounded(entry, MAX_ENTRY_FILE, "entry file") if entry else None
    index, checkpoint = verify_tlog_proof(
        data,
        log=_log_verifier(vkey),
        witnesses=_witnesses(witnesses),
        quorum=quorum,
        entry=entry_bytes,
    )
    info = {
        "verified": True,
        "index": index,
        "origin": checkpoint.origin,
        "size": checkpoint.size,
        "root_hash": base64.b64encode(checkpoint.root_hash).decode(),
        "entry_from": "--entry" if entry_bytes is not None else "proof extra data",
        "quorum": quorum,
    }
    if json_out:
        print_json(info)
    else:
        source = "given with --entry" if entry_bytes is not None else "carried in the proof"
        console.print(
            f"OK: entry {index} ({source}) is in {checkpoint.origin} at size {checkpoint.size}"
            + (f", cosigned by ≥ {quorum} witnesses" if quorum else "")
        )


def audit_command(
    url: Annotated[str, typer.Argument(help="Log URL: http(s):// or any fsspec URL or path.")],
    vkey: VkeyOpt,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            envvar="VERIML_LOG_AUDIT_STATE",
            help="Remember the audited checkpoint here; prove consistency with it next time.",
        ),
    ] = None,
    witnesses: WitnessOpt = None,
    quorum: QuorumOpt = 0,
    json_out: JsonOpt = False,
) -> None:
    """Replay the log: recompute every tile from the entries; check signature and consistency.

    Rollback or split view against the checkpoint kept in --state exits 1.
    """
    from veriml.tlog.audit import audit

    with Progress(
        TextColumn("[bold]audit"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("entries"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=json_out,
    ) as bar:
        task = bar.add_task("audit", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = audit(
            url,
            _log_verifier(vkey),
            state_path=state,
            witnesses=_witnesses(witnesses),
            quorum=quorum,
            progress=progress,
        )
    info = {
        "ok": True,
        "origin": report.origin,
        "size": report.size,
        "root_hash": base64.b64encode(report.root_hash).decode(),
        "previous_size": report.previous_size,
        "entries": report.entries,
        "tiles": report.tiles,
        "witnesses": list(report.witnesses),
        "seconds": round(report.seconds, 3),
        "entries_per_second": round(report.entries_per_second),
    }
    if json_out:
        print_json(info)
        return
    console.print(
        f"OK: {report.origin} size {report.size}: {report.entries} entries and "
        f"{report.tiles} tiles recomputed and match the signed root "
        f"({report.seconds:.2f} s, {report.entries_per_second:,.0f} entries/s)"
    )
    if report.previous_size is not None:
        console.print(f"consistent with the previously audited size {report.previous_size}")
    if state is not None:
        console.print(f"state saved to {state}")


def register_log_commands(log_app: typer.Typer) -> None:
    """Add ``prove``, ``verify-proof`` and ``audit`` to the ``veriml log`` group."""
    log_app.command("prove")(prove)
    log_app.command("verify-proof")(verify_proof)
    log_app.command("audit")(audit_command)
