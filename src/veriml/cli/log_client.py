"""``veriml log prove | verify-proof | audit``: the client side of the log, added to the
``veriml log`` group by :func:`register_log_commands` (the group itself lives in ``cli/log.py``).

    veriml log prove http://127.0.0.1:8080 42 --out entry42.tlog-proof
    veriml log verify-proof entry42.tlog-proof --vkey LOG_VKEY --witness W_VKEY --quorum 1
    veriml log audit http://127.0.0.1:8080 --vkey LOG_VKEY --state log.audit.json
    veriml log audit http://127.0.0.1:8700/log --vkey LOG_VKEY --coordinator http://127.0.0.1:8700

On a veriml log, ``audit`` also folds the ledger over the same pass (docs/verification.md,
"Ledger") and prints the state's digest; with ``--coordinator`` it fetches the coordinator's
state at the audited size and fails unless the two are equal.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from veriml.cli._common import JsonOpt, console, err_console, print_json
from veriml.cli.witness import read_vkey
from veriml.core.errors import Check

if TYPE_CHECKING:
    from veriml.core.digest import Digest
    from veriml.core.dsse import Envelope
    from veriml.ledger.state import LedgerState
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
    from veriml.tlog.note import NoteVerifier

    return NoteVerifier.from_vkey(read_vkey(vkey))


def _witnesses(values: list[str] | None) -> list[CosignatureVerifier]:
    from veriml.tlog.cosignature import CosignatureVerifier

    return [CosignatureVerifier.from_vkey(read_vkey(v)) for v in values or []]


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    from veriml.core.errors import FormatError

    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise FormatError(f"cannot read the {what}", path=str(path), reason=exc.strerror) from exc
    if len(data) > limit:
        raise FormatError(f"the {what} is too large", path=str(path), limit=limit)
    return data


LedgerOpt = Annotated[
    bool | None,
    typer.Option(
        "--ledger/--no-ledger",
        help="Fold the ledger over the log (default: when entry 0 is a veriml entry, or with "
        "--coordinator); every entry must then fold.",
    ),
]
AuditCoordinatorOpt = Annotated[
    str | None,
    typer.Option(
        "--coordinator",
        "-c",
        envvar="VERIML_URL",
        help="Also compare the folded ledger with this coordinator's "
        "GET /v1/ledger/state?size=N (N: the audited size).",
    ),
]


class LedgerFold:
    """The ledger folded entry by entry as the auditor replays the log (an
    :data:`veriml.tlog.audit.EntryCallback`).

    ``required`` (``--ledger`` or ``--coordinator``) folds every entry. Otherwise the log's
    entry 0 decides: a log whose first entry is not a veriml entry is some other log (a
    witness test tree, a Go vector) and has no ledger; once folding started, every entry must
    fold. Either way a failure is a :class:`VerificationError` (``check="ledger"``, exit 1)
    naming the entry, so the audit fails and keeps its state file as it was.
    """

    def __init__(self, *, required: bool) -> None:
        from veriml.ledger.state import LedgerState

        self.required = required
        self.state: LedgerState | None = LedgerState()
        self.skipped: str | None = None
        # Per node of spot:P inferences: [jobs, checked] (docs/verification.md, "Spot checks").
        self.spot: dict[str, list[int]] = {}

    def __call__(self, index: int, data: bytes) -> None:
        from veriml.core.errors import FormatError, VerificationError
        from veriml.ledger.entries import parse_entry

        if self.state is None:
            return
        try:
            entry = parse_entry(data)
        except FormatError as exc:
            if index == 0 and not self.required:
                self.state, self.skipped = None, exc.message
                return
            raise VerificationError(
                "a log entry is not a veriml entry, so the ledger cannot be folded",
                check=Check.LEDGER,
                index=index,
                reason=exc.diagnostics(),
            ) from exc
        self._check_spot(index, entry)
        try:
            self.state.apply(entry, index)
        except FormatError as exc:
            raise VerificationError(
                "the ledger does not fold over the log",
                check=Check.LEDGER,
                index=index,
                reason=exc.diagnostics(),
            ) from exc
        self._count_spot(entry)

    @staticmethod
    def _check_spot(index: int, entry: object) -> None:
        """A ``spot:P`` verdict's decision must follow from the draw secret it reveals, and
        that secret be the one the primary's receipt committed to: the checked fraction this
        audit reports is then the log's, not the coordinator's word. (The fold checks that
        the secret follows from the epoch key once a beacon reveals it.)"""
        from veriml.core.errors import FormatError, VerificationError
        from veriml.ledger.entries import InferenceEntry
        from veriml.verify.policy import Policy, check_spot

        if not isinstance(entry, InferenceEntry) or entry.verdict.spot is None:
            return
        try:
            commitment = _spot_commitment(entry.receipts[0]) if entry.receipts else None
            policy = Policy.parse(entry.policy)
            check_spot(policy, entry.verdict.spot, entry.verdict.draw, commitment)
        except (FormatError, VerificationError) as exc:
            raise VerificationError(
                "a spot check's decision does not follow from the logged draw",
                check=Check.LEDGER,
                index=index,
                reason=exc.diagnostics(),
            ) from exc

    def _count_spot(self, entry: object) -> None:
        from veriml.ledger.entries import InferenceEntry
        from veriml.verify.evidence import receipt_node_id

        if not isinstance(entry, InferenceEntry) or entry.verdict.spot is None:
            return
        node = receipt_node_id(entry.receipts[0]) if entry.receipts else None
        counts = self.spot.setdefault(node or "unknown", [0, 0])
        counts[0] += 1
        counts[1] += int(entry.verdict.spot.checked)


def _spot_commitment(receipt: Envelope) -> Digest | None:
    """The spot commitment a receipt's predicate carries (``spot.commitment``; inference and
    completion receipts spell it alike), or None. Unverified: it is compared, not trusted."""
    from veriml.core.digest import Digest
    from veriml.core.dsse import Statement
    from veriml.core.errors import FormatError

    try:
        spot = Statement.from_bytes(receipt.payload).predicate.get("spot")
        return Digest.from_text(spot["commitment"]) if isinstance(spot, Mapping) else None
    except (FormatError, KeyError, TypeError):
        return None


def _first_difference(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, str]:
    """Where two ledger states first differ: an account if any differs, else a member."""
    mine: Mapping[str, Any] = ours.get("accounts") or {}
    other: Mapping[str, Any] = theirs.get("accounts") or {}
    for account in sorted(set(mine) | set(other)):
        if mine.get(account) != other.get(account):
            a, b = mine.get(account) or {}, other.get(account) or {}
            members = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            return {"account": account, "members": ",".join(members)}
    for member in sorted(set(ours) | set(theirs)):
        if ours.get(member) != theirs.get(member):
            return {"member": member}
    return {}


def compare_ledger(state: LedgerState, coordinator: str, size: int) -> None:
    """Raise unless the coordinator's ledger at ``size`` is the one folded from the log."""
    import json

    from veriml.client import Client
    from veriml.core.errors import VerificationError

    with Client(coordinator, verify=False) as client:
        theirs = client.ledger_state(size)
    # Both sides as JSON values: the coordinator's arrived as JSON, ours is made comparable.
    ours = json.loads(json.dumps(state.to_json()))
    if ours != theirs:
        raise VerificationError(
            "the coordinator's ledger differs from the one folded from the log",
            check=Check.LEDGER,
            size=size,
            **_first_difference(ours, theirs),
        )


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
    ledger: LedgerOpt = None,
    coordinator: AuditCoordinatorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Replay the log: recompute every tile from the entries; check signature and consistency;
    fold the ledger (and compare it with the coordinator's).

    Rollback or split view against the checkpoint kept in --state, an entry the ledger cannot
    fold, or a coordinator ledger that differs from the fold exits 1.
    """
    from veriml.tlog.audit import audit

    if ledger is False and coordinator:
        raise typer.BadParameter(
            "comparing with the coordinator needs the ledger fold", param_hint="--no-ledger"
        )
    fold = LedgerFold(required=bool(ledger) or bool(coordinator)) if ledger is not False else None

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
            on_entry=fold,
        )
    folded = fold.state if fold is not None else None
    spot = sorted(fold.spot.items()) if fold is not None else []
    if folded is not None and coordinator:
        compare_ledger(folded, coordinator, report.size)
    info: dict[str, Any] = {
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
        "ledger": None,
    }
    if folded is not None:
        info["ledger"] = {
            "digest": folded.digest().to_text(),
            "accounts": len(folded.to_json().get("accounts") or {}),
            "open_disputes": len(folded.open_disputes),
            "coordinator": "matches" if coordinator else None,
            "spot": {node: {"jobs": j, "checked": c} for node, (j, c) in spot},
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
    if folded is not None:
        ledger_info = info["ledger"]
        console.print(
            f"ledger folded over {report.size} entries: {ledger_info['accounts']} account(s), "
            f"{ledger_info['open_disputes']} open dispute(s), state {ledger_info['digest']}"
            + (f"; equal to {coordinator}'s" if coordinator else ""),
            markup=False,
        )
        for node, (jobs, checked) in spot:
            console.print(
                f"spot checks of node {node}: {checked} of {jobs} job(s) ({checked / jobs:.1%})",
                markup=False,
            )
    elif fold is not None and fold.skipped is not None:
        console.print(f"no ledger: entry 0 is not a veriml entry ({fold.skipped})", markup=False)
    if state is not None:
        console.print(f"state saved to {state}")


def register_log_commands(log_app: typer.Typer) -> None:
    """Add ``prove``, ``verify-proof`` and ``audit`` to the ``veriml log`` group."""
    log_app.command("prove")(prove)
    log_app.command("verify-proof")(verify_proof)
    log_app.command("audit")(audit_command)
