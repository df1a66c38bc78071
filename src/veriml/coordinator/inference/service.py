"""The inference service: run one request on nodes, verify, decide, log once, answer.

``POST /v1/inferences`` (docs/network.md, "Inference request and answer") goes through these
steps, in order; nothing is written anywhere before step 7:

1. resolve the model reference (``NotFoundError`` -> 404);
2. parse the policy (``FormatError`` -> 400) and decode every input tensor within the size
   limit, then check them against the model's IO signature (``InvalidTensorError`` /
   ``InvalidInputError`` naming the input) -- all before any node is asked;
3. with an ``Idempotency-Key``, a request already answered returns its stored answer (the same
   key for another request is a ``ConflictError``);
4. with a ledger, check the payment (``PaymentRequiredError`` -> 402 when the rules charge fees and
   the request carries no signed payment covering them), draw the request's secret from the
   current beacon epoch (:mod:`veriml.protocol.draw`), pick ``N`` live nodes of distinct
   bonded operators in the stake-weighted order that secret gives (``NodeUnavailableError`` -> 503
   when there are not enough), and post each a job signed by the coordinator key;
5. verify each answer's receipt under the node's **registered** key and check it names this
   request (request id and digest, model, policy, input digests); a node that fails, times out
   or answers with evidence that does not verify is replaced by another (bounded attempts);
6. decide the verdict with :func:`veriml.verify.policy.decide` (a rejected verdict is still an
   answer, logged and returned); it reveals the draw secret, says when the answer becomes final
   (``final_after``: the challenge window), and a drawn spot check that no node of another
   operator carried out is refused (503), not logged;
7. write a pending ``inferences`` row (the answer without ``log``, the entry and its leaf
   hash), append **one** :class:`~veriml.ledger.entries.InferenceEntry` to the log (with its
   fees, as one group, when the request pays), prove its inclusion and that of every entry it
   cites at the published checkpoint that covers it, complete the row, return the answer.

The log entry is the request's single point of commitment: a crash before step 7 leaves no
trace, and the entry is one atomic append, so a request is logged completely or not at all.
A crash after the append leaves a pending row that :mod:`~veriml.coordinator.db.inferences`
completes from the log (on ``GET``, on a retry with the same ``Idempotency-Key``, and at
start-up): the answer is never lost and the request is never logged twice.

Crash tests inject ``on_fault``, called right after the append
(:mod:`veriml.coordinator.inference.faults`); production passes none.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import numpy.typing as npt
import onnx
from sqlalchemy.engine import Engine

from veriml.coordinator.db.inferences import InferenceStore, PendingInference
from veriml.coordinator.inference.faults import AFTER_LOG_APPEND, Fault
from veriml.coordinator.inference.requests import (
    EpochSource,
    RequestDraws,
    answer_cites,
    check_request_id,
    provenance_json,
    requester,
    same_requester,
)
from veriml.coordinator.inference.wire import NodeAnswer, answer_json, check_answer, decode_inputs
from veriml.coordinator.nodes.dispatch import JobSpec, dispatch
from veriml.coordinator.nodes.scheduler import (
    Candidate,
    Failure,
    check_retry_options,
    gather,
    node_key,
    pick,
)
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import (
    ConflictError,
    Error,
    FormatError,
    NodeUnavailableError,
    NotFoundError,
    StorageError,
)
from veriml.core.keys import SigningKey
from veriml.core.receipt import request_digest
from veriml.core.tensors import tensor_digest
from veriml.ledger.entries import InferenceEntry
from veriml.models import IOSignature
from veriml.protocol.draw import Draw
from veriml.runtime import canonical_request
from veriml.tlog.log import Log
from veriml.verify.policy import (
    DisputeRef,
    Policy,
    SpotReveal,
    Verdict,
    decide,
    disputed_pairs,
    spot_checked,
    spot_commitment,
)
from veriml.verify.tolerance import OutputBounds, output_bounds

if TYPE_CHECKING:
    from veriml.coordinator.disputes.service import DisputeService
    from veriml.coordinator.ledger.service import LedgerBook

__all__ = [
    "InferenceOptions",
    "InferenceService",
    "ResolvedModel",
]

Array = npt.NDArray[Any]
_log = logging.getLogger(__name__)
_LOOKUP_CACHE = 256
_BOUNDS_CACHE = 64


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """What the service needs of a hub model: its digest, IO signature and the log indexes of
    its provenance (its ``model`` and ``namespace`` entries), which every answer cites."""

    digest: Digest
    io: IOSignature
    provenance: tuple[int, int | None] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InferenceOptions:
    """Timeouts (seconds), retry bound and size limits of the inference service."""

    job_timeout: float = 60.0
    attempts_per_slot: int = 3
    live_within: float = 15.0
    max_tensor_bytes: int = 64 << 20
    publish_timeout: float = 30.0
    lookup_ttl: float = 1.0

    def __post_init__(self) -> None:
        check_retry_options(
            "inference",
            job_timeout=self.job_timeout,
            attempts_per_slot=self.attempts_per_slot,
            live_within=self.live_within,
        )


@dataclass(frozen=True, slots=True)
class _Request:
    """One request as the policies need it: the shared job spec, the decoded inputs (for
    disputes and the tensor store), its draw, the model's provenance, the client's signed
    payment and the size of its last checkpoint."""

    spec: JobSpec
    arrays: Mapping[str, Array]
    draw: Draw
    provenance: tuple[int, int | None] | None = None
    payment: Envelope | None = None
    known_size: int | None = None


# -- the service ---------------------------------------------------------------------------------


class InferenceService:
    """Runs inference requests on nodes (see the module docstring for the steps).

        Its collaborators are passed in, so it runs the same inside the app and in tests:
        ``resolve_model(ref)`` and ``list_nodes(model)`` are blocking lookups (called in a worker
        thread), ``node_failed(node_id)`` is told when a node did not answer, and ``observe`` (for
        metrics) gets ``("verdict", "<policy kind>/<outcome>")`` per answer,
        ``("node-failure", "unavailable" | "unverified")`` per failed attempt and
        ``("dispute", "<winner>")`` per dispute a request opened.

        The verification policies (docs/verification.md) need three more collaborators:
        ``disputes`` settles a spot check that disagrees and every dissenting quorum answer (without
        it the disagreement is only recorded by the verdict); ``load_model(digest)`` (blocking)
        gives the model whose output bounds tolerance mode compares with; ``store_tensors(arrays)``
        (blocking) keeps every request's inputs by digest before the log append, so watchers and
        disputes can fetch them. With a ``ledger``, a signed client pays ``fee_per_job`` to each
        node that answered (its signed payment checked before any node runs, the fees logged with
        the inference entry), nodes are scheduled under the latest ``state`` entry, and answers
        carry their operators' stake proofs. ``beacon()`` gives the current randomness epoch.
    ``on_fault(point)``, injected by crash tests only, runs at the points named in
    :mod:`veriml.coordinator.inference.faults`.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        log: Log,
        key: SigningKey,
        http: httpx.AsyncClient,
        resolve_model: Callable[[str], ResolvedModel],
        list_nodes: Callable[[Digest], Sequence[Candidate]],
        node_failed: Callable[[str], None] | None = None,
        observe: Callable[[str, str], None] | None = None,
        options: InferenceOptions | None = None,
        disputes: DisputeService | None = None,
        load_model: Callable[[Digest], onnx.ModelProto] | None = None,
        store_tensors: Callable[[Mapping[str, Array]], object] | None = None,
        ledger: LedgerBook | None = None,
        beacon: EpochSource | None = None,
        on_fault: Fault | None = None,
    ) -> None:
        self._log = log
        self._disputes = disputes
        self._load_model = load_model
        self._store_tensors = store_tensors
        self._ledger = ledger
        self._draws = RequestDraws(beacon=beacon, ledger=ledger)
        self._bounds: dict[Digest, OutputBounds] = {}
        self._key = key
        self._http = http
        self._resolve_model = resolve_model
        self._list_nodes = list_nodes
        self._node_failed = node_failed
        self._observe = observe or (lambda event, value: None)
        self._options = options or InferenceOptions()
        self._store = InferenceStore(engine, log, publish_timeout=self._options.publish_timeout)
        self._lookups: dict[str, tuple[float, ResolvedModel, list[Candidate]]] = {}
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._on_fault = on_fault

    async def get(self, inference_id: str) -> dict[str, Any]:
        """The stored answer of ``inference_id`` (``NotFoundError`` if there is none); a row a
        crash left pending is completed from the log first."""
        stored = await asyncio.to_thread(self._store.recover, inference_id)
        if stored is None:
            raise NotFoundError("no inference with this id", id=inference_id[:200])
        return stored[1]

    def recover_pending(self) -> int:
        """Complete the answers a crash left pending (blocking; run at start-up)."""
        return self._store.recover_all()

    async def create(
        self,
        request: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        client: str | None = None,
        payment: Envelope | None = None,
        known_size: int | None = None,
        epoch: int | None = None,
    ) -> dict[str, Any]:
        """Answer one ``{"model", "inputs", "policy"}`` request (module docstring, steps 1-7).

        ``client`` is the key id of a verified request signature: it is logged with the
        request (``request.client`` in the entry) and returned as ``request.client``.
        ``payment`` is its signed payment (``X-Veriml-Payment``); ``known_size`` the size of
        the client's last checkpoint (``X-Veriml-Log-Size``), which the answer proves
        consistency from; ``epoch`` the randomness epoch the client named (``X-Veriml-Epoch``).
        """
        model_ref = request.get("model")
        if not isinstance(model_ref, str) or not 0 < len(model_ref) <= 512:
            raise FormatError("model must be a name, name@version or sha256 digest")
        policy_text = request.get("policy", "none")
        if not isinstance(policy_text, str):
            raise FormatError("policy must be a string: none, quorum:N/K, spot:P or optimistic:W")
        unknown = sorted(set(request) - {"model", "inputs", "policy", "visibility"})
        if unknown:
            raise FormatError("inference request has unknown members", members=",".join(unknown))
        policy = Policy.parse(policy_text)
        request_id = str(uuid.uuid4()) if idempotency_key is None else idempotency_key
        check_request_id(request_id)
        # 1. The model, and the nodes that may run it (blocking lookups, off the event loop).
        model, candidates = await self._lookup(model_ref)
        # 2. Inputs decoded and checked against the model before any node is asked.
        arrays, inputs_json = decode_inputs(
            model.io, request.get("inputs"), max_tensor_bytes=self._options.max_tensor_bytes
        )
        input_digests = {name: tensor_digest(a) for name, a in arrays.items()}
        digest = request_digest(canonical_request(model.digest, input_digests, str(policy)))
        # The request's draw secret: who runs it, whether a spot check runs. Every job of a
        # spot:P request commits to it; the verdict reveals it.
        draw = self._draws.draw(request_id, epoch)
        spec = JobSpec(
            request_id=request_id,
            model=model.digest,
            input_digests=input_digests,
            inputs_json=inputs_json,
            policy=str(policy),
            trace=policy.kind == "optimistic",
            spot=spot_commitment(draw.secret) if policy.kind == "spot" else None,
            challenge_window=None
            if self._draws.rules is None
            else self._draws.rules.challenge_window,
        )
        job = _Request(spec, arrays, draw, model.provenance, payment, known_size)
        extra = requester(client, request.get("visibility"))
        # Every node that answers is paid: a spot check may add one.
        jobs = policy.nodes + (1 if policy.kind == "spot" else 0)
        await asyncio.to_thread(self._draws.check_payment, client, payment, request_id, jobs)
        if idempotency_key is None:
            return await self._answer(job, digest, policy, candidates, extra)
        # 3. One answer per key: later requests with the key get the stored answer.
        lock, users = self._locks.get(request_id, (asyncio.Lock(), 0))
        self._locks[request_id] = (lock, users + 1)
        try:
            async with lock:
                try:
                    stored = await asyncio.to_thread(self._store.recover, request_id)
                except NotFoundError as exc:
                    raise StorageError(
                        "another replica is answering this Idempotency-Key; retry",
                        key=request_id,
                    ) from exc
                if stored is not None:
                    if stored[0] != digest:
                        raise ConflictError(
                            "this Idempotency-Key was used for another request", key=request_id
                        )
                    same_requester(stored[1], client, request_id)
                    return stored[1]
                return await self._answer(job, digest, policy, candidates, extra)
        finally:
            users = self._locks[request_id][1]
            if users == 1:
                del self._locks[request_id]
            else:
                self._locks[request_id] = (lock, users - 1)

    async def _lookup(self, ref: str) -> tuple[ResolvedModel, list[Candidate]]:
        """The model and its candidate nodes, reused for ``lookup_ttl`` seconds: under load
        this saves two queries per request; a failing node clears it."""
        now = time.monotonic()
        hit = self._lookups.get(ref)
        if hit is not None and hit[0] > now:
            return hit[1], hit[2]

        def lookup() -> tuple[ResolvedModel, list[Candidate]]:
            model = self._resolve_model(ref)
            return model, list(self._list_nodes(model.digest))

        model, candidates = await asyncio.to_thread(lookup)
        if self._options.lookup_ttl > 0:
            if len(self._lookups) >= _LOOKUP_CACHE:
                self._lookups.clear()
            self._lookups[ref] = (now + self._options.lookup_ttl, model, candidates)
        return model, candidates

    async def _attempt(self, node: Candidate, spec: JobSpec, digest: Digest) -> NodeAnswer:
        try:
            result = await dispatch(
                self._http, node, spec, self._key, timeout=self._options.job_timeout
            )
        except NodeUnavailableError:
            self._lookups.clear()
            if self._node_failed is not None:
                await asyncio.to_thread(self._node_failed, node.node_id)
            raise
        outputs = check_answer(result, node, node_key(node.public_key), spec, digest)
        return NodeAnswer(result, outputs)

    async def _answer(
        self,
        request: _Request,
        digest: Digest,
        policy: Policy,
        candidates: Sequence[Candidate],
        extra: Mapping[str, str],
    ) -> dict[str, Any]:
        spec = request.spec
        state = await self._draws.state()
        # 4. Nodes of distinct bonded operators, in the order the request's draw gives.
        now = time.time()
        live = self._options.live_within

        def choose(count: int, tried: frozenset[str], busy: frozenset[str]) -> list[Candidate]:
            return pick(
                candidates,
                spec.model,
                count,
                now=now,
                live_within=live,
                draw=request.draw.secret,
                exclude_nodes=tried,
                exclude_operators=busy,
            )

        first = choose(policy.nodes, frozenset(), frozenset())
        if len(first) < policy.nodes:
            raise NodeUnavailableError(
                "not enough live nodes of distinct operators serve this model",
                model=spec.model,
                policy=str(policy),
                needed=policy.nodes,
                available=len(first),
            )
        # 5. Run, verify, and replace failing nodes.
        answers, failures = await self._run(first, spec, digest, choose)
        if len(answers) < policy.needed:
            raise NodeUnavailableError(
                "not enough nodes answered with a verified receipt",
                needed=policy.needed,
                answered=len(answers),
                failures="; ".join(f.error.diagnostics()[:200] for f in failures[-4:]),
            )
        # 6. The verdict, from the verified answers (and the disputes they led to).
        bounds = await self._output_bounds(spec.model) if policy.compare == "tolerance" else None
        spot: SpotReveal | None = None
        if policy.kind == "spot":
            checked = spot_checked(policy, request.draw.secret)
            spot = SpotReveal(checked)
            if checked:
                # The checker: another operator's node, running the very same request. A drawn
                # check that no such node carries out is refused, not logged unchecked.
                tried = frozenset(n.node_id for n, _ in answers)
                busy = frozenset(n.operator for n, _ in answers)
                checker = choose(1, tried, busy)
                if checker:
                    answers += (await self._run(checker, spec, digest, choose, busy=busy))[0]
                if len({n.operator for n, _ in answers}) < 2:
                    raise NodeUnavailableError(
                        "the spot check was drawn and no node of another operator carried it out",
                        request=spec.request_id,
                        policy=str(policy),
                    )
        final_after = self._draws.final_after(policy)

        def verdict_of(disputes: Sequence[DisputeRef]) -> Verdict:
            return decide(
                policy,
                [(n.node_id, n.operator, a.outputs) for n, a in answers],
                tensors=[a.result.outputs for _, a in answers] if bounds is not None else None,
                bounds=bounds,
                spot=spot,
                final_after=final_after,
                disputes=disputes,
                draw=request.draw,
            )

        verdict = verdict_of(())
        refs = await self._disputes_for(request, policy, verdict, answers)
        if refs:
            verdict = verdict_of(refs)
        self._observe("verdict", f"{policy.kind}/{verdict.outcome}")
        chosen = next(
            (a for _, a in answers if dict(a.outputs) == dict(verdict.outputs)), answers[0][1]
        )
        entry = InferenceEntry(
            request_id=spec.request_id,
            request_digest=digest,
            model=spec.model,
            policy=spec.policy,
            receipts=tuple(a.result.receipt for _, a in answers),
            verdict=verdict,
            extra=extra,
            state=state,
        )
        # 7. The inputs by digest, a pending row, one log entry (with its fees), its proof and
        # the proofs of what it cites, the completed row.
        if self._store_tensors is not None:
            await asyncio.to_thread(self._store_tensors, request.arrays)
        nodes = [n for n, _ in answers]
        answer = answer_json(spec, verdict, answers, chosen, extra, tolerance=bounds is not None)
        bonds = self._draws.bonds(state, [n.operator for n in nodes])
        if bonds is not None:
            answer["bonds"] = bonds
        if request.provenance is not None:
            answer["provenance"] = provenance_json(request.provenance)
        beacon = await self._draws.beacon(request.draw)
        if beacon is not None:
            answer["beacon"] = beacon
        pending = PendingInference(
            inference_id=spec.request_id,
            model=spec.model,
            policy=spec.policy,
            request_digest=digest,
            entry=entry.to_bytes(),
            answer=answer,
            cites=answer_cites(nodes, state, request.provenance, verdict.disputes, beacon),
            known_size=request.known_size,
        )
        await self._store.reserve(pending)
        index = await self._append(entry, pending, extra.get("client"), request.payment, nodes)
        if self._on_fault is not None:
            self._on_fault(AFTER_LOG_APPEND)
        stored = await self._store.commit(index, pending)
        return dict(stored.response)

    async def _append(
        self,
        entry: InferenceEntry,
        pending: PendingInference,
        client: str | None,
        payment: Envelope | None,
        nodes: Sequence[Candidate],
    ) -> int:
        """Log the inference entry, with its fees right after it (one group, checked by the
        ledger book) when the request pays; its index."""
        fees = self._draws.fees(client, payment, [n.node_id for n in nodes], entry.request_id)
        if not fees or self._ledger is None:
            return await self._log.add_async(pending.entry)
        return (await self._ledger.append([entry, *fees]))[0]

    async def _run(
        self,
        nodes: Sequence[Candidate],
        spec: JobSpec,
        digest: Digest,
        choose: Callable[[int, frozenset[str], frozenset[str]], list[Candidate]],
        *,
        busy: frozenset[str] = frozenset(),
    ) -> tuple[list[tuple[Candidate, NodeAnswer]], tuple[Failure, ...]]:
        """The verified answers of ``nodes`` (one slot each), failing nodes replaced by nodes
        of operators not in ``busy``, and the failed attempts."""
        gathered = await gather(
            nodes,
            lambda node: self._attempt(node, spec, digest),
            lambda tried, used: next(
                iter(choose(1, frozenset(tried), frozenset(used) | busy)), None
            ),
            attempts_per_slot=self._options.attempts_per_slot,
            timeout=self._options.job_timeout * self._options.attempts_per_slot,
        )
        gathered.report(self._observe)
        return list(gathered.answers), gathered.failures

    async def _output_bounds(self, model: Digest) -> OutputBounds:
        """Tolerance bounds of ``model``'s outputs, computed once per model."""
        bounds = self._bounds.get(model)
        if bounds is None:
            if self._load_model is None:
                raise NotFoundError("tolerance mode needs the model, and this service has none")
            load = self._load_model
            bounds = await asyncio.to_thread(lambda: output_bounds(load(model)))
            if len(self._bounds) >= _BOUNDS_CACHE:
                self._bounds.clear()
            self._bounds[model] = bounds
        return bounds

    async def _disputes_for(
        self,
        request: _Request,
        policy: Policy,
        verdict: Verdict,
        answers: Sequence[tuple[Candidate, NodeAnswer]],
    ) -> list[DisputeRef]:
        """Settle, side by side, the disagreements a verdict leaves before it is logged: the
        pairs :func:`~veriml.verify.policy.disputed_pairs` names."""
        if self._disputes is None:
            return []
        parties = [(n.node_id, n.operator) for n, _ in answers]
        pairs = [(answers[d], answers[c]) for d, c in disputed_pairs(policy, verdict, parties)]
        if not pairs:
            return []
        disputes = self._disputes

        async def one(
            defendant: tuple[Candidate, NodeAnswer], challenger: tuple[Candidate, NodeAnswer]
        ) -> DisputeRef | None:
            try:
                return await disputes.between_nodes(
                    spec=request.spec,
                    inputs=request.arrays,
                    defendant=(defendant[0], defendant[1].result.receipt),
                    challenger=(challenger[0], challenger[1].result.receipt),
                    mode=policy.compare,
                )
            except Error as exc:
                # The verdict then records the disagreement without a ruling (a spot check
                # is rejected; a quorum keeps its majority).
                _log.warning(
                    "dispute of %s against %s not settled: %s",
                    request.spec.request_id,
                    defendant[0].node_id,
                    exc.diagnostics(),
                )
                return None

        refs = [r for r in await asyncio.gather(*(one(d, c) for d, c in pairs)) if r is not None]
        for ref in refs:
            self._observe("dispute", ref.winner)
        return refs
