"""The completion service: LLM requests run on nodes, verified, decided, logged once.

``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` (docs/llm.md,
docs/openai-api.md) go through the steps of :mod:`veriml.coordinator.inference.service`, with a
canonical request (docs/llm.md, "Canonical request") in place of input tensors:

1. resolve the model reference; it must be a GGUF hub model (``NotFoundError`` -> 404);
2. parse the policy and build the **canonical request** from the OpenAI body
   (:func:`veriml.core.completion.canonical_request`, ``FormatError`` naming the member);
   a request without ``seed`` gets one chosen here, so every node of a quorum samples with
   the same seed and their tokens can be compared bit for bit;
3. pick nodes of distinct operators that run ``llama.cpp`` (``NodeUnavailableError`` -> 503), sign
   each a job carrying the request's digest, and post it with the request;
4. stream the first answering node's tokens to the caller while it generates (NDJSON from the
   node, :mod:`~veriml.coordinator.llm.transport`; its ``TokenSink`` keeps the stream to one
   node's tokens even when nodes fail);
5. verify every answer (:mod:`~veriml.coordinator.llm.checks`): the completion
   receipt under the node's **registered** key, its binding to this request (id, digest,
   model, policy, sampling), and the prompt and output digests recomputed from the token ids
   and content the node returned; a node whose answer does not verify is replaced;
6. decide the verdict with :func:`veriml.verify.policy.decide` on ``{"completion": output
   digest}`` maps: ``none``, ``quorum:N/K`` (equal output digests), ``spot:P`` (a second
   node re-runs when the commit-reveal says so) and ``prefill`` (a node of another operator
   checks every generated token in one batched pass and signs its report);
7. append **one** :class:`~veriml.ledger.entries.InferenceEntry` (request extra member
   ``kind``), prove its inclusion through :class:`InferenceStore`, and pay the nodes' fees.

Nothing is written before step 7; a crash after the append is completed from the log like
any inference (:mod:`veriml.coordinator.db.inferences`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import httpx
import numpy.typing as npt
from sqlalchemy.engine import Engine

from veriml.coordinator.db.inferences import InferenceStore, PendingInference
from veriml.coordinator.disputes.llm import PrefillReferee
from veriml.coordinator.inference.requests import (
    EpochSource,
    RequestDraws,
    answer_cites,
    check_request_id,
    provenance_json,
    requester,
    same_requester,
)
from veriml.coordinator.llm.checks import (
    OUTPUT,
    CompletionAnswer,
    CompletionJob,
    NodeAnswer,
    answer_from_stored,
    check_answer,
    output_json,
    parse_policy,
)
from veriml.coordinator.llm.transport import NodeTransport, TokenPiece, TokenSink
from veriml.coordinator.nodes.scheduler import (
    Candidate,
    Failure,
    check_retry_options,
    gather,
    node_key,
    pick,
)
from veriml.core.canonical import canonical_digest
from veriml.core.completion import RequestKind, relay_name
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import (
    ConflictError,
    FormatError,
    NodeUnavailableError,
    NotFoundError,
    StorageError,
)
from veriml.core.keys import SigningKey
from veriml.ledger.entries import InferenceEntry
from veriml.protocol.draw import Draw, sampling_seed
from veriml.protocol.openai_requests import canonical_request, check_canonical
from veriml.tlog.log import Log
from veriml.verify.policy import (
    DisputeRef,
    Policy,
    SpotReveal,
    Verdict,
    decide,
    spot_checked,
    spot_commitment,
)

if TYPE_CHECKING:
    from veriml.coordinator.disputes.service import DisputeService
    from veriml.coordinator.ledger.service import LedgerBook

__all__ = [
    "LLM_ENGINE",
    "CompletionAnswer",
    "CompletionJob",
    "CompletionOptions",
    "CompletionService",
    "LLMModel",
    "NodeAnswer",
    "Prepared",
]

LLM_ENGINE: Final = "llama.cpp"
"""The engine a node's descriptor lists when it runs GGUF models."""
_log = logging.getLogger(__name__)

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class LLMModel:
    """What the service needs of a model: its digest and context length (``io``) for a hub
    GGUF model; for a relayed one (``relay:NAME``), the upstream ``relay`` name and the
    stand-in digest :func:`~veriml.core.completion.relay_digest` of its id."""

    digest: Digest
    context_length: int | None = None
    relay: str | None = None
    provenance: tuple[int, int | None] | None = None
    """Hub models: the log indexes of the model's ``model`` and ``namespace`` entries."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionOptions:
    """Timeouts (seconds), the retry bound and size limits of the completion service."""

    job_timeout: float = 120.0
    attempts_per_slot: int = 3
    live_within: float = 15.0
    publish_timeout: float = 30.0
    max_result_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        check_retry_options(
            "completion",
            job_timeout=self.job_timeout,
            attempts_per_slot=self.attempts_per_slot,
            live_within=self.live_within,
        )


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request checked and ready to run: nothing has been sent to a node yet."""

    job: CompletionJob
    policy: Policy
    candidates: tuple[Candidate, ...]
    extra: Mapping[str, str] = field(default_factory=dict)
    draw: Draw | None = None
    """The request's draw secret (scheduling, spot check, a missing seed)."""
    stored: CompletionAnswer | None = None
    """An answer already given for this ``Idempotency-Key`` and request: :meth:`run` returns
    it without asking any node."""
    provenance: tuple[int, int | None] | None = None
    payment: Envelope | None = None
    known_size: int | None = None


class CompletionService:
    """Runs LLM requests on nodes (see the module docstring for the steps).

    Its collaborators are passed in, as for :class:`~veriml.coordinator.inference.service
    .InferenceService`: ``resolve_model(ref)`` (blocking) returns the GGUF model or raises
    ``NotFoundError``; ``list_nodes(model)`` (blocking) the nodes that run it (``llama.cpp``, or
    relay nodes for ``model.relay``) and may
    get jobs; ``node_failed(node_id)`` is told when a node did not answer; ``observe`` gets
    ``("verdict", "<policy kind>/<outcome>")`` and ``("node-failure", reason)`` events. With a
    ``ledger``, a signed client pays ``fee_per_job`` to each node that answered.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        log: Log,
        key: SigningKey,
        http: httpx.AsyncClient,
        resolve_model: Callable[[str], LLMModel],
        list_nodes: Callable[[LLMModel], Sequence[Candidate]],
        node_failed: Callable[[str], None] | None = None,
        observe: Callable[[str, str], None] | None = None,
        options: CompletionOptions | None = None,
        ledger: LedgerBook | None = None,
        disputes: DisputeService | None = None,
        beacon: EpochSource | None = None,
    ) -> None:
        self._log = log
        self._key = key
        self._resolve_model = resolve_model
        self._list_nodes = list_nodes
        self._observe = observe or (lambda event, value: None)
        self._options = options or CompletionOptions()
        self._ledger = ledger
        self._transport = NodeTransport(
            http,
            timeout=self._options.job_timeout,
            max_result_bytes=self._options.max_result_bytes,
            node_failed=node_failed,
        )
        self._referee = PrefillReferee(
            key=key,
            transport=self._transport,
            choose=self._choose,
            observe=self._observe,
            options=self._options,
            disputes=disputes,
        )
        self._draws = RequestDraws(beacon=beacon, ledger=ledger)
        self._store = InferenceStore(engine, log, publish_timeout=self._options.publish_timeout)

    async def prepare(
        self,
        kind: RequestKind,
        body: Mapping[str, Any],
        *,
        policy: str = "none",
        client: str | None = None,
        request_id: str | None = None,
        payment: Envelope | None = None,
        known_size: int | None = None,
        epoch: int | None = None,
        visibility: str | None = None,
    ) -> Prepared:
        """Steps 1-3 without sending anything: the model, the canonical request, the policy,
        the payment and enough nodes. Every client error surfaces here, before a stream starts.

        ``body`` is the OpenAI request body without the ``veriml`` member; ``visibility`` its
        ``veriml.visibility`` (``public`` lets anyone read what the request left).
        ``request_id`` (the ``Idempotency-Key``) names the request: when an answer with that
        id is stored, the same request (rebuilt with the stored seed) from the same requester
        gets it back, and another request is a ``ConflictError``."""
        model_ref = body.get("model")
        if not isinstance(model_ref, str) or not 0 < len(model_ref) <= 512:
            raise FormatError(
                "model must be a hub name, name@version or sha256 digest", param="model"
            )
        parsed = parse_policy(policy, kind=kind, relay=relay_name(model_ref) is not None)
        key = request_id
        request_id = str(uuid.uuid4()) if key is None else check_request_id(key)
        # 1. The model and the nodes that may run it (blocking lookups, off the event loop).
        model, candidates = await asyncio.to_thread(self._lookup, model_ref)
        stored = None if key is None else await self._stored(request_id, kind, model, body)
        # 2. The canonical request. A request without a seed samples with one drawn from its
        # draw secret (so a quorum samples alike, and the coordinator cannot pick it).
        draw = self._draws.draw(request_id, epoch)
        seed = None if kind == "embedding" else sampling_seed(draw.secret)
        canonical = canonical_request(
            kind, model.digest, body, seed=seed, max_context=model.context_length
        )
        job = CompletionJob(
            request_id=request_id,
            kind=kind,
            model=model.digest,
            canonical=canonical,
            digest=canonical_digest(canonical),
            policy=str(parsed),
            spot=spot_commitment(draw.secret) if parsed.kind == "spot" else None,
            relay=model.relay,
        )
        if stored is None:
            jobs = parsed.nodes + (1 if parsed.kind in ("spot", "prefill") else 0)
            await asyncio.to_thread(self._draws.check_payment, client, payment, request_id, jobs)
        extra = requester(client, visibility)
        if stored is not None:
            same_requester(stored.veriml, client, request_id)
            return Prepared(job, parsed, (), extra, stored=stored)
        prepared = Prepared(
            job,
            parsed,
            tuple(candidates),
            extra,
            draw,
            provenance=model.provenance,
            payment=payment,
            known_size=known_size,
        )
        # 3. Enough nodes now, so a stream never starts for a request that cannot run.
        if len(self._choose(prepared, parsed.nodes, frozenset(), frozenset())) < parsed.nodes:
            raise NodeUnavailableError(
                "not enough live nodes of distinct operators run this model",
                model=model.digest,
                policy=str(parsed),
                needed=parsed.nodes,
                engine=LLM_ENGINE,
            )
        return prepared

    async def _stored(
        self, request_id: str, kind: RequestKind, model: LLMModel, body: Mapping[str, Any]
    ) -> CompletionAnswer | None:
        """The stored answer of ``request_id`` if it answers this very request."""
        try:
            found = await asyncio.to_thread(self._store.recover, request_id)
        except NotFoundError as exc:  # pending: its first request is still running
            raise ConflictError(
                "a request with this Idempotency-Key is running", key=request_id
            ) from exc
        if found is None:
            return None
        digest, veriml = found
        canonical = veriml.get("canonical_request")
        seed = canonical.get("seed") if isinstance(canonical, Mapping) else None
        again = canonical_request(kind, model.digest, body, seed=seed)
        if canonical_digest(again) != digest or not isinstance(veriml.get("output"), Mapping):
            raise ConflictError("this Idempotency-Key was used for another request", key=request_id)
        return answer_from_stored(veriml)

    def _lookup(self, ref: str) -> tuple[LLMModel, list[Candidate]]:
        model = self._resolve_model(ref)
        return model, list(self._list_nodes(model))

    def _choose(
        self, prepared: Prepared, count: int, tried: frozenset[str], busy: frozenset[str]
    ) -> list[Candidate]:
        # A prepared request always has its draw; a challenge of a logged completion (which
        # is not scheduled anew) draws from its request id like the original did.
        draw = prepared.draw or self._draws.draw(prepared.job.request_id)
        return pick(
            prepared.candidates,
            prepared.job.model,
            count,
            now=time.time(),
            live_within=self._options.live_within,
            draw=draw.secret,
            exclude_nodes=tried,
            exclude_operators=busy,
        )

    async def create(
        self,
        kind: RequestKind,
        body: Mapping[str, Any],
        *,
        policy: str = "none",
        client: str | None = None,
        on_token: Callable[[TokenPiece], None] | None = None,
        request_id: str | None = None,
        payment: Envelope | None = None,
        known_size: int | None = None,
        epoch: int | None = None,
        visibility: str | None = None,
    ) -> CompletionAnswer:
        """:meth:`prepare` then :meth:`run`."""
        prepared = await self.prepare(
            kind,
            body,
            policy=policy,
            client=client,
            request_id=request_id,
            payment=payment,
            known_size=known_size,
            epoch=epoch,
            visibility=visibility,
        )
        return await self.run(prepared, on_token=on_token)

    async def run(
        self, prepared: Prepared, *, on_token: Callable[[TokenPiece], None] | None = None
    ) -> CompletionAnswer:
        """Steps 3-7: run on nodes (streaming tokens to ``on_token``), verify, decide, log."""
        if prepared.stored is not None:
            return prepared.stored
        job, policy = prepared.job, prepared.policy
        sink = None if on_token is None else TokenSink(on_token)
        first = self._choose(prepared, policy.nodes, frozenset(), frozenset())
        answers, failures = await self._run(prepared, first, sink)
        if len(answers) < policy.needed:
            raise NodeUnavailableError(
                "not enough nodes answered with a verified receipt",
                needed=policy.needed,
                answered=len(answers),
                failures="; ".join(f.error.diagnostics()[:200] for f in failures[-4:]),
            )
        spot: SpotReveal | None = None
        draw = prepared.draw
        assert draw is not None  # prepare() drew it
        if policy.kind == "spot":
            checked = spot_checked(policy, draw.secret)
            spot = SpotReveal(checked)
            if checked:
                # The checker: another operator's node, running the very same request. A drawn
                # check that no such node carries out is refused, not logged unchecked.
                tried = frozenset(n.node_id for n, _ in answers)
                busy = frozenset(n.operator for n, _ in answers)
                checker = self._choose(prepared, 1, tried, busy)
                if checker:
                    answers += (await self._run(prepared, checker, None, busy=busy))[0]
                if len({n.operator for n, _ in answers}) < 2:
                    raise NodeUnavailableError(
                        "the spot check was drawn and no node of another operator carried it out",
                        request=job.request_id,
                        policy=str(policy),
                    )
        triples = [(n.node_id, n.operator, {OUTPUT: a.output}) for n, a in answers]
        evidence = [(n, a.receipt) for n, a in answers]
        disputes: list[DisputeRef] = []
        if policy.kind == "prefill":
            check = await self._referee.prefill(prepared, answers[0])
            if check is not None:
                triples.append((check.node.node_id, check.node.operator, check.vouched))
                evidence.append((check.node, check.receipt))
                rejected = check.vouched != {OUTPUT: answers[0][1].output}
                if (
                    self._referee.hosts_disputes
                    and rejected
                    and await self._referee.confirmed(prepared, answers[0], check)
                ):
                    # The checker's failed (and confirmed) check convicts the generator; it is
                    # the challenger.
                    checking = (check.node, answers[0][1])
                    disputes.append(
                        await self._referee.record(
                            prepared, answers[0], checking, check, "challenger"
                        )
                    )
        # 6. The verdict, from the verified answers; the disagreements it leaves are settled
        # first, and the verdict decided again with their outcomes.
        final_after = self._draws.final_after(policy)
        verdict = decide(
            policy, triples, spot=spot, disputes=disputes, final_after=final_after, draw=draw
        )
        dissent = await self._referee.settle_dissent(prepared, answers, verdict)
        if dissent:
            verdict = decide(
                policy,
                triples,
                spot=spot,
                disputes=[*disputes, *dissent],
                final_after=final_after,
                draw=draw,
            )
        self._observe("verdict", f"{policy.kind}/{verdict.outcome}")
        chosen = next(
            (a for _, a in answers if {OUTPUT: a.output} == dict(verdict.outputs)), answers[0][1]
        )
        veriml = await self._log_answer(prepared, verdict, evidence, chosen)
        return CompletionAnswer(chosen, veriml)

    async def challenge(
        self, stored: Mapping[str, Any], node_id: str, *, account: str
    ) -> DisputeRef:
        """An external challenge of a logged completion (a watcher whose own prefill check
        rejected it; docs/llm.md, "Disputes"): a node of another operator prefill-checks the
        completion the answer returned. If the check fails, ``node_id`` is convicted and
        ``account`` rewarded; if it passes, the challenge fails and ``account`` loses its bond.
        """
        if not self._referee.hosts_disputes:
            raise StorageError("this coordinator hosts no disputes")
        answer = answer_from_stored(stored).answer
        if answer.predicate.node_id != node_id:
            raise FormatError(
                "a prefill challenge names the node whose completion the answer returned",
                node=node_id[:200],
            )
        if answer.predicate.trust != "reexecutable" or answer.embeddings:
            raise FormatError("only a re-executable completion can be prefill-checked")
        canonical = check_canonical(stored.get("canonical_request") or {})
        model = LLMModel(Digest.from_text(str(stored.get("model"))))
        candidates = await asyncio.to_thread(self._list_nodes, model)
        defendant = next((n for n in candidates if n.node_id == node_id), None)
        if defendant is None:
            raise NotFoundError("the defendant node is not registered or not live", node=node_id)
        job = CompletionJob(
            request_id=str(stored.get("id")),
            kind=canonical["type"],
            model=model.digest,
            canonical=canonical,
            digest=canonical_digest(canonical),
            policy=str(stored.get("policy")),
            spot=answer.predicate.spot,
        )
        prepared = Prepared(job, Policy("none"), tuple(candidates))
        return await self._referee.challenge(prepared, defendant, answer, account=account)

    async def _log_answer(
        self,
        prepared: Prepared,
        verdict: Verdict,
        evidence: Sequence[tuple[Candidate, Envelope]],
        chosen: NodeAnswer,
    ) -> dict[str, Any]:
        """Step 7: one log entry, its inclusion proof, the stored answer, the fees."""
        job = prepared.job
        extra = {"kind": job.kind, **prepared.extra}
        state = await self._draws.state()
        entry = InferenceEntry(
            request_id=job.request_id,
            request_digest=job.digest,
            model=job.model,
            policy=job.policy,
            receipts=tuple(r for _, r in evidence),
            verdict=verdict,
            extra=extra,
            state=state,
        )
        answer: dict[str, Any] = {
            "id": job.request_id,
            "model": job.model.to_text(),
            "policy": job.policy,
            # The log entry's request members beyond id, digest, model and policy.
            "request": extra,
            "canonical_request": dict(job.canonical),
            "receipts": [r.to_json() for _, r in evidence],
            "nodes": [{"id": n.node_id, "log_index": n.log_index} for n, _ in evidence],
            "prompt_tokens": [list(p) if isinstance(p, tuple) else p for p in chosen.prompt_tokens],
            "completion_tokens": list(chosen.completion_tokens),
            "verdict": verdict.to_json(),
            # What the OpenAI body is built from, so a retry gets the very same answer back.
            "output": output_json(chosen),
        }
        nodes = [n for n, _ in evidence]
        bonds = self._draws.bonds(state, [n.operator for n in nodes])
        if bonds is not None:
            answer["bonds"] = bonds
        if prepared.provenance is not None:
            answer["provenance"] = provenance_json(prepared.provenance)
        beacon = await self._draws.beacon(verdict.draw)
        if beacon is not None:
            answer["beacon"] = beacon
        pending = PendingInference(
            inference_id=job.request_id,
            model=job.model,
            policy=job.policy,
            request_digest=job.digest,
            entry=entry.to_bytes(),
            answer=answer,
            cites=answer_cites(nodes, state, prepared.provenance, verdict.disputes, beacon),
            known_size=prepared.known_size,
        )
        await self._store.reserve(pending)
        fees = self._draws.fees(
            prepared.extra.get("client"),
            prepared.payment,
            [n.node_id for n in nodes],
            job.request_id,
        )
        if fees and self._ledger is not None:
            index = (await self._ledger.append([entry, *fees]))[0]
        else:
            index = await self._log.add_async(pending.entry)
        stored = await self._store.commit(index, pending)
        return dict(stored.response)

    async def _run(
        self,
        prepared: Prepared,
        nodes: Sequence[Candidate],
        sink: TokenSink | None,
        *,
        busy: frozenset[str] = frozenset(),
    ) -> tuple[list[tuple[Candidate, NodeAnswer]], tuple[Failure, ...]]:
        """The verified answers of ``nodes`` (one slot each), failing nodes replaced by nodes
        of operators not in ``busy``, and the failed attempts."""
        gathered = await gather(
            nodes,
            lambda node: self._attempt(node, prepared.job, sink),
            lambda tried, used: next(
                iter(self._choose(prepared, 1, frozenset(tried), frozenset(used) | busy)), None
            ),
            attempts_per_slot=self._options.attempts_per_slot,
            timeout=self._options.job_timeout * self._options.attempts_per_slot,
        )
        gathered.report(self._observe)
        return list(gathered.answers), gathered.failures

    async def _attempt(
        self, node: Candidate, job: CompletionJob, sink: TokenSink | None
    ) -> NodeAnswer:
        """One completion job on ``node``: post it, stream its tokens, verify its answer."""
        envelope = job.sign_for(node.node_id, self._key, timeout=self._options.job_timeout)
        body = {"job": envelope.to_json(), "request": dict(job.canonical)}
        try:
            result = await self._transport.post(node, body, sink)
            return check_answer(
                result,
                node,
                node_key(node.public_key),
                job,
                max_tensor_bytes=self._options.max_result_bytes,
            )
        finally:
            if sink is not None:
                sink.failed(node.node_id)  # a no-op for a node that answered: it has finished
