"""Verifying an LLM answer of the OpenAI-compatible API from its evidence alone (pure: no I/O).

The answer's ``veriml`` member (:class:`~veriml.verify.completion_answer.CompletionEvidence`)
is checked by :func:`verify_completion` (re-exported by :mod:`veriml.client`) in this order;
the first failure raises a :class:`~veriml.errors.VerificationError` whose ``check``
names it (steps 0, 1 and 6 are the log evidence every answer shares,
:mod:`veriml.verify.evidence`; a ``spot:P`` answer adds ``spot`` before ``verdict``,
:func:`veriml.verify.policy.check_spot_reveal`):

0. ``checkpoint``: the checkpoint note is signed by the pinned log key (and the witness quorum);
1. ``node-key``: every answering node's registration entry is in that tree and is a node
   descriptor signed by the key it carries; ``signature``: every receipt is a completion
   receipt signed by one of those keys (:func:`veriml.core.completion.open_completion`);
2. ``model-digest``: every receipt is for the requested model (and request id and policy);
3. ``request-digest``: the canonical request rebuilt from what this client sent, with the seed
   the receipt records, hashes to the receipt's request digest (so the answer is for these
   messages, tools and sampling parameters, not someone else's);
4. ``prompt-tokens``: the prompt token ids sent hash to the receipt's prompt digest and count;
5. ``output-digest``: content, tool calls, the generated token ids and the finish reason (or
   the embedding vectors) hash to the output digest the agreeing receipts sign, and the token
   count is the receipt's;
6. ``inclusion``: the inference entry rebuilt byte for byte is at ``log.index`` in the tree;
7. ``verdict``: the verdict recomputed from the verified receipts equals the claimed one and
   accepts (``prefill``: the checking node's signed report accepts every token).

The receipt's ``trust`` is reported as signed: ``reexecutable`` for a model the node runs
itself, ``attested-relay`` for a relay node fronting an upstream API. A relay's answer is a
signature only (no model digest, nothing anyone can re-run): checks 2 and 7 cannot hold more
than the relay's word, and the result says so in its notes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from veriml.core.canonical import canonical_digest
from veriml.core.completion import (
    COMPLETION_PREDICATE_TYPE,
    COMPLETION_SUBJECT,
    CompletionPredicate,
    Trust,
    open_completion,
    prompt_digest,
    relay_digest,
    relay_name,
    token_digest,
)
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement
from veriml.core.errors import (
    Check,
    DigestMismatchError,
    FormatError,
    SignatureError,
    VerificationError,
)
from veriml.protocol.draw import Draw, sampling_seed
from veriml.protocol.messages import NodeDescriptor
from veriml.protocol.openai_requests import canonical_request
from veriml.protocol.prefill_check import PREFILL_CHECK_PREDICATE_TYPE as PREFILL_TYPE
from veriml.protocol.prefill_check import open_prefill_check
from veriml.tlog.checkpoint import Checkpoint
from veriml.tlog.cosignature import CosignatureVerifier
from veriml.tlog.note import NoteVerifier
from veriml.verify.answer import NodeEvidence
from veriml.verify.completion_answer import (
    CompletionEvidence,
    CompletionOutput,
    Kind,
    completion_output,
)
from veriml.verify.evidence import (
    check_inference_entry,
    evidence_json,
    node_descriptors,
    open_checkpoint_note,
    parse_log_key,
    receipt_node_id,
    receipt_signer,
)
from veriml.verify.network import Requirements, check_network, proven_entries, with_logged
from veriml.verify.policy import Policy, Verdict, check_spot_reveal, check_verdict, decide

__all__ = [
    "COMPLETION_CHECKS",
    "PREFILL_TYPE",
    "VerifiedCompletion",
    "verify_completion",
]

COMPLETION_CHECKS = (
    "checkpoint",
    "node-key",
    "signature",
    "model-digest",
    "request-digest",
    "prompt-tokens",
    "output-digest",
    "inclusion",
    "verdict",
)
# The subject name of a completion receipt (docs/llm.md, "Receipt").
SUBJECT = COMPLETION_SUBJECT


@dataclass(frozen=True, slots=True)
class VerifiedCompletion:
    """What verification established: the checkpoint, the nodes, the receipts' predicates,
    the trust level they sign, the checks that passed, and what was taken on a signature."""

    evidence: CompletionEvidence
    checkpoint: Checkpoint
    nodes: Mapping[str, NodeDescriptor]
    predicates: tuple[CompletionPredicate, ...]
    trust: Trust
    model: Digest | None
    checks: tuple[str, ...] = COMPLETION_CHECKS
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        e = self.evidence
        model = self.model.to_text() if self.model is not None else "relayed"
        text = (
            f"completion OK: {e.id} of model {model} under {e.policy} ({self.trust}), "
            f"{e.verdict.outcome} by {len(e.verdict.agreeing)} of {len(self.predicates)} "
            f"nodes; entry {e.log.index} in the log of {self.checkpoint.size} "
            f"({self.checkpoint.origin}); checks: {', '.join(self.checks)}"
        )
        return "; ".join((text, *self.notes))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "id": self.evidence.id,
            "model": None if self.model is None else self.model.to_text(),
            "policy": self.evidence.policy,
            "trust": self.trust,
            "verdict": self.evidence.verdict.to_json(),
            **evidence_json(
                self.evidence.log, self.checkpoint, self.nodes, self.checks, self.notes
            ),
        }


def _statement_type(receipt: Envelope) -> str:
    try:
        return Statement.from_bytes(receipt.payload).predicate_type
    except FormatError as exc:
        raise VerificationError(
            "a receipt's payload is not an in-toto statement",
            check=Check.SIGNATURE,
            reason=exc.message,
        ) from exc


def _open(
    receipt: Envelope, nodes: Mapping[str, NodeDescriptor]
) -> tuple[CompletionPredicate, Digest]:
    """Step 1b for a completion receipt: its signature under the node key the log holds."""
    descriptor = receipt_signer(receipt, nodes)
    try:
        predicate, output = open_completion(receipt, descriptor.key)
    except SignatureError:
        raise
    except VerificationError as exc:
        raise VerificationError(
            "a receipt is not a well-formed completion receipt",
            check=Check.SIGNATURE,
            node=descriptor.node_id,
            reason=exc.diagnostics(),
        ) from exc
    if predicate.node_id != descriptor.key.key_id:
        raise SignatureError(
            "a receipt names another node than its signer",
            check=Check.SIGNATURE,
            node=descriptor.node_id,
        )
    return predicate, output


def _relay_name(request: Mapping[str, Any] | None) -> str | None:
    """``NAME`` when the request asked for a relayed model ``relay:NAME``."""
    ref = request.get("model") if request is not None else None
    return relay_name(ref) if isinstance(ref, str) else None


def _check_models(
    evidence: CompletionEvidence,
    predicates: Sequence[CompletionPredicate],
    model: Digest | None,
    relay: str | None,
) -> tuple[Trust, Digest | None]:
    """Step 2: one trust level, one model (the requested one: a hub model's digest, or for
    ``relay:NAME`` a relay's signature naming upstream ``NAME``), this request id and policy."""
    trusts = {p.trust for p in predicates}
    if len(trusts) != 1:
        raise VerificationError(
            "the receipts mix trust levels",
            check=Check.MODEL_DIGEST,
            trust=",".join(sorted(trusts)),
        )
    trust: Trust = predicates[0].trust
    digests = {p.model_digest for p in predicates}
    if len(digests) != 1:
        raise VerificationError(
            "the receipts are for different models", check=Check.MODEL_DIGEST, models=len(digests)
        )
    signed = predicates[0].model_digest
    if trust == "reexecutable":
        wanted = relay_digest(relay) if relay is not None else model
        if signed is None:
            raise VerificationError(
                "a re-executable receipt must name its model digest", check=Check.MODEL_DIGEST
            )
        if wanted is not None and signed != wanted:
            raise DigestMismatchError(
                "the receipt is for another model than the one requested",
                check=Check.MODEL_DIGEST,
                expected=wanted,
                calculated=signed,
            )
    elif signed is not None or predicates[0].upstream is None:
        raise VerificationError(
            "an attested-relay receipt names its upstream, and no model digest",
            check=Check.MODEL_DIGEST,
        )
    elif model is not None:
        raise VerificationError(
            "a relay answered a request for a hub model: its receipt binds no model digest",
            check=Check.MODEL_DIGEST,
            expected=model,
        )
    else:
        names = {str((p.upstream or {}).get("name")) for p in predicates}
        if relay is not None and names != {relay}:
            raise VerificationError(
                "a relay signed another upstream model than the one requested",
                check=Check.MODEL_DIGEST,
                expected=relay,
                got=",".join(sorted(names))[:200],
            )
    for p in predicates:
        if p.request_id != evidence.id or p.policy != evidence.policy:
            raise VerificationError(
                "a receipt is for another request or policy",
                check=Check.MODEL_DIGEST,
                request=p.request_id,
                policy=p.policy,
            )
    return trust, signed


def _check_request(
    kind: Kind,
    predicates: Sequence[CompletionPredicate],
    request: Mapping[str, Any] | None,
    model: Digest | None,
    draw: Draw | None = None,
) -> Digest:
    """Step 3: the canonical request of what was sent hashes to every receipt's digest; a
    request sent without a seed samples with the one its draw secret gives (``draw``), so
    the coordinator did not pick it."""
    digests = {p.request_digest for p in predicates}
    if len(digests) != 1:
        raise VerificationError(
            "the receipts do not share one request digest",
            check=Check.REQUEST_DIGEST,
            digests=len(digests),
        )
    signed = next(iter(digests))
    if request is None or model is None:
        return signed
    seed = predicates[0].sampling.seed if predicates[0].sampling is not None else None
    drawn = kind != "embedding" and request.get("seed") is None and seed is not None
    if drawn and (draw is None or seed != sampling_seed(draw.secret)):
        raise VerificationError(
            "the sampling seed was not drawn from the request's draw secret",
            check=Check.DRAW,
            seed=seed,
        )
    try:
        # veriml's own member (visibility) is not part of the OpenAI request it signs.
        sent = {k: v for k, v in request.items() if k != "veriml"}
        canonical = canonical_request(kind, model, sent, seed=seed)
    except FormatError as exc:
        raise VerificationError(
            "the request sent cannot be rebuilt in canonical form",
            check=Check.REQUEST_DIGEST,
            reason=exc.diagnostics(),
        ) from exc
    calculated = canonical_digest(canonical)
    if calculated != signed:
        raise DigestMismatchError(
            "the receipt is for another request than the one sent",
            check=Check.REQUEST_DIGEST,
            expected=signed,
            calculated=calculated,
        )
    return signed


def _check_prompt(
    kind: Kind, evidence: CompletionEvidence, predicates: Sequence[CompletionPredicate]
) -> None:
    """Step 4: the prompt token ids sent are the ones every receipt signs (an embedding
    signs one id list per input)."""
    count = sum(len(p) for p in evidence.prompt_tokens)
    if kind == "embedding":
        calculated = prompt_digest([list(p) for p in evidence.prompt_tokens])
    else:
        calculated = token_digest([t for p in evidence.prompt_tokens for t in p])
    for p in predicates:
        if p.prompt_digest != calculated or p.prompt_count != count:
            raise DigestMismatchError(
                "the prompt tokens sent are not the ones the receipt signs",
                check=Check.PROMPT_TOKENS,
                expected=f"{p.prompt_digest.to_text()} ({p.prompt_count} tokens)",
                calculated=f"{calculated.to_text()} ({count} tokens)",
            )


def _check_output(
    kind: Kind,
    evidence: CompletionEvidence,
    output: CompletionOutput,
    answers: Sequence[tuple[CompletionPredicate, Digest]],
) -> None:
    """Step 5: the answer's output hashes to the verdict's digest, which every agreeing
    receipt signs; the generated token count and finish reason are the signed ones."""
    calculated = output.digest(kind, evidence.completion_tokens)
    claimed = dict(evidence.verdict.outputs).get(SUBJECT)
    if claimed is None and evidence.verdict.outcome == "rejected":
        # A rejected verdict agrees on no output: say so rather than blame the content.
        raise VerificationError(
            "the policy was not met: the verdict rejects the answer",
            check=Check.VERDICT,
            policy=evidence.verdict.policy,
        )
    if claimed != calculated:
        raise DigestMismatchError(
            "the answer's output does not hash to the verdict's output digest",
            check=Check.OUTPUT_DIGEST,
            expected=claimed,
            calculated=calculated,
        )
    agreeing = set(evidence.verdict.agreeing)
    for predicate, signed in answers:
        if predicate.node_id not in agreeing:
            continue
        if signed != calculated:
            raise VerificationError(
                "an agreeing receipt signs another output",
                check=Check.OUTPUT_DIGEST,
                node=predicate.node_id,
                signed=signed,
                calculated=calculated,
            )
        if kind != "embedding" and (
            predicate.completion_count != len(evidence.completion_tokens)
            or predicate.finish_reason != output.finish_reason
        ):
            raise VerificationError(
                "the generated token count or finish reason is not the signed one",
                check=Check.OUTPUT_DIGEST,
                node=predicate.node_id,
                count=len(evidence.completion_tokens),
                signed_count=predicate.completion_count,
            )


def _check_prefill(
    evidence: CompletionEvidence,
    checks: Sequence[Envelope],
    nodes: Mapping[str, NodeDescriptor],
    primary: Envelope,
    model: Digest | None,
) -> str:
    """Step 7 for ``prefill``: a node signed a prefill-check report over exactly the primary
    receipt, for the same model and request, accepting every generated token; its node id."""
    if len(checks) != 1:
        raise VerificationError(
            "a prefill answer carries exactly one prefill-check receipt",
            check=Check.VERDICT,
            got=len(checks),
        )
    descriptor = receipt_signer(checks[0], nodes)
    check = open_prefill_check(checks[0], descriptor.key)
    wanted = Digest.of(primary.payload)
    if check.receipt != wanted:
        raise DigestMismatchError(
            "the prefill check is about another receipt",
            check=Check.VERDICT,
            expected=wanted,
            calculated=check.receipt,
        )
    if model is not None and check.model != model:
        raise DigestMismatchError(
            "the prefill check ran another model",
            check=Check.VERDICT,
            expected=model,
            calculated=check.model,
        )
    if check.request_id != evidence.id:
        raise VerificationError(
            "the prefill check is for another request", check=Check.VERDICT, got=check.request_id
        )
    if not check.accepted:
        raise VerificationError(
            "the prefill check did not accept the completion",
            check=Check.VERDICT,
            first_failure=check.report.get("first_failure"),
            reason=check.report.get("reason"),
        )
    if check.report.get("checked") != len(evidence.completion_tokens):
        raise VerificationError(
            "the prefill check did not check every generated token",
            check=Check.VERDICT,
            checked=check.report.get("checked"),
            tokens=len(evidence.completion_tokens),
        )
    return descriptor.node_id


def _recompute(
    evidence: CompletionEvidence,
    answers: Sequence[tuple[CompletionPredicate, Digest]],
    nodes: Mapping[str, NodeDescriptor],
    checker: str | None = None,
) -> Verdict:
    """The verdict :func:`decide` gives for the verified receipts. Under ``prefill`` the
    checking node (its signed report verified to accept) answers with the generation's
    output, as the coordinator counts it."""
    try:
        policy = Policy.parse(evidence.policy)
        triples = [(p.node_id, nodes[p.node_id].operator, {SUBJECT: d}) for p, d in answers]
        if checker is not None:
            triples.append((checker, nodes[checker].operator, {SUBJECT: answers[0][1]}))
        claimed = evidence.verdict
        return decide(
            policy,
            triples,
            spot=claimed.spot,
            disputes=claimed.disputes,
            final_after=claimed.final_after,
            draw=claimed.draw,
        )
    except FormatError as exc:
        raise VerificationError(
            "the verdict cannot be recomputed", check=Check.VERDICT, reason=exc.diagnostics()
        ) from exc


def verify_completion(
    response: Mapping[str, Any],
    *,
    log_vkey: str | NoteVerifier,
    kind: Kind = "chat.completion",
    request: Mapping[str, Any] | None = None,
    model: Digest | None = None,
    witnesses: Sequence[CosignatureVerifier] = (),
    quorum: int = 0,
    nodes: Sequence[NodeEvidence] | None = None,
    trust: Requirements | None = None,
) -> VerifiedCompletion:
    """Verify an OpenAI-compatible answer (``response``: the JSON body, with its ``veriml``
    member) and its log evidence; raise :class:`VerificationError` on any failure.

    ``log_vkey`` is the log's note verifier key you pinned (text or ``NoteVerifier``).
    ``kind`` is ``chat.completion``, ``text_completion`` or ``embedding``. ``request`` is the
    OpenAI request body this client sent and ``model`` the digest it asked for: with both, the
    canonical request is rebuilt and must be the one every receipt signs (without them the
    answer is checked for itself, not for being the answer to your request, and the notes say
    so). A model asked for by name is bound to the digest that ran through the logged
    provenance (the name's namespace owner published it); ``model`` pins a digest directly.
    ``nodes`` replaces the answer's node list with registration entries and their inclusion
    proofs at the answer's checkpoint (the answer's own ``evidence`` carries them too).
    ``trust`` is what the client requires of the operators and the model
    (:class:`veriml.verify.network.Requirements`).
    """
    trust = trust or Requirements()
    log_key = parse_log_key(log_vkey)
    evidence = CompletionEvidence.from_json(response.get("veriml"))
    if nodes is not None:
        evidence = evidence.with_nodes(nodes)
    output = completion_output(kind, response)
    # 0. The checkpoint, signed by the pinned log key (and the witness quorum).
    signed = open_checkpoint_note(
        evidence.log.checkpoint, log_key, witnesses=witnesses, quorum=quorum
    )
    cp = signed.checkpoint
    entries = proven_entries(evidence.network.entries, cp)
    # 1. Node keys from the log; every receipt signed by one of them.
    descriptors = node_descriptors(with_logged(evidence.nodes, evidence.network.entries), cp)
    types = [_statement_type(r) for r in evidence.receipts]
    unknown = sorted({t for t in types if t not in (COMPLETION_PREDICATE_TYPE, PREFILL_TYPE)})
    completions = [r for r, t in zip(evidence.receipts, types, strict=True) if t != PREFILL_TYPE]
    prefills = [r for r, t in zip(evidence.receipts, types, strict=True) if t == PREFILL_TYPE]
    if unknown or not completions:
        raise VerificationError(
            "the answer's receipts are not completion receipts",
            check=Check.SIGNATURE,
            types=",".join(unknown) or None,
        )
    answers = [_open(r, descriptors) for r in completions]
    predicates = tuple(p for p, _ in answers)
    # 2. The model (the one asked for), the request id and the policy.
    relay = _relay_name(request)
    level, signed_model = _check_models(evidence, predicates, model, relay)
    # 3. The request, rebuilt from what was sent with the seed the receipt records; a relayed
    # request is bound to its model's stand-in digest.
    stand_in = relay_digest(relay) if relay is not None and level == "attested-relay" else None
    request_digest = _check_request(
        kind,
        predicates,
        request,
        model or signed_model or stand_in,
        evidence.verdict.draw,
    )
    # 4. The prompt tokens.
    _check_prompt(kind, evidence, predicates)
    # 5. The output.
    _check_output(kind, evidence, output, answers)
    # 6. The inference entry, rebuilt byte for byte, is in the log.
    entry_model = signed_model or stand_in or evidence.model
    if entry_model is None:
        raise VerificationError(
            "a relayed answer names the model entry it was logged under", check=Check.INCLUSION
        )
    check_inference_entry(
        evidence.log,
        cp,
        request_id=evidence.id,
        request_digest=request_digest,
        model=entry_model,
        policy=evidence.policy,
        receipts=evidence.receipts,
        verdict=evidence.verdict,
        request=evidence.request,
        state=evidence.network.state,
    )
    try:
        policy = Policy.parse(evidence.policy)
    except FormatError as exc:
        raise VerificationError("unknown policy", check=Check.VERDICT, reason=exc.message) from exc
    # 7. The network evidence: bonded operators, the model's provenance (a hub model: the
    # digest that ran is the one the name asked for names), logged disputes, the window.
    operators = {descriptors[p.node_id].operator for p in predicates}
    checkers = [receipt_node_id(r) for r in prefills]
    operators |= {descriptors[n].operator for n in checkers if n is not None and n in descriptors}
    ref = None if request is None or relay is not None else request.get("model")
    network = check_network(
        evidence.network,
        entries,
        entry_index=evidence.log.index,
        request_id=evidence.id,
        policy=policy,
        verdict=evidence.verdict,
        operators=operators,
        receipts=evidence.receipts,
        started=min(p.started for p in predicates),
        finished=max(p.finished for p in predicates),
        model=signed_model if level == "reexecutable" else None,
        ref=str(ref) if isinstance(ref, str) else None,
        trust=trust,
    )
    # 8. The verdict follows from the receipts, and accepts.
    checker = None
    if evidence.policy == "prefill":
        checker = _check_prefill(evidence, prefills, descriptors, completions[0], signed_model)
    elif prefills:
        raise VerificationError("only a prefill answer carries prefill checks", check=Check.VERDICT)
    notes: list[str] = list(network.notes)
    ran = list(network.checks)
    answering = [descriptors[p.node_id].operator for p in predicates]
    if check_spot_reveal(policy, evidence.verdict, predicates[0].spot, answering):
        ran.append("spot")
    checks: tuple[str, ...] = (*COMPLETION_CHECKS[:-1], *ran, COMPLETION_CHECKS[-1])
    recomputed = _recompute(evidence, answers, descriptors, checker)
    check_verdict(evidence.verdict, recomputed)
    if level == "attested-relay":
        notes.append(
            "attested-relay: a relay node signed what its upstream answered; there is no model "
            "digest and nothing to re-execute, so the answer is as good as that node's word"
        )
    if request is None:
        notes.append("the request digest was taken as signed: no request given to rebuild it")
    return VerifiedCompletion(
        evidence, cp, descriptors, predicates, level, signed_model, checks, tuple(notes)
    )
