"""Which challenges a coordinator opens (docs/verification.md, "Opening a dispute").

A dispute costs the defendant work (a retrace, reveals) and the coordinator a log entry, so
every check here runs **before** anything is asked, locked or logged; a refused challenge
leaves no trace. In the order the service applies them:

1. the answer's **challenge window** is open (:func:`challenge_closes`; closed: 410 Gone):
   the verdict's ``final_after`` when it has one, else the time the coordinator recorded the
   answer plus the rules' ``challenge_window``;
2. the challenger **signs in and bonds**: the body carries ``authorization``, the
   challenger's own signed ``challenge`` ledger request for this inference, defendant node and
   the rules' bond, 0 included (the ledger admits no account into a dispute it did not sign
   into; :func:`bond_authorization`; missing, stale or for anything else: 402
   :class:`~veriml.core.errors.PaymentRequiredError`; not signed by the request's signer: 403);
3. the **claim** (the challenged receipt and the outputs claimed instead) was never disputed,
   in the ledger or in a dispute being opened now (409 :class:`~veriml.core.errors.ConflictError`),
   and the challenger's balance covers the bond (402); the provisional ``challenge`` entry must
   pass the ledger fold's own check (:func:`check_challenge`);
4. the defendant has fewer than ``max_open`` disputes open (:class:`TooManyDisputesError`: 429 with
   ``Retry-After``), so griefers cannot queue unbounded work against one node.

The parsers of a challenge body (:func:`digest_map`, :func:`commitment_of`,
:func:`receipt_of`) and of a challenger's tensors (:func:`tensors_from_json`) live here too.
Pure, apart from the state the caller passes in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import (
    Check,
    ConflictError,
    Error,
    FormatError,
    NotFoundError,
    PaymentRequiredError,
    SignatureError,
    VerificationError,
)
from veriml.core.receipt import TraceCommitment
from veriml.core.tensors import tensor_from_json
from veriml.core.timestamps import format_time, parse_time
from veriml.ledger.entries import ChallengeEntry
from veriml.ledger.state import LedgerError, LedgerState
from veriml.protocol.accounts import LedgerRequest

__all__ = [
    "AUTHORIZATION_SKEW",
    "TooManyDisputesError",
    "WindowClosedError",
    "bond_authorization",
    "challenge_closes",
    "check_challenge",
    "check_window",
    "commitment_of",
    "digest_map",
    "receipt_of",
    "tensors_from_json",
]

Array = npt.NDArray[Any]

AUTHORIZATION_SKEW = dt.timedelta(minutes=5)
"""How far a bond authorization's ``issued_at`` may be from now (the fold allows 10 minutes
between it and the ``challenge`` entry, which is logged after the defendant's retrace)."""


class WindowClosedError(Error):
    """The answer is final: its challenge window has closed (HTTP 410)."""

    exit_code = 2


class TooManyDisputesError(Error):
    """The defendant already has as many open disputes as the coordinator hosts per node
    (HTTP 429, retry later)."""

    exit_code = 2


def challenge_closes(
    answer: Mapping[str, Any], *, answered_at: str | None, window: float
) -> dt.datetime | None:
    """When the challenge window of the stored ``answer`` closes: its verdict's
    ``final_after`` when present (``optimistic:W``, and every policy once the inference
    services set it), else ``answered_at`` (when the coordinator recorded the answer) plus
    ``window`` seconds (the rules' ``challenge_window``). None when neither is known."""
    verdict = answer.get("verdict")
    final_after = verdict.get("final_after") if isinstance(verdict, Mapping) else None
    if isinstance(final_after, str):
        return parse_time(final_after, what="final_after")
    if answered_at is None:
        return None
    return parse_time(answered_at, what="answered_at") + dt.timedelta(seconds=window)


def check_window(
    answer: Mapping[str, Any],
    *,
    answered_at: str | None,
    window: float,
    now: dt.datetime | None = None,
) -> None:
    """Raise :class:`WindowClosedError` (evidence: ``final_after``) once the window has closed."""
    closes = challenge_closes(answer, answered_at=answered_at, window=window)
    current = now or dt.datetime.now(dt.UTC)
    if closes is not None and closes <= current:
        raise WindowClosedError(
            "the answer is final: its challenge window has closed",
            inference=str(answer.get("id", ""))[:200],
            final_after=format_time(closes),
        )


def bond_authorization(
    raw: object,
    *,
    signer: str,
    inference: str,
    node: str,
    bond: int,
    now: dt.datetime | None = None,
) -> Envelope:
    """The challenger's signed ``challenge`` request for a bond of ``bond`` (0 too: it is
    how the challenger signs into the dispute).

    :class:`PaymentRequiredError` when it is missing, malformed, stale or for another inference,
    node or amount; :class:`SignatureError` when it does not verify or another key than the
    request's ``signer`` signed it."""
    if raw is None:
        raise PaymentRequiredError(
            "a challenge locks a bond: attach your signed challenge request (authorization)",
            bond=bond,
        )
    if not isinstance(raw, Mapping):
        raise PaymentRequiredError("the authorization is a DSSE envelope (a JSON object)")
    try:
        envelope = Envelope.from_json(raw)
        request = LedgerRequest.open(envelope, op="challenge")
    except SignatureError as exc:
        raise SignatureError(exc.message, check=Check.BOND_AUTHORIZATION, **exc.evidence) from exc
    except (FormatError, VerificationError) as exc:
        raise PaymentRequiredError(
            "the authorization is not a signed challenge request",
            reason=exc.diagnostics()[:200],
        ) from exc
    if request.account != signer:
        raise SignatureError(
            "the bond is authorised by another account than the challenger",
            check=Check.BOND_AUTHORIZATION,
            signer=signer,
            account=request.account,
        )
    wanted = {"inference": inference, "node": node, "amount": bond}
    got = {"inference": request.inference, "node": request.node, "amount": request.amount}
    for name, value in wanted.items():
        if got[name] != value:
            raise PaymentRequiredError(
                f"the authorization is for another {name}",
                expected=str(value)[:200],
                got=str(got[name])[:200],
            )
    issued = parse_time(request.issued_at, what="issued_at")
    if abs((now or dt.datetime.now(dt.UTC)) - issued) > AUTHORIZATION_SKEW:
        raise PaymentRequiredError(
            "the authorization is stale or from the future: sign a fresh one",
            issued_at=request.issued_at,
        )
    return envelope


def check_challenge(
    state: LedgerState, entry: ChallengeEntry, *, opening: Collection[Digest] = ()
) -> None:
    """Step 3: ``entry`` (the challenge as it would be logged) opens a claim no dispute ever
    had, not one being opened now (``opening``), and the fold would take it."""
    claim = entry.claim
    if state.disputed(claim) or claim in opening:
        raise ConflictError(
            "this receipt was already disputed with this claim",
            inference=entry.inference[:200],
            claim=claim,
        )
    balance = state.account(entry.challenger_account).balance
    if balance < entry.bond:
        raise PaymentRequiredError(
            "the challenger's balance does not cover the bond",
            account=entry.challenger_account,
            balance=balance,
            bond=entry.bond,
        )
    try:
        state.check(entry)
    except LedgerError as exc:
        raise ConflictError(f"ledger rule: {exc.message}", **exc.evidence) from exc


# -- parsing a challenge --------------------------------------------------------------------------


def digest_map(raw: object, what: str) -> dict[str, Digest]:
    """``{name: "sha256:..."}``, non-empty (``outputs`` of a challenge)."""
    if not isinstance(raw, Mapping) or not raw:
        raise FormatError(f"{what} must be a non-empty object of name -> digest")
    out: dict[str, Digest] = {}
    for name, value in raw.items():
        if not isinstance(value, str):
            raise FormatError(f"{what} digests must be strings", name=str(name)[:200])
        out[str(name)] = Digest.from_text(value)
    return out


def commitment_of(raw: object) -> TraceCommitment:
    """A challenger's trace commitment ``{"root": digest, "size": n}``."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("root"), str):
        raise FormatError('trace must be {"root": digest, "size": n}')
    size = raw.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise FormatError("trace size must be a positive integer", got=str(size)[:40])
    return TraceCommitment(Digest.from_text(raw["root"]), size)


def receipt_of(answer: Mapping[str, Any], node_id: str) -> Envelope:
    """The receipt of node ``node_id`` in a stored answer (:class:`NotFoundError` if none)."""
    nodes = answer.get("nodes") or []
    receipts = answer.get("receipts") or []
    for node, receipt in zip(nodes, receipts, strict=False):
        if isinstance(node, Mapping) and node.get("id") == node_id:
            return Envelope.from_json(receipt)
    raise NotFoundError(
        "the inference has no receipt of this node", node=node_id[:200], id=answer.get("id")
    )


def tensors_from_json(raw: object, *, max_bytes: int) -> dict[str, Array]:
    """``{name: tensor JSON}`` of a ``/tensors`` submission."""
    if not isinstance(raw, Mapping) or not raw:
        raise FormatError("tensors must be a non-empty object of name -> tensor JSON")
    return {
        str(name): np.asarray(tensor_from_json(value, max_bytes=max_bytes))
        for name, value in raw.items()
    }
