"""What an answer proves beyond its receipts: who stood behind it, whose model it was, how its
disputes ended, and how long it can be challenged (pure: no I/O).

Every answer of a veriml network (an inference answer, :mod:`veriml.verify.inference`, and an
LLM answer, :mod:`veriml.verify.completion`) carries, beside its own log entry:

- ``evidence``: the earlier log entries it relies on, each with its RFC 9162 inclusion proof
  at the answer's checkpoint (``[{"index", "entry", "inclusion_proof"}]``): the nodes'
  registrations, the ledger ``state`` entry it was scheduled under, its model's ``model`` and
  ``namespace`` entries, and each of its disputes' ``challenge`` and ``verdict`` entries;
- ``bonds``: ``{"state": index, "proofs": [stake proof]}``, each answering operator's stake in
  that state entry's bond map (:mod:`veriml.ledger.bonds`);
- ``provenance``: ``{"model": index, "namespace": index | null}``;
- ``beacon``: the index of the ``beacon`` entry that began the epoch the verdict's draw is from.

:func:`check_network` checks them, each failure a :class:`VerificationError` naming its
``check``:

- ``evidence``: every cited entry is in the checkpoint's tree;
- ``bonds``: the answering operators are distinct accounts bonded at the cited state, or ones
  the client pinned (:func:`veriml.verify.operators.check_operators`);
- ``provenance``: the model that ran is the one the client named, published by the key that
  owns the name's namespace (:func:`veriml.verify.provenance.check_provenance`);
- ``disputes``: each dispute the verdict cites is logged as claimed: a ``challenge`` of one of
  this answer's receipts, by the party named, for this request, and a ``verdict`` with the
  winner claimed;
- ``epoch``: the verdict's draw is from a logged epoch that began before the answer's jobs and
  at most the client's ``max_epoch_age`` before them. The draw's secret can only be checked
  against the epoch key once a later epoch reveals it (auditors folding the log do, for every
  draw); an epoch that is never revealed grows old, so a coordinator that withholds a reveal to
  hide a secret it picked must stop serving clients within that age;
- ``window``: the verdict says when the answer becomes final, no sooner than the policy's
  window (``optimistic:W``) or the logged rules' ``challenge_window`` after it was signed.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import Check, FormatError, VerificationError
from veriml.core.timestamps import format_time, parse_time
from veriml.ledger.bonds import BondProof
from veriml.ledger.entries import (
    BeaconEntry,
    ChallengeEntry,
    DisputeVerdictEntry,
    StateEntry,
    parse_entry,
)
from veriml.protocol.policy import DisputeRef, Policy, Verdict
from veriml.tlog.checkpoint import Checkpoint
from veriml.verify.evidence import prove_inclusion
from veriml.verify.operators import CLOCK_SKEW, check_operators, open_state_entry

if TYPE_CHECKING:
    from veriml.verify.answer import NodeEvidence

__all__ = [
    "NETWORK_CHECKS",
    "Bonds",
    "LoggedEntry",
    "NetworkEvidence",
    "Requirements",
    "check_network",
    "proven_entries",
    "with_logged",
]

NETWORK_CHECKS = ("evidence", "bonds", "provenance", "disputes", "epoch", "window")
DEFAULT_MAX_EPOCH_AGE = 3600.0
_MAX_ENTRIES = 256
_MAX_PROOF = 64


def _b64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise FormatError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{what} is not valid base64") from exc


def _index(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value < 1 << 53:
        raise FormatError(f"{what} must be a log index", got=str(value)[:40])
    return value


@dataclass(frozen=True, slots=True)
class LoggedEntry:
    """One earlier log entry an answer cites, with its inclusion proof at the answer's
    checkpoint."""

    index: int
    entry: bytes
    inclusion_proof: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "entry": base64.b64encode(self.entry).decode(),
            "inclusion_proof": [base64.b64encode(h).decode() for h in self.inclusion_proof],
        }

    @classmethod
    def from_json(cls, obj: object) -> LoggedEntry:
        if not isinstance(obj, Mapping):
            raise FormatError("an evidence entry is an object")
        proof = obj.get("inclusion_proof")
        if not isinstance(proof, list) or len(proof) > _MAX_PROOF:
            raise FormatError("an evidence entry's inclusion proof is a list of hashes")
        hashes = tuple(_b64(h, "evidence inclusion proof") for h in proof)
        if any(len(h) != 32 for h in hashes):
            raise FormatError("evidence inclusion proof hashes are 32 bytes")
        return cls(
            _index(obj.get("index"), "evidence index"),
            _b64(obj.get("entry"), "evidence entry"),
            hashes,
        )


@dataclass(frozen=True, slots=True)
class Bonds:
    """The cited ``state`` entry's index and each answering operator's stake proof."""

    state: int
    proofs: tuple[BondProof, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "proofs": [p.to_json() for p in self.proofs]}

    @classmethod
    def from_json(cls, obj: object) -> Bonds:
        if not isinstance(obj, Mapping) or not isinstance(obj.get("proofs", []), list):
            raise FormatError('bonds must be {"state": index, "proofs": [...]}')
        proofs = obj.get("proofs", [])
        if len(proofs) > _MAX_ENTRIES:
            raise FormatError("too many stake proofs")
        return cls(
            _index(obj.get("state"), "bonds.state"),
            tuple(BondProof.from_json(p) for p in proofs),
        )


@dataclass(frozen=True, slots=True)
class NetworkEvidence:
    """An answer's ``evidence``, ``bonds`` and ``provenance`` members (module docstring)."""

    entries: tuple[LoggedEntry, ...] = ()
    bonds: Bonds | None = None
    provenance: tuple[int, int | None] | None = None
    beacon: int | None = None

    @property
    def state(self) -> int | None:
        """The ``state`` entry the answer cites (its inference entry names it too)."""
        return None if self.bonds is None else self.bonds.state

    def entry(self, index: int) -> LoggedEntry | None:
        return next((e for e in self.entries if e.index == index), None)

    def to_json(self) -> dict[str, Any]:
        """The answer members (none when there is nothing)."""
        out: dict[str, Any] = {}
        if self.entries:
            out["evidence"] = [e.to_json() for e in self.entries]
        if self.bonds is not None:
            out["bonds"] = self.bonds.to_json()
        if self.provenance is not None:
            out["provenance"] = {"model": self.provenance[0], "namespace": self.provenance[1]}
        if self.beacon is not None:
            out["beacon"] = self.beacon
        return out

    @classmethod
    def from_answer(cls, obj: Mapping[str, Any]) -> NetworkEvidence:
        """The four members of an answer (or a saved result), parsed; absent ones are empty."""
        entries = obj.get("evidence", [])
        if not isinstance(entries, list) or len(entries) > _MAX_ENTRIES:
            raise FormatError("evidence must be a list of at most 256 entries")
        bonds = obj.get("bonds")
        provenance = obj.get("provenance")
        parsed: tuple[int, int | None] | None = None
        if provenance is not None:
            if not isinstance(provenance, Mapping):
                raise FormatError('provenance must be {"model": index, "namespace": index}')
            namespace = provenance.get("namespace")
            parsed = (
                _index(provenance.get("model"), "provenance.model"),
                None if namespace is None else _index(namespace, "provenance.namespace"),
            )
        beacon = obj.get("beacon")
        return cls(
            tuple(LoggedEntry.from_json(e) for e in entries),
            None if bonds is None else Bonds.from_json(bonds),
            parsed,
            None if beacon is None else _index(beacon, "beacon"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Requirements:
    """What a client requires of the network beyond its own pinned log key.

    - ``min_stake``: the least stake an answering operator must have (at least 1: a client
      never accepts an unbonded operator; the logged rules' minimum applies when higher);
    - ``trusted_operators``: for a permissioned network, the operators the client accepts
      without stake (then every answering operator must be one of them);
    - ``allow_unsigned``: accept a model nobody signed, by digest only (off: an unsigned model
      fails ``provenance``);
    - ``max_epoch_age``: the longest, in seconds, a draw's beacon epoch may have run before
      the answer's jobs started (default an hour: six of a coordinator's default epochs).
    """

    min_stake: int = 1
    trusted_operators: frozenset[str] | None = None
    allow_unsigned: bool = False
    max_epoch_age: float = DEFAULT_MAX_EPOCH_AGE

    def __post_init__(self) -> None:
        if type(self.min_stake) is not int or self.min_stake < 1:
            raise FormatError("a client's minimum stake is a positive integer")
        if not self.max_epoch_age > 0:
            raise FormatError("a client's maximum epoch age is a positive number of seconds")
        if self.trusted_operators is not None:
            object.__setattr__(self, "trusted_operators", frozenset(self.trusted_operators))


def with_logged(
    nodes: Sequence[NodeEvidence], entries: Sequence[LoggedEntry]
) -> list[NodeEvidence]:
    """The answering nodes with their registration entries and proofs taken from the cited
    ``evidence`` where the node list does not carry them itself."""
    by_index = {e.index: e for e in entries}
    out: list[NodeEvidence] = []
    for node in nodes:
        logged = by_index.get(node.log_index)
        if node.entry is None and logged is not None:
            node = replace(node, entry=logged.entry, inclusion_proof=logged.inclusion_proof)
        out.append(node)
    return out


def proven_entries(entries: Sequence[LoggedEntry], cp: Checkpoint) -> dict[int, bytes]:
    """The cited entries by index, each proven in ``cp``'s tree (``check="evidence"``)."""
    proven: dict[int, bytes] = {}
    for item in entries:
        prove_inclusion(item.entry, item.index, item.inclusion_proof, cp, Check.EVIDENCE)
        proven[item.index] = item.entry
    return proven


def _cited(entries: Mapping[int, bytes], index: int | None, check: Check, what: str) -> bytes:
    found = None if index is None else entries.get(index)
    if found is None:
        raise VerificationError(f"the answer does not carry its {what}", check=check, index=index)
    return found


@dataclass(frozen=True, slots=True)
class NetworkCheck:
    """What :func:`check_network` established: the checks that ran, notes, the cited state."""

    checks: tuple[str, ...]
    notes: tuple[str, ...] = ()
    state: StateEntry | None = None
    stakes: Mapping[str, int] = field(default_factory=dict)


def check_network(
    evidence: NetworkEvidence,
    entries: Mapping[int, bytes],
    *,
    entry_index: int,
    request_id: str,
    policy: Policy,
    verdict: Verdict,
    operators: Collection[str],
    receipts: Sequence[Envelope],
    started: str,
    finished: str,
    model: Digest | None,
    ref: str | None,
    trust: Requirements,
) -> NetworkCheck:
    """Check an answer's network evidence (module docstring). ``entries`` are the cited
    entries already proven (:func:`proven_entries`); ``operators`` the answering nodes'
    operators; ``receipts`` every receipt in the answer; ``started``/``finished`` the earliest
    start and latest finish of its receipts; ``model`` the model digest that ran (None for a
    relayed answer, which has no model to prove) and ``ref`` what the client asked for (a
    name, ``name@version`` or digest; None: the model's digest)."""
    checks: list[str] = ["evidence"]
    notes: list[str] = []
    # bonds: distinct operators, bonded at the cited state (or pinned by the client).
    state = None
    state_index = evidence.state
    if state_index is not None:
        state = open_state_entry(_cited(entries, state_index, Check.BONDS, "ledger state entry"))
    stakes = check_operators(
        operators,
        state=state,
        state_index=state_index,
        entry_index=entry_index,
        signed_at=started,
        proofs=() if evidence.bonds is None else evidence.bonds.proofs,
        min_stake=trust.min_stake,
        trusted_operators=trust.trusted_operators,
    )
    checks.append("bonds")
    # provenance: the model is the one named, published by the owner of the name.
    if model is not None:
        from veriml.verify.provenance import check_provenance

        if evidence.provenance is None:
            raise VerificationError(
                "the answer does not cite its model's provenance", check=Check.PROVENANCE
            )
        model_index, namespace_index = evidence.provenance
        model_entry = _cited(entries, model_index, Check.PROVENANCE, "model entry")
        namespace_entry = (
            None
            if namespace_index is None
            else _cited(entries, namespace_index, Check.PROVENANCE, "namespace entry")
        )
        check_provenance(
            ref or model.to_text(),
            model,
            model_entry,
            namespace_entry,
            allow_unsigned=trust.allow_unsigned,
        )
        checks.append("provenance")
    # disputes: each one cited is logged as claimed.
    if verdict.disputes:
        for ref_ in verdict.disputes:
            _check_dispute(ref_, entries, request_id, receipts)
        checks.append("disputes")
    # epoch: every request is drawn (its nodes, its spot check, its seed), from a logged
    # epoch, current when the jobs ran.
    if verdict.draw is None:
        raise VerificationError(
            "the verdict reveals no draw: who ran the request cannot be checked", check=Check.EPOCH
        )
    _check_epoch(verdict.draw.epoch, evidence.beacon, entries, started, trust.max_epoch_age)
    checks.append("epoch")
    # window: when the answer becomes final.
    window = _window(policy, state)
    if window is None:
        notes.append("the challenge window was not checked: no logged rules in the evidence")
    else:
        _check_window(verdict, finished, window)
        checks.append("window")
    return NetworkCheck(tuple(checks), tuple(notes), state, stakes)


def _check_dispute(
    ref: DisputeRef, entries: Mapping[int, bytes], request_id: str, receipts: Sequence[Envelope]
) -> None:
    """A dispute the verdict cites: its ``challenge`` entry opened it about one of this
    answer's receipts, with the parties named, and its ``verdict`` entry has the winner."""
    opened = _cited(entries, ref.opened, Check.DISPUTES, "dispute's challenge entry")
    closed = _cited(entries, ref.log_index, Check.DISPUTES, "dispute's verdict entry")
    try:
        challenge, decided = parse_entry(opened), parse_entry(closed)
    except FormatError as exc:
        raise VerificationError(
            "a dispute's entries do not parse", check=Check.DISPUTES, dispute=ref.id
        ) from exc
    if not isinstance(challenge, ChallengeEntry) or not isinstance(decided, DisputeVerdictEntry):
        raise VerificationError(
            "a dispute's entries are not its challenge and verdict", check=Check.DISPUTES
        )
    digests = {Digest.of(r.payload).to_text() for r in receipts}
    challenger = challenge.challenger.get("node", challenge.challenger_account)
    mismatches = {
        "dispute": (challenge.dispute, decided.dispute, ref.id),
        "inference": (challenge.inference, request_id, request_id),
        "defendant": (challenge.defendant_node, ref.defendant, ref.defendant),
        "winner": (decided.winner, ref.winner, ref.winner),
    }
    for what, values in mismatches.items():
        if len(set(values)) != 1:
            raise VerificationError(
                f"a dispute's logged {what} is not the one the verdict claims",
                check=Check.DISPUTES,
                dispute=ref.id,
            )
    if ref.challenger not in (challenger, challenge.challenger_account):
        raise VerificationError(
            "a dispute's logged challenger is not the one the verdict claims",
            check=Check.DISPUTES,
            dispute=ref.id,
        )
    if challenge.defendant["receipt"] not in digests:
        raise VerificationError(
            "a dispute is about a receipt that is not in this answer",
            check=Check.DISPUTES,
            dispute=ref.id,
        )


def _check_epoch(
    epoch: int, index: int | None, entries: Mapping[int, bytes], started: str, max_age: float
) -> None:
    """The cited ``beacon`` entry began ``epoch``, before the jobs started (clock skew
    allowed) and no more than ``max_age`` seconds before."""
    data = _cited(entries, index, Check.EPOCH, "draw's beacon entry")
    try:
        beacon = parse_entry(data)
    except FormatError as exc:
        raise VerificationError(
            "the cited beacon entry is malformed", check=Check.EPOCH, reason=exc.message
        ) from exc
    if not isinstance(beacon, BeaconEntry) or beacon.epoch != epoch:
        raise VerificationError(
            "the cited entry does not begin the draw's epoch", check=Check.EPOCH, epoch=epoch
        )
    began = parse_time(beacon.at)
    jobs = parse_time(started)
    if began > jobs + CLOCK_SKEW:
        raise VerificationError(
            "the draw's epoch began after the answer's jobs", check=Check.EPOCH, epoch=epoch
        )
    if jobs - began > dt.timedelta(seconds=max_age):
        raise VerificationError(
            "the draw's epoch began longer before the answer's jobs than this client allows",
            check=Check.EPOCH,
            epoch=epoch,
            began=beacon.at,
            max_age=max_age,
        )


def _window(policy: Policy, state: StateEntry | None) -> float | None:
    if policy.kind == "optimistic":
        return float(policy.window)
    return None if state is None else state.rules.challenge_window


def _check_window(verdict: Verdict, finished: str, window: float) -> None:
    final_after = verdict.final_after
    if final_after is None:
        raise VerificationError("the verdict does not say when it is final", check=Check.WINDOW)
    try:
        final = parse_time(final_after, what="verdict final_after")
        signed = parse_time(finished, what="receipt finished")
    except FormatError as exc:
        raise VerificationError(
            "the challenge window cannot be read", check=Check.WINDOW, reason=exc.message
        ) from exc
    if final + CLOCK_SKEW < signed + dt.timedelta(seconds=window):
        raise VerificationError(
            "the challenge window is shorter than the rules'",
            check=Check.WINDOW,
            final_after=final_after,
            receipt_finished=finished,
            earliest=format_time(signed + dt.timedelta(seconds=window)),
        )
