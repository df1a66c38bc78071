"""The log evidence every network answer carries, checked (pure: no I/O, no HTTP).

Inference answers (:mod:`veriml.verify.inference`) and completion answers
(:mod:`veriml.verify.completion`) prove themselves the same way; these are the steps they share,
each raising a :class:`~veriml.errors.VerificationError` whose ``check`` names it:

- ``log-key``: the log key is the one the caller pinned (:func:`parse_log_key`), never one
  learnt from the coordinator;
- ``checkpoint``: the checkpoint note is signed by that key, its origin is the key's name, and
  at least ``quorum`` of ``witnesses`` cosigned it (C2SP tlog-checkpoint, signed-note,
  tlog-cosignature; :func:`open_checkpoint_note`);
- ``node-key``: every answering node's registration entry is in that tree (RFC 9162
  §2.1.3.2) and is a node descriptor signed by the key it carries (:func:`node_descriptors`);
- ``signature``: a receipt is from one of those nodes (:func:`receipt_signer`);
- ``inclusion``: the inference entry rebuilt byte for byte (``InferenceEntry.to_bytes()``) is
  at ``log.index`` in the checkpoint's tree (:func:`check_inference_entry`).

The spot-check reveal, the other piece both answers share, is a policy rule:
:func:`veriml.verify.policy.check_spot_reveal`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement
from veriml.core.errors import Check, Error, FormatError, SignatureError, VerificationError
from veriml.ledger.entries import InferenceEntry, NodeEntry, parse_entry
from veriml.protocol.messages import NodeDescriptor
from veriml.protocol.policy import Verdict
from veriml.tlog.checkpoint import Checkpoint
from veriml.tlog.client import SignedCheckpoint, verify_checkpoint_note
from veriml.tlog.cosignature import CosignatureVerifier
from veriml.tlog.merkle import leaf_hash, verify_inclusion
from veriml.tlog.note import NoteVerifier

if TYPE_CHECKING:
    from veriml.verify.answer import LogEvidence, NodeEvidence

__all__ = [
    "check_inference_entry",
    "evidence_json",
    "node_descriptors",
    "open_checkpoint_note",
    "parse_log_key",
    "prove_inclusion",
    "receipt_node_id",
    "receipt_signer",
]


def parse_log_key(log_vkey: str | NoteVerifier) -> NoteVerifier:
    """The pinned log key, as given: a note verifier or its vkey text (C2SP signed-note).

    Nothing here looks the key up: learning it from the coordinator would make the
    coordinator the trust anchor. (The SDK's ``pin_log_key`` also reads ``$VERIML_LOG_VKEY``
    and the local network's file.)
    """
    if isinstance(log_vkey, NoteVerifier):
        return log_vkey
    if not log_vkey:
        raise VerificationError("no pinned log key: pass the log's vkey", check=Check.LOG_KEY)
    try:
        return NoteVerifier.from_vkey(log_vkey.strip())
    except FormatError as exc:
        raise VerificationError(
            "the pinned log key is not a note verifier key", check=Check.LOG_KEY, reason=exc.message
        ) from exc


def open_checkpoint_note(
    note: bytes,
    log_key: NoteVerifier,
    *,
    witnesses: Sequence[CosignatureVerifier] = (),
    quorum: int = 0,
) -> SignedCheckpoint:
    """The checkpoint against the pinned log key and the witness policy."""
    try:
        return verify_checkpoint_note(note, log_key, witnesses=witnesses, quorum=quorum)
    except VerificationError as exc:
        raise SignatureError(
            "the checkpoint is not signed by the pinned log key (and witness quorum)",
            check=Check.CHECKPOINT,
            reason=exc.diagnostics(),
        ) from exc
    except FormatError as exc:
        raise VerificationError(
            "the checkpoint note is malformed", check=Check.CHECKPOINT, reason=exc.diagnostics()
        ) from exc


def prove_inclusion(
    entry: bytes, index: int, proof: Sequence[bytes], cp: Checkpoint, check: Check
) -> None:
    """``entry`` is the leaf at ``index`` of the tree ``cp`` commits to (RFC 9162 §2.1.3.2);
    a failure is reported under ``check``."""
    if not 0 <= index < cp.size:
        raise VerificationError(
            "log index is outside the checkpoint's tree", check=check, index=index, size=cp.size
        )
    try:
        verify_inclusion(leaf_hash(entry), index, cp.size, proof, cp.root_hash)
    except (VerificationError, FormatError) as exc:
        raise VerificationError(
            "entry is not in the log at the claimed index",
            check=check,
            index=index,
            size=cp.size,
            reason=exc.message,
        ) from exc


def node_descriptors(evidence: Sequence[NodeEvidence], cp: Checkpoint) -> dict[str, NodeDescriptor]:
    """Node keys known from the log, each registration proven against ``cp``."""
    nodes: dict[str, NodeDescriptor] = {}
    for node in evidence:
        if node.entry is None or node.inclusion_proof is None:
            raise VerificationError(
                "the node's registration entry and its proof are missing",
                check=Check.NODE_KEY,
                node=node.id,
            )
        prove_inclusion(node.entry, node.log_index, node.inclusion_proof, cp, Check.NODE_KEY)
        try:
            descriptor = _registration(node.entry)
        except Error as exc:
            raise VerificationError(
                "the node's log entry is not a valid registration",
                check=Check.NODE_KEY,
                node=node.id,
                reason=exc.diagnostics(),
            ) from exc
        if descriptor.node_id != node.id:
            raise VerificationError(
                "the logged registration is for another node",
                check=Check.NODE_KEY,
                expected=node.id,
                got=descriptor.node_id,
            )
        nodes[node.id] = descriptor
    return nodes


@functools.lru_cache(maxsize=4096)
def _registration(entry: bytes) -> NodeDescriptor:
    """A node registration entry's descriptor, its signatures checked (descriptor and
    operator binding). A pure function of the bytes, so a client verifying many answers from
    the same nodes checks each registration once; a failure is raised (and not cached)."""
    parsed = parse_entry(entry)
    if not isinstance(parsed, NodeEntry):
        raise FormatError("log entry is not a node registration")
    return parsed.open()


def receipt_node_id(receipt: Envelope) -> str | None:
    """The node a receipt *claims* to be from (unverified; for lookup only)."""
    try:
        statement = Statement.from_bytes(receipt.payload)
        node = statement.predicate.get("node")
        return str(node["id"]) if isinstance(node, Mapping) and "id" in node else None
    except (FormatError, KeyError, TypeError):
        return None


def receipt_signer(receipt: Envelope, nodes: Mapping[str, NodeDescriptor]) -> NodeDescriptor:
    """The registered node a receipt claims to be from: the key its signature must verify
    under. A node whose registration is not in the evidence fails ``signature``."""
    claimed = receipt_node_id(receipt)
    descriptor = nodes.get(claimed or "")
    if descriptor is None:
        raise SignatureError(
            "a receipt is from a node whose registration is not in the evidence",
            check=Check.SIGNATURE,
            node=claimed or "unnamed",
        )
    return descriptor


def check_inference_entry(
    log: LogEvidence,
    cp: Checkpoint,
    *,
    request_id: str,
    request_digest: Digest,
    model: Digest,
    policy: str,
    receipts: tuple[Envelope, ...],
    verdict: Verdict,
    request: Mapping[str, Any],
    state: int | None = None,
) -> None:
    """The inference entry the coordinator must have appended for this answer, rebuilt byte
    for byte, is at ``log.index`` in the checkpoint's tree (``inclusion``). ``state`` is the
    ledger state entry the answer cites (the entry names it too)."""
    try:
        entry = InferenceEntry(
            request_id=request_id,
            request_digest=request_digest,
            model=model,
            policy=policy,
            receipts=receipts,
            verdict=verdict,
            extra=dict(request),
            state=state,
        ).to_bytes()
    except FormatError as exc:
        raise VerificationError(
            "the inference entry cannot be rebuilt", check=Check.INCLUSION, reason=exc.diagnostics()
        ) from exc
    prove_inclusion(entry, log.index, log.inclusion_proof, cp, Check.INCLUSION)


def evidence_json(
    log: LogEvidence,
    cp: Checkpoint,
    nodes: Mapping[str, NodeDescriptor],
    checks: Iterable[str],
    notes: Iterable[str],
) -> dict[str, Any]:
    """What a verified answer's ``--json`` summary says of its evidence: where the entry is
    in which tree, each node's operator, the checks that passed and the notes."""
    return {
        "log": {"index": log.index, "size": cp.size, "origin": cp.origin},
        "nodes": {nid: d.operator for nid, d in sorted(nodes.items())},
        "checks": list(checks),
        "notes": list(notes),
    }
