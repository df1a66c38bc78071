"""Verifying a network inference answer from its evidence alone (pure: no I/O, no HTTP).

The SDK (:mod:`veriml.client`, which re-exports :func:`verify_inference`) runs this on every
answer before returning it, and ``veriml verify FILE`` runs it on a saved result. Checks run in
the order of docs/sdk.md, "What is verified, in order"; the first failure raises a
:class:`~veriml.errors.VerificationError` whose ``check`` names it (steps 0, 1 and 4 are
the log evidence every answer shares, :mod:`veriml.verify.evidence`):

0. ``checkpoint``: the checkpoint note is signed by the pinned log key, its origin is the
   key's name, and at least ``quorum`` of ``witnesses`` cosigned it (C2SP tlog-checkpoint,
   signed-note, tlog-cosignature);
1. ``node-key``: every answering node's registration entry is in that tree (RFC 9162 §2.1.3.2)
   and is a node descriptor signed by the key it carries; ``signature``: every receipt is signed
   by the key of a node registered that way, and names that node (DSSE, in-toto Statement v1);
2. ``model-digest``: every receipt is for the answer's model, request id, policy and one
   request digest;
3. ``output-digest``: the agreed outputs hash to the verdict's output digests, and every
   agreeing receipt signs exactly those digests;
4. ``inclusion``: the inference entry rebuilt byte for byte (``InferenceEntry.to_bytes()``) is
   at ``log.index`` in the checkpoint's tree;
5. the policy's own evidence (docs/verification.md, "Spot checks" and "Verdicts"):

   - ``spot`` (``spot:P``): the revealed secret hashes to the commitment the primary node
     signed in its receipt, the decision it implies is the verdict's ``checked``, and a
     drawn check has a second operator's answer (or a dispute) in the evidence
     (:func:`veriml.verify.policy.check_spot_reveal`);
   - ``tolerance`` (``…,tolerance``): every node's output tensors, as sent in ``answers``,
     hash to its receipt's output digests; agreement is recomputed within the model's output
     bounds when the caller passes them (``bounds=``), else only bitwise-equal values are
     taken as agreeing and any agreement beyond that is reported in ``notes``;
   - ``optimistic`` (``optimistic:W``): the primary receipt commits to a trace root and the
     verdict's ``final_after`` is at least W after the receipt was signed;

6. ``verdict``: the verdict recomputed from the verified receipts with
   :func:`veriml.verify.policy.decide` equals the claimed one, and accepts. Dispute outcomes
   are taken from the verdict as claimed (each names its ``verdict`` log entry): re-running a
   dispute needs both parties' traces, which the answer does not carry, so the summary says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy.typing as npt

from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement
from veriml.core.errors import (
    Check,
    DigestMismatchError,
    FormatError,
    SignatureError,
    VerificationError,
)
from veriml.core.receipt import PREDICATE_TYPE, InferencePredicate, request_digest
from veriml.protocol.messages import NodeDescriptor
from veriml.tlog.checkpoint import Checkpoint
from veriml.tlog.cosignature import CosignatureVerifier
from veriml.tlog.note import NoteVerifier
from veriml.verify.answer import InferenceResult, Verification
from veriml.verify.evidence import (
    check_inference_entry,
    evidence_json,
    node_descriptors,
    open_checkpoint_note,
    receipt_signer,
)
from veriml.verify.network import (
    NETWORK_CHECKS,
    Requirements,
    check_network,
    proven_entries,
    with_logged,
)
from veriml.verify.policy import Policy, Verdict, check_spot_reveal, check_verdict, decide
from veriml.verify.tensors import check_tensor_digests

if TYPE_CHECKING:
    from veriml.verify.tolerance import OutputBounds

__all__ = [
    "CHECKS",
    "POLICY_CHECKS",
    "VerifiedInference",
    "request_object",
    "verify_inference",
]

CHECKS = (
    "checkpoint",
    "node-key",
    "signature",
    "model-digest",
    "output-digest",
    "inclusion",
    "verdict",
)
# Checks only some answers have; each runs just before "verdict" and is listed when it ran:
# the network evidence (veriml.verify.network), then the policy's own.
POLICY_CHECKS = (*NETWORK_CHECKS, "spot", "tolerance", "optimistic")

Answer = tuple[str, str, Mapping[str, Digest]]
Tensors = Mapping[str, npt.NDArray[Any]]


@dataclass(frozen=True, slots=True)
class VerifiedInference:
    """What verification established: the checkpoint, each node's descriptor, the predicates."""

    result: InferenceResult
    checkpoint: Checkpoint
    nodes: Mapping[str, NodeDescriptor]
    predicates: tuple[InferencePredicate, ...]
    checks: tuple[str, ...] = CHECKS
    notes: tuple[str, ...] = ()

    @property
    def verification(self) -> Verification:
        """The checks and notes, as :attr:`InferenceResult.verification` carries them."""
        return Verification(self.checks, self.notes)

    def summary(self) -> str:
        verdict = self.result.verdict
        text = (
            f"inference OK: {self.result.id} of model {self.result.model} under "
            f"{self.result.policy}, {verdict.outcome} by {len(verdict.agreeing)} of "
            f"{len(self.result.receipts)} nodes; entry {self.result.log.index} in the log of "
            f"{self.checkpoint.size} ({self.checkpoint.origin}); checks: {', '.join(self.checks)}"
        )
        return "; ".join((text, *self.notes))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "id": self.result.id,
            "model": self.result.model.to_text(),
            "policy": self.result.policy,
            "verdict": self.result.verdict.to_json(),
            **evidence_json(self.result.log, self.checkpoint, self.nodes, self.checks, self.notes),
        }


def _receipt(
    receipt: Envelope, nodes: Mapping[str, NodeDescriptor]
) -> tuple[InferencePredicate, dict[str, Digest]]:
    """Step 1b: one receipt's signature under its logged node key; its predicate and subjects."""
    descriptor = receipt_signer(receipt, nodes)
    key = descriptor.key
    receipt.verify([key])
    try:
        statement = Statement.from_bytes(receipt.payload)
    except FormatError as exc:
        raise VerificationError(
            "receipt payload is not an in-toto statement", check=Check.SIGNATURE, reason=exc.message
        ) from exc
    if statement.predicate_type != PREDICATE_TYPE:
        raise VerificationError(
            "receipt is not an inference receipt",
            check=Check.SIGNATURE,
            got=statement.predicate_type,
        )
    predicate = InferencePredicate.from_json(statement.predicate)
    if predicate.node_id != key.key_id:
        raise SignatureError(
            "receipt names another node than its signer",
            check=Check.SIGNATURE,
            node=descriptor.node_id,
        )
    subjects: dict[str, Digest] = {}
    for subject in statement.subjects:
        if subject.name in subjects:
            raise VerificationError("receipt names an output twice", check=Check.OUTPUT_DIGEST)
        subjects[subject.name] = subject.digest
    return predicate, subjects


def request_object(model: Digest, inputs: Mapping[str, Digest], policy: str) -> dict[str, Any]:
    """The request whose RFC 8785 digest a receipt's ``request.digest`` is: the object of
    :func:`veriml.runtime.canonical_request`, rebuilt from the predicate alone (a test pins
    the two equal)."""
    return {
        "model": model.to_text(),
        "inputs": [{"name": n, "digest": d.to_text()} for n, d in sorted(inputs.items())],
        "policy": policy,
    }


def _check_request(result: InferenceResult, predicates: Sequence[InferencePredicate]) -> Digest:
    """Step 2: every receipt is for this model, request and policy."""
    digests = {p.request_digest for p in predicates}
    for p in predicates:
        calculated = request_digest(request_object(p.model_digest, p.inputs, p.policy))
        if calculated != p.request_digest:
            raise DigestMismatchError(
                "a receipt's request digest does not match its model, inputs and policy",
                check=Check.MODEL_DIGEST,
                expected=p.request_digest,
                calculated=calculated,
            )
        if p.model_digest != result.model:
            raise DigestMismatchError(
                "a receipt is for another model",
                check=Check.MODEL_DIGEST,
                expected=result.model,
                calculated=p.model_digest,
            )
        if p.request_id != result.id or p.policy != result.policy:
            raise VerificationError(
                "a receipt is for another request or policy",
                check=Check.MODEL_DIGEST,
                request=p.request_id,
                policy=p.policy,
            )
    if len(digests) != 1:
        raise VerificationError(
            "the receipts do not share one request digest",
            check=Check.MODEL_DIGEST,
            digests=len(digests),
        )
    return next(iter(digests))


def _check_outputs(
    result: InferenceResult, answers: Sequence[tuple[str, str, Mapping[str, Digest]]]
) -> None:
    """Step 3: agreed outputs = verdict outputs = every agreeing receipt's subjects."""
    claimed = dict(result.verdict.outputs)
    check_tensor_digests(
        result.outputs, claimed, check=Check.OUTPUT_DIGEST, kind="output", claimant="the verdict"
    )
    if result.verdict.mode == "tolerance":
        # Agreeing receipts may sign other bits; step 5 checks each against its tensors and
        # the verdict recomputation that the verdict's digests are one agreeing node's.
        return
    by_node = {node: outputs for node, _, outputs in answers}
    for node in result.verdict.agreeing:
        if node in by_node and dict(by_node[node]) != claimed:
            raise VerificationError(
                "an agreeing receipt signs other outputs",
                check=Check.OUTPUT_DIGEST,
                node=node,
            )


def verify_inference(
    result: InferenceResult,
    *,
    log_key: NoteVerifier,
    witnesses: Sequence[CosignatureVerifier] = (),
    quorum: int = 0,
    bounds: OutputBounds | None = None,
    trust: Requirements | None = None,
    ref: str | None = None,
) -> VerifiedInference:
    """Verify an answer and its log evidence; raise :class:`VerificationError` on any failure.

    ``log_key`` is the log's note verifier key you pinned (``NoteVerifier.from_vkey(...)``).
    The entries the answer cites (node registrations, the ledger state, the model's
    provenance, its disputes) and their proofs come with it (``evidence``; saved files carry
    them). ``bounds`` (tolerance mode: ``veriml.verify.tolerance.output_bounds(model)`` of the
    answer's model) recomputes agreement within bounds: a tolerance verdict that needs more
    than bitwise equality is not verified without them. ``trust`` is what the client requires
    of the operators and the model (:class:`veriml.verify.network.Requirements`); ``ref`` the model
    reference it asked for (a name is checked against the logged namespace owner).
    """
    trust = trust or Requirements()
    # 0. The checkpoint, signed by the pinned log key (and the witness quorum).
    signed = open_checkpoint_note(
        result.log.checkpoint, log_key, witnesses=witnesses, quorum=quorum
    )
    cp = signed.checkpoint
    entries = proven_entries(result.network.entries, cp)
    # 1. Node keys from the log; every receipt signed by one of them.
    nodes = node_descriptors(with_logged(result.nodes, result.network.entries), cp)
    verified = [_receipt(r, nodes) for r in result.receipts]
    predicates = tuple(p for p, _ in verified)
    # 2. The model (and request) every receipt is about.
    request_digest = _check_request(result, predicates)
    # 3. The outputs.
    answers = [(p.node_id, nodes[p.node_id].operator, subjects) for p, subjects in verified]
    _check_outputs(result, answers)
    # 4. The inference entry, rebuilt byte for byte, is in the log.
    check_inference_entry(
        result.log,
        cp,
        request_id=result.id,
        request_digest=request_digest,
        model=result.model,
        policy=result.policy,
        receipts=result.receipts,
        verdict=result.verdict,
        request=result.request,
        state=result.network.state,
    )
    try:
        policy = Policy.parse(result.policy)
    except FormatError as exc:
        raise VerificationError("unknown policy", check=Check.VERDICT, reason=exc.message) from exc
    # 5. The network evidence: bonded operators, the model's provenance, logged disputes,
    # the challenge window.
    network = check_network(
        result.network,
        entries,
        entry_index=result.log.index,
        request_id=result.id,
        policy=policy,
        verdict=result.verdict,
        operators={operator for _, operator, _ in answers},
        receipts=result.receipts,
        started=min(p.started for p in predicates),
        finished=max(p.finished for p in predicates),
        model=result.model,
        ref=ref,
        trust=trust,
    )
    # 6. The policy's own evidence; 7. the verdict follows from all of it and accepts.
    ran, notes = _check_policy(result, policy, answers, predicates, bounds)
    checks = (*CHECKS[:-1], *network.checks, *ran, CHECKS[-1])
    notes = [*network.notes, *notes]
    if result.verdict.disputes:
        notes.append(
            f"{len(result.verdict.disputes)} dispute outcome(s) checked against their logged "
            "challenge and verdict entries (re-running a dispute needs both parties' traces, "
            "which auditors replay from the log)"
        )
    return VerifiedInference(result, cp, nodes, predicates, checks, tuple(notes))


def _check_policy(
    result: InferenceResult,
    policy: Policy,
    answers: Sequence[Answer],
    predicates: Sequence[InferencePredicate],
    bounds: OutputBounds | None,
) -> tuple[list[str], list[str]]:
    """Steps 5 and 6: the policy-specific checks that ran, and the notes they left."""
    verdict = result.verdict
    ran: list[str] = []
    notes: list[str] = []
    operators = [operator for _, operator, _ in answers]
    if check_spot_reveal(policy, verdict, predicates[0].spot, operators):
        ran.append("spot")
    if policy.kind == "optimistic":
        _check_optimistic(predicates)
        ran.append("optimistic")
    if verdict.mode != policy.compare:
        raise VerificationError(
            "the verdict's comparison mode is not the policy's",
            check=Check.VERDICT,
            mode=verdict.mode,
            policy=str(policy),
        )
    try:
        if policy.compare == "tolerance":
            recomputed = _decide_tolerance(result, policy, answers, bounds)
            ran.append("tolerance")
        else:
            recomputed = _decide(policy, answers, verdict)
    except FormatError as exc:
        raise VerificationError(
            "the verdict cannot be recomputed", check=Check.VERDICT, reason=exc.diagnostics()
        ) from exc
    check_verdict(verdict, recomputed)
    return ran, notes


def _decide(
    policy: Policy,
    answers: Sequence[Answer],
    claimed: Verdict,
    tensors: Sequence[Tensors] | None = None,
    bounds: OutputBounds | None = None,
) -> Verdict:
    """:func:`decide` with what the receipts cannot say taken from the claimed verdict, each
    checked above: the spot decision and the draw, the window's end, the disputes' outcomes
    (against their logged entries)."""
    return decide(
        policy,
        answers,
        tensors=tensors,
        bounds=bounds,
        spot=claimed.spot,
        final_after=claimed.final_after,
        disputes=claimed.disputes,
        draw=claimed.draw,
    )


def _check_optimistic(predicates: Sequence[InferencePredicate]) -> None:
    """An optimistic answer commits to a trace, so it can be disputed while its window (the
    ``window`` check) runs."""
    primary = predicates[0]
    if primary.trace is None:
        raise VerificationError(
            "the receipt of an optimistic answer must commit to a trace root",
            check=Check.OPTIMISTIC,
            node=primary.node_id,
        )


def _answer_tensors(result: InferenceResult, answers: Sequence[Answer]) -> list[Tensors]:
    """Each answer's output tensors, checked against its receipt's output digests. A node
    whose receipt signs the verdict's outputs may be left out of ``answers``: the agreed
    outputs (already checked against those digests) are its outputs."""
    sent: dict[str, Tensors] = {}
    for answer in result.answers:
        if answer.node in sent:
            raise VerificationError(
                "the answer lists a node's outputs twice", check=Check.TOLERANCE
            )
        sent[answer.node] = answer.outputs
    tensors: list[Tensors] = []
    for node, _, digests in answers:
        values = sent.get(node)
        if values is None:
            if dict(digests) != dict(result.verdict.outputs):
                raise VerificationError(
                    "tolerance mode needs every differing node's outputs in the answer",
                    check=Check.TOLERANCE,
                    node=node,
                )
            values = result.outputs
        check_tensor_digests(
            values, digests, check=Check.TOLERANCE, kind="output", claimant=f"node {node}'s receipt"
        )
        tensors.append(values)
    return tensors


def _decide_tolerance(
    result: InferenceResult,
    policy: Policy,
    answers: Sequence[Answer],
    bounds: OutputBounds | None,
) -> Verdict:
    """The verdict in tolerance mode, recomputed from every node's outputs.

    With ``bounds`` (the model's output bounds) agreement within them is recomputed. Without
    them only bitwise-equal outputs can be taken to agree: a verdict that needs more is not
    verified (``check="tolerance"``), since a coordinator could otherwise name any signer as
    agreeing (the SDK's client fetches the model and computes the bounds itself).
    """
    from veriml.verify.tolerance import OutputBounds

    tensors = _answer_tensors(result, answers)
    if bounds is not None:
        return _decide(policy, answers, result.verdict, tensors, bounds)
    recomputed = _decide(policy, answers, result.verdict, tensors, OutputBounds(rtol=0.0))
    if recomputed != result.verdict:
        raise VerificationError(
            "tolerance agreement cannot be recomputed without the model's output bounds",
            check=Check.TOLERANCE,
            hint="pass bounds=output_bounds(model) (the Client computes them from the hub)",
        )
    return recomputed
