"""Disputes hosted by the coordinator: bisection, referee, settlement in the log.

docs/verification.md ("Disputes") is the spec. One engine serves two kinds of dispute:

- **coordinator-opened** (a spot check that disagrees, a dissenting quorum answer): both
  parties are nodes (``NodeParty``); the inference waits for the verdict, whose log index it
  records;
- **external** (``POST /v1/disputes``): the challenger is a remote account (a client, a
  watcher, a node) moving through HTTP (``RemoteParty``); the defendant is a node. Before
  anything is asked or logged, :mod:`veriml.coordinator.disputes.admission` checks the
  answer's challenge window, the challenger's signed bond, that the claim was never disputed
  and that the defendant has room for another dispute.

The parties live in :mod:`veriml.coordinator.disputes.parties`, the game once both stand by a
trace in :mod:`veriml.coordinator.disputes.game`, the run and its stored form in
:mod:`veriml.coordinator.disputes.run` and :mod:`veriml.coordinator.db.disputes`.

A party is anything with the small :class:`Party` interface: ``open`` (the trace commitment
it stands by), ``reveal(index)`` (a trace entry and its RFC 9162 inclusion proof) and
``tensors(names)``. The engine checks every answer (:func:`~veriml.verify.dispute.check_reveal`,
tensor digests), so a party is trusted with nothing. The steps (steps 2-4 are played by
:func:`veriml.coordinator.disputes.game.play`):

1. each party opens: a node whose receipt has no trace is first sent the same request again as
   a traced job (a *retrace*); its outputs must repeat the receipt's, or it loses
   (``inconsistent``); a commitment whose size is not the model's trace size loses the same;
2. :class:`~veriml.verify.dispute.Bisection` asks both parties for one index per round until it
   finds the first operator whose inputs they agree on and whose output differs (or ends early:
   ``inconsistent``, ``no-difference``);
3. the agreed input tensors of that operator are gathered (graph inputs from the stored request,
   intermediate ones from the defendant, else the challenger, each checked by digest) and, in
   tolerance mode, both parties' output tensors;
4. :func:`~veriml.verify.dispute.referee` re-executes that one operator (in a worker thread).

A party that misses a move's deadline (``timeout``; a busy node is asked again until then) or
answers with a reveal that does not verify (``invalid-proof``) loses at once. When **both**
fault on one move the defendant is not slashed: the challenger, who started the dispute, loses
(winner ``defendant``, the challenger's reason); ``neither`` is only the referee's finding that
both outputs are wrong. Settlement appends, through the ledger book, the ``verdict`` entry and
the settlement the ledger's rule derives from it (slashes of the losers' operators, the winning
challenger's reward, reputation). The ``challenge`` entry was appended when the dispute opened.

Open disputes are stored (:class:`~veriml.coordinator.db.disputes.DisputeStore`) when they
open and at every move; :meth:`DisputeService.resume` brings them back after a restart (their
bisection replayed from the recorded reveals, the pending move asked again with a fresh
deadline). Settled disputes are kept in memory for ``GET /v1/disputes/{id}`` up to
:attr:`DisputeOptions.keep_settled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy.typing as npt
import onnx

from veriml.coordinator.db.disputes import DisputeRecord, DisputeStore, PartyRecord
from veriml.coordinator.disputes.admission import (
    TooManyDisputesError,
    bond_authorization,
    check_challenge,
    check_window,
    commitment_of,
    digest_map,
    receipt_of,
)
from veriml.coordinator.disputes.game import GRACE, ask_both, play
from veriml.coordinator.disputes.parties import (
    EMPTY_TRACE,
    Claim,
    NodeParty,
    Party,
    PartyFaultError,
    RemoteParty,
    check_commitment,
    receipt_claim,
)
from veriml.coordinator.disputes.run import DisputeRun, Outcome, husk, record_of, revived
from veriml.coordinator.nodes.dispatch import JobSpec
from veriml.coordinator.nodes.scheduler import Candidate
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import (
    Check,
    ConflictError,
    Error,
    FormatError,
    NotFoundError,
    StorageError,
    VerificationError,
)
from veriml.core.keys import SigningKey
from veriml.core.receipt import TraceCommitment
from veriml.core.tensors import tensor_digest, tensor_to_json
from veriml.core.timestamps import format_time, parse_time
from veriml.ledger.entries import ChallengeEntry, DisputeVerdictEntry
from veriml.verify.dispute import TraceLayout
from veriml.verify.policy import DisputeRef, Winner

__all__ = [
    "Claim",
    "DisputeOptions",
    "DisputeRun",
    "DisputeService",
    "LedgerAppender",
    "NodeParty",
    "Party",
    "PartyFaultError",
    "RemoteParty",
    "bonded",
    "receipt_claim",
]

Array = npt.NDArray[Any]
Mode = str
_log = logging.getLogger(__name__)
_CHALLENGE_MEMBERS = frozenset({"inference", "node", "trace", "outputs", "mode", "authorization"})

_AUTHORIZATION: ContextVar[Envelope | None] = ContextVar("veriml_bond", default=None)


@contextlib.contextmanager
def bonded(authorization: Envelope | None) -> Iterator[None]:
    """Within the block, a checked dispute a remote account opens (a prefill challenge,
    settled by :meth:`DisputeService.settle_checked`) locks its bond with ``authorization``:
    the challenger's signed ``challenge`` request, checked by the route that took it."""
    token = _AUTHORIZATION.set(authorization)
    try:
        yield
    finally:
        _AUTHORIZATION.reset(token)


class LedgerAppender(Protocol):
    """What the engine needs of the coordinator's ledger book (``coordinator.ledger``)."""

    async def append(self, entries: Sequence[Any]) -> list[int]: ...

    def state(self) -> Any: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DisputeOptions:
    """Deadlines (seconds), limits and the economic rules of a dispute (coordinator settings).

    ``max_open_per_node`` bounds the external disputes open against one defendant;
    ``challenge_window`` is the window of an answer with no ``final_after`` when the ledger
    logs no rules yet; ``retrace_retention`` how long a retraced node keeps the trace."""

    timeout: float = 60.0
    job_timeout: float = 60.0
    slash_fraction: float = 0.5
    reward_fraction: float = 0.5
    challenge_bond: int = 0
    challenge_window: float = 86_400.0
    max_open_per_node: int = 4
    retrace_retention: float = 86_400.0
    keep_settled: int = 1024
    max_tensor_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        fractions_ok = 0 <= self.slash_fraction <= 1 and 0 <= self.reward_fraction <= 1
        if not (self.timeout > 0 and self.job_timeout > 0 and fractions_ok):
            raise FormatError(
                "dispute timeouts must be positive and fractions within [0, 1]",
                timeout=self.timeout,
                slash_fraction=self.slash_fraction,
                reward_fraction=self.reward_fraction,
            )
        if self.challenge_bond < 0 or self.max_open_per_node < 1:
            raise FormatError(
                "challenge bond must be >= 0 and the disputes per node >= 1",
                bond=self.challenge_bond,
                max_open_per_node=self.max_open_per_node,
            )

    @property
    def lease(self) -> float:
        """How long a stored dispute stays this process's without a renewal: three sweeps
        (the app renews every ``min(60, timeout)`` seconds)."""
        return 3 * max(1.0, min(60.0, self.timeout)) + GRACE


def _now() -> str:
    return format_time(dt.datetime.now(dt.UTC))


class DisputeService:
    """Opens, drives, stores and settles disputes (module docstring); one per coordinator.

    ``load_model(digest)`` and ``load_tensor(digest)`` are blocking (run in worker threads):
    the hub's model and a stored request input; ``store_tensors(arrays)`` stores a dispute's
    inputs by digest (so a restart can reload them). ``list_nodes(model)`` gives the live
    nodes serving a model and ``find_node(node_id)`` any registered one (a node the scheduler
    set aside because it was busy is still a defendant). ``book`` appends
    ledger entries (validated against the folded state) and gives the state. ``store`` keeps
    open disputes across restarts; ``answered_at(inference)`` is when an answer was recorded
    (where a challenge window without ``final_after`` starts).
    """

    def __init__(
        self,
        *,
        key: SigningKey,
        http: httpx.AsyncClient,
        load_model: Callable[[Digest], onnx.ModelProto],
        book: LedgerAppender,
        load_tensor: Callable[[Digest], Array] | None = None,
        store_tensors: Callable[[Mapping[str, Array]], Any] | None = None,
        list_nodes: Callable[[Digest], Sequence[Candidate]] | None = None,
        find_node: Callable[[str], Candidate | None] | None = None,
        store: DisputeStore | None = None,
        answered_at: Callable[[str], str | None] | None = None,
        options: DisputeOptions | None = None,
    ) -> None:
        self._key = key
        self._http = http
        self._load_model = load_model
        self._load_tensor = load_tensor
        self._store_tensors = store_tensors
        self._list_nodes = list_nodes
        self._find = find_node
        self._book = book
        self._store = store
        self._answered_at = answered_at
        self.options = options or DisputeOptions()
        self._runs: OrderedDict[str, DisputeRun] = OrderedDict()
        self._layouts: dict[Digest, tuple[onnx.ModelProto, TraceLayout]] = {}
        # Challenges admitted and not yet logged: their claims, and their defendants.
        self._opening: set[Digest] = set()
        self._opening_against: Counter[str] = Counter()

    # -- public API --------------------------------------------------------------------------

    def get(self, dispute_id: str) -> DisputeRun:
        """The dispute ``dispute_id`` (``NotFoundError`` when unknown or long settled)."""
        run = self._runs.get(dispute_id)
        if run is None:
            raise NotFoundError("no dispute with this id", id=dispute_id[:200])
        return run

    async def check_window(self, answer: Mapping[str, Any]) -> None:
        """Raise :class:`~veriml.coordinator.disputes.admission.WindowClosedError` once the
        challenge window of the stored ``answer`` has closed (every policy has one)."""
        inference = str(answer.get("id", ""))
        answered = None
        if self._answered_at is not None and inference:
            answered = await asyncio.to_thread(self._answered_at, inference)
        state = await asyncio.to_thread(self._book.state)
        rules = getattr(state, "rules", None)
        window = rules.challenge_window if rules is not None else self.options.challenge_window
        check_window(answer, answered_at=answered, window=window)

    async def between_nodes(
        self,
        *,
        spec: JobSpec,
        inputs: Mapping[str, Array],
        defendant: tuple[Candidate, Envelope],
        challenger: tuple[Candidate, Envelope],
        mode: Mode = "bitwise",
    ) -> DisputeRef:
        """Dispute ``defendant``'s receipt with ``challenger``'s (both nodes, one request);
        wait for the verdict and return its reference (coordinator-opened disputes)."""
        parties = [
            self._node_party(node, spec, *_claimed(receipt), receipt=receipt)
            for node, receipt in (defendant, challenger)
        ]
        run = await self.open(
            inference=spec.request_id,
            defendant=parties[0],
            challenger=parties[1],
            receipt=defendant[1],
            mode=mode,
            model=spec.model,
            inputs=inputs,
            bond=0,
            policy=spec.policy,
        )
        await run.settled.wait()
        return run.ref()

    async def challenge(
        self, answer: Mapping[str, Any], body: Mapping[str, Any], *, account: str
    ) -> DisputeRun:
        """Open an external dispute: ``account`` (a verified request signer) challenges the
        receipt of node ``body["node"]`` in the stored inference ``answer``, with its signed
        bond ``body["authorization"]`` (module docstring of ``dispute_admission``)."""
        unknown = sorted(set(body) - _CHALLENGE_MEMBERS)
        if unknown:
            raise FormatError("dispute request has unknown members", members=",".join(unknown))
        node_id = body.get("node")
        if not isinstance(node_id, str):
            raise FormatError("dispute request needs the defendant node id")
        claim = Claim(
            account=account,
            outputs=digest_map(body.get("outputs"), "outputs"),
            trace=commitment_of(body.get("trace")),
        )
        verdict = answer.get("verdict") or {}
        mode = body.get("mode", verdict.get("mode", "bitwise"))
        if mode not in ("bitwise", "tolerance"):
            raise FormatError("dispute mode must be bitwise or tolerance", got=str(mode)[:40])
        receipt = receipt_of(answer, node_id)
        predicate, outputs = receipt_claim(receipt)
        if set(claim.outputs) != set(outputs):
            raise FormatError(
                "the challenge must claim the receipt's outputs",
                receipt=",".join(sorted(outputs))[:200],
                challenge=",".join(sorted(claim.outputs))[:200],
            )
        inference = str(answer.get("id", predicate.request_id))
        bond = self.options.challenge_bond
        authorization = bond_authorization(
            body.get("authorization"), signer=account, inference=inference, node=node_id, bond=bond
        )
        provisional = self._challenge_entry(
            str(uuid.uuid4()),
            inference,
            node_id,
            receipt,
            (predicate.trace or EMPTY_TRACE, claim.trace or EMPTY_TRACE),
            claim,
            mode,
            bond,
            authorization,
        )
        async with self._admitted(provisional, limit=True):
            node = await asyncio.to_thread(self._find_node, predicate.model_digest, node_id)
            inputs = await asyncio.to_thread(self._stored_inputs, predicate.inputs)
            spec = JobSpec(
                request_id=predicate.request_id,
                model=predicate.model_digest,
                input_digests=dict(predicate.inputs),
                inputs_json={name: tensor_to_json(a) for name, a in inputs.items()},
                policy=predicate.policy,
            )
            return await self.open(
                inference=inference,
                defendant=self._node_party(node, spec, predicate.trace, outputs, receipt=receipt),
                challenger=RemoteParty(claim),
                receipt=receipt,
                mode=mode,
                model=predicate.model_digest,
                inputs=inputs,
                bond=bond,
                authorization=authorization,
                policy=predicate.policy,
                admitted=True,
            )

    @contextlib.asynccontextmanager
    async def admitting(
        self,
        *,
        inference: str,
        defendant: str,
        receipt: Envelope,
        challenger: str,
        authorization: Envelope | None,
    ) -> AsyncIterator[None]:
        """Around a checked challenge of ``receipt`` by the account ``challenger`` (a
        prefill challenge, settled by :meth:`settle_checked`): refuse a claim disputed before
        or a bond not covered before any check runs, and hold the claim until it settles."""
        claim = Claim(challenger, {}, EMPTY_TRACE)
        bond = self.options.challenge_bond
        entry = self._challenge_entry(
            str(uuid.uuid4()),
            inference,
            defendant,
            receipt,
            (EMPTY_TRACE, EMPTY_TRACE),
            claim,
            "bitwise",
            bond,
            authorization,
        )
        async with self._admitted(entry, limit=False):
            yield

    async def submit(
        self,
        run: DisputeRun,
        *,
        reveal: Mapping[str, Any] | None = None,
        tensors: Mapping[str, Array] | None = None,
    ) -> None:
        """Take the challenger's move, then wait until it is asked again or the dispute
        settles (bounded: the defendant's move and the referee take at most a few deadlines).

        ``ConflictError`` when the challenger is not a remote party or is not asked for this move;
        ``FormatError`` for a malformed move (the move stays open until its deadline)."""
        challenger = run.challenger
        if run.status != "open" or not isinstance(challenger, RemoteParty):
            raise ConflictError("the dispute does not wait for this challenger", dispute=run.id)
        challenger.moved.clear()
        if reveal is not None:
            challenger.submit_reveal(reveal)
        if tensors is not None:
            challenger.submit_tensors(tensors)
        waiters = [
            asyncio.ensure_future(run.settled.wait()),
            asyncio.ensure_future(challenger.moved.wait()),
        ]
        bound = 2 * self.options.timeout + self.options.job_timeout
        try:
            await asyncio.wait(waiters, timeout=bound, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def resume(self) -> list[str]:
        """Drive again every stored dispute no live process drives (its lease ran out, or
        its coordinator shut down): node parties are reached again by node id, a remote
        challenger keeps moving through the same routes (the pending move is asked again
        with a fresh deadline), and the bisection is replayed from the recorded reveals. A
        stored dispute the ledger shows closed (settled just before a crash) is dropped.
        Returns the ids it resumed; run it at start-up and then now and again."""
        if self._store is None:
            return []
        records = await asyncio.to_thread(self._store.claim_due)
        if not records:
            return []
        refresh = getattr(self._book, "refresh", self._book.state)
        state = await asyncio.to_thread(refresh)
        resumed: list[str] = []
        for record in records:
            if record.id in self._runs:
                continue
            if record.id not in state.open_disputes:
                await asyncio.to_thread(self._store.delete, record.id)
                continue
            try:
                run, opened = await self._revive(record)
            except Error as exc:
                # The model or the inputs are gone: no one can be convicted; close it.
                _log.warning("dispute %s cannot resume: %s", record.id, exc.diagnostics())
                run, opened = husk(record), Outcome("none", "referee")
            self._runs[run.id] = run
            run.task = asyncio.create_task(self._drive(run, opened), name=f"dispute {run.id}")
            resumed.append(run.id)
        _log.info("resumed %d open disputes", len(resumed))
        return resumed

    async def maintain(self) -> None:
        """Keep this process's leases on the disputes it drives, and resume any whose
        process stopped driving them (the app runs this every sweep)."""
        if self._store is None:
            return
        live = [run_id for run_id, run in self._runs.items() if run.status == "open"]
        await asyncio.to_thread(self._store.renew, live)
        await self.resume()

    async def void_abandoned(
        self, *, older_than: float, now: dt.datetime | None = None
    ) -> list[str]:
        """Close, with no winner, every dispute the ledger shows open that no run in this
        process hosts, that has no stored record (which :meth:`resume` would bring back) and
        whose challenge is older than ``older_than`` seconds (a coordinator that lost its
        database, or a replica without one).

        A ``verdict`` with winner ``none`` and reason ``timeout`` closes it: nobody is slashed
        and the bond returns to the challenger. Returns the ids it closed.
        """
        current = now or dt.datetime.now(dt.UTC)
        state = await asyncio.to_thread(self._book.state)
        stored = await asyncio.to_thread(self._store.ids) if self._store is not None else set()
        stale = [
            dispute_id
            for dispute_id, open_dispute in sorted(state.open_disputes.items())
            if dispute_id not in self._runs
            and dispute_id not in stored
            and (current - parse_time(open_dispute.opened_at)).total_seconds() > older_than
        ]
        if stale:
            at = format_time(current)
            entries = [DisputeVerdictEntry(d, "none", "timeout", at) for d in stale]
            await self._book.append(entries)
            _log.warning("closed %d abandoned disputes without a winner", len(stale))
        return stale

    async def aclose(self) -> None:
        """Stop driving the open disputes (the coordinator is shutting down) and give up
        their leases, so the next start resumes them at once."""
        tasks = [run.task for run in self._runs.values() if run.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._store is not None:
            with contextlib.suppress(Error):
                await asyncio.to_thread(self._store.release)

    # -- opening -------------------------------------------------------------------------------

    def _node_party(
        self,
        node: Candidate,
        spec: JobSpec,
        trace: TraceCommitment | None,
        outputs: Mapping[str, Digest],
        *,
        receipt: Envelope | None = None,
    ) -> NodeParty:
        return NodeParty(
            http=self._http,
            key=self._key,
            node=node,
            spec=spec,
            outputs=outputs,
            trace=trace,
            job_timeout=self.options.job_timeout,
            max_tensor_bytes=self.options.max_tensor_bytes,
            retain=self.options.retrace_retention,
            receipt=receipt,
        )

    def _challenge_entry(
        self,
        dispute: str,
        inference: str,
        defendant: str,
        receipt: Envelope,
        traces: tuple[TraceCommitment, TraceCommitment],
        claim: Claim,
        mode: Mode,
        bond: int,
        authorization: Envelope | None,
    ) -> ChallengeEntry:
        """The ``challenge`` entry: both sides sign into it, the defendant with its receipt,
        the challenger with its signed challenge request (``authorization``) or, a node, with
        its own signed statement (``claim.statement``)."""
        statement = {} if claim.statement is None else {"statement": claim.statement.to_json()}
        return ChallengeEntry(
            dispute=dispute,
            inference=inference,
            defendant={
                "node": defendant,
                "receipt": Digest.of(receipt.payload),
                "trace": traces[0].to_json(),
                "statement": receipt.to_json(),
            },
            challenger={
                "account": claim.account,
                **({} if claim.node is None else {"node": claim.node}),
                "trace": traces[1].to_json(),
                "outputs": dict(claim.outputs),
                **statement,
            },
            mode=mode,
            bond=bond,
            deadline_seconds=self.options.timeout,
            at=_now(),
            authorization=authorization,
        )

    @contextlib.asynccontextmanager
    async def _admitted(self, entry: ChallengeEntry, *, limit: bool) -> AsyncIterator[None]:
        """Check ``entry`` before any work (claim, bond, ledger rules; with ``limit``, the
        disputes open against its defendant) and hold its claim while it opens, so the same
        claim cannot open twice at once."""
        state = await asyncio.to_thread(self._book.state)
        check_challenge(state, entry, opening=self._opening)
        node = entry.defendant_node
        if limit:
            open_now = sum(1 for d in state.open_disputes.values() if d.defendant == node)
            if open_now + self._opening_against[node] >= self.options.max_open_per_node:
                raise TooManyDisputesError(
                    "the defendant has as many open disputes as this coordinator hosts",
                    node=node[:200],
                    open=open_now,
                    limit=self.options.max_open_per_node,
                    retry_after=int(max(1.0, self.options.timeout)),
                )
        claim = entry.claim
        self._opening.add(claim)
        self._opening_against[node] += 1
        try:
            yield
        finally:
            self._opening.discard(claim)
            self._opening_against[node] -= 1
            if not self._opening_against[node]:
                del self._opening_against[node]

    async def open(
        self,
        *,
        inference: str,
        defendant: Party,
        challenger: Party,
        receipt: Envelope,
        mode: Mode,
        model: Digest,
        inputs: Mapping[str, Array],
        bond: int,
        authorization: Envelope | None = None,
        policy: str = "none",
        admitted: bool = False,
    ) -> DisputeRun:
        """Open a dispute between any two parties over ``receipt`` (the defendant's) for one
        request of ``model`` with graph ``inputs``: open both (step 1, retraces), store it,
        log the ``challenge`` entry, start the engine; the run settles by itself (await
        ``run.settled``). A ledger rule the challenge breaks (a claim disputed before, a bond
        not covered) raises before anything is asked, stored or logged."""
        dispute = str(uuid.uuid4())
        claims = (defendant.claim, challenger.claim)
        entry = self._challenge_entry(
            dispute,
            inference,
            claims[0].account,
            receipt,
            (claims[0].trace or EMPTY_TRACE, claims[1].trace or EMPTY_TRACE),
            claims[1],
            mode,
            bond,
            authorization,
        )
        if not admitted:
            async with self._admitted(entry, limit=False):
                return await self.open(
                    inference=inference,
                    defendant=defendant,
                    challenger=challenger,
                    receipt=receipt,
                    mode=mode,
                    model=model,
                    inputs=inputs,
                    bond=bond,
                    authorization=authorization,
                    policy=policy,
                    admitted=True,
                )
        run = DisputeRun(
            id=dispute,
            inference=inference,
            defendant=defendant,
            challenger=challenger,
            mode=mode,
            model=model,
            inputs=dict(inputs),
            receipt=receipt,
            claim=entry.claim,
            policy=policy,
        )
        _, layout = await self._layout(model)

        def sized(side: str, party: Party, commitment: TraceCommitment) -> TraceCommitment:
            check_commitment(side, commitment, layout)
            return commitment

        opened = await ask_both(
            run,
            lambda p: p.open(self.options.timeout),
            sized,
            limit=self.options.timeout + self.options.job_timeout,
        )
        # A party that produced no trace (its retrace failed) is recorded with the commitment
        # to nothing: the RFC 9162 root of the empty tree, size 0.
        committed = (defendant.claim.trace or EMPTY_TRACE, challenger.claim.trace or EMPTY_TRACE)
        entry = self._challenge_entry(
            dispute,
            inference,
            defendant.claim.account,
            receipt,
            committed,
            challenger.claim,
            mode,
            bond,
            authorization,
        )
        decided = None
        if isinstance(opened, Outcome):
            decided = {"decided": {"winner": opened.winner, "reason": opened.reason}}
        await self._keep(run, record_of(run, move=decided))
        try:
            indices = await self._book.append([entry])
        except BaseException:
            await self._forget(run.id)
            raise
        run.opened = indices[0]
        self._runs[run.id] = run
        while len(self._runs) > self.options.keep_settled:
            oldest = next(iter(self._runs.values()))
            if oldest.status == "open":
                break
            self._runs.popitem(last=False)
        await self._persist(run, opened=run.opened)
        run.task = asyncio.create_task(self._drive(run, opened), name=f"dispute {run.id}")
        return run

    # -- persistence ---------------------------------------------------------------------------

    async def _keep(self, run: DisputeRun, record: DisputeRecord) -> None:
        """Store a dispute about to be logged, and its inputs by digest (a restart reloads
        them: a coordinator-opened dispute's inputs are not stored with its answer yet)."""
        if self._store_tensors is not None:
            await asyncio.to_thread(self._store_tensors, run.inputs)
        if self._store is not None:
            await asyncio.to_thread(self._store.insert, record)

    async def _persist(self, run: DisputeRun, **values: Any) -> None:
        """Record the run's progress (``opened``, the move asked now); the reveals, rounds
        and messages always go with it. A database that fails does not stop the dispute: a
        restart then resumes from the last recorded move."""
        if self._store is None:
            return
        values |= {"reveals": list(run.reveals), "rounds": run.rounds, "messages": run.messages}
        try:
            await asyncio.to_thread(self._store.update, run.id, **values)
        except StorageError as exc:
            _log.warning("dispute %s: progress not stored: %s", run.id, exc.diagnostics())

    async def _persist_move(self, run: DisputeRun, move: dict[str, Any]) -> None:
        await self._persist(run, move=move)

    async def _forget(self, dispute: str) -> None:
        if self._store is not None:
            with contextlib.suppress(Error):
                await asyncio.to_thread(self._store.delete, dispute)

    async def _revive(self, record: DisputeRecord) -> tuple[DisputeRun, Any]:
        """A stored dispute as a run again (its node parties reached at their registered
        endpoints), and what ``_drive`` continues from."""
        predicate, _ = receipt_claim(record.receipt)
        inputs = await asyncio.to_thread(self._stored_inputs, record.inputs)
        spec = JobSpec(
            request_id=predicate.request_id,
            model=record.model,
            input_digests=dict(record.inputs),
            inputs_json={name: tensor_to_json(a) for name, a in inputs.items()},
            policy=record.policy,
        )

        def node_party(stored: PartyRecord, node: Candidate) -> Party:
            claim = stored.claim
            receipt = record.receipt if stored is record.defendant else None
            current = self._current(record.model, node)
            return self._node_party(current, spec, claim.trace, claim.outputs, receipt=receipt)

        return revived(record, inputs=inputs, node_party=node_party)

    def _current(self, model: Digest, stored: Candidate) -> Candidate:
        """The node as registered now (its endpoint may have changed), else as stored."""
        try:
            return self._find_node(model, stored.node_id)
        except NotFoundError:
            return stored

    # -- engine --------------------------------------------------------------------------------

    def _find_node(self, model: Digest, node_id: str) -> Candidate:
        for node in self._list_nodes(model) if self._list_nodes is not None else ():
            if node.node_id == node_id:
                return node
        found = self._find(node_id) if self._find is not None else None
        if found is None:
            raise NotFoundError("the defendant node is not registered", node=node_id[:200])
        return found

    def _stored_inputs(self, digests: Mapping[str, Digest]) -> dict[str, Array]:
        if self._load_tensor is None:
            raise NotFoundError("this coordinator keeps no request inputs")
        out = {}
        for name, digest in digests.items():
            array = self._load_tensor(digest)
            if tensor_digest(array) != digest:
                raise VerificationError(
                    "stored input does not match its digest", check=Check.INPUT_DIGEST, input=name
                )
            out[name] = array
        return out

    async def _layout(self, model: Digest) -> tuple[onnx.ModelProto, TraceLayout]:
        hit = self._layouts.get(model)
        if hit is None:

            def load() -> tuple[onnx.ModelProto, TraceLayout]:
                proto = self._load_model(model)
                return proto, TraceLayout.from_model(proto)

            hit = await asyncio.to_thread(load)
            if len(self._layouts) >= 16:
                self._layouts.clear()
            self._layouts[model] = hit
        return hit

    async def _drive(
        self, run: DisputeRun, opened: tuple[TraceCommitment, TraceCommitment] | Outcome
    ) -> None:
        try:
            if isinstance(opened, Outcome):
                outcome = opened
            else:
                model, layout = await self._layout(run.model)
                outcome = await play(
                    run,
                    opened,
                    model=model,
                    layout=layout,
                    timeout=self.options.timeout,
                    persist=self._persist_move,
                )
        except asyncio.CancelledError:
            raise
        except Exception:
            # A fault of the coordinator itself (the referee's runtime fails, the model cannot
            # be loaded) convicts no one: the dispute closes with no winner.
            _log.exception("dispute %s failed in the engine; settled with no winner", run.id)
            outcome = Outcome("none", "referee")
        try:
            await self._settle(run, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The ledger refused or the log failed: the challenge entry stays open in the fold
            # and its stored record with it, so a later sweep resumes it.
            _log.exception("dispute %s decided (%s) but not logged", run.id, outcome.winner)
        finally:
            if run.result is not None:
                run.status = "settled"
            run.settled.set()  # waiters wake either way; ``ref()`` refuses an unlogged one

    # -- settlement ----------------------------------------------------------------------------

    def _verdict(
        self,
        dispute: str,
        outcome: Outcome,
        *,
        rounds: int = 0,
        messages: int = 0,
    ) -> DisputeVerdictEntry:
        """The entry that closes a dispute. The ledger book logs it with the settlement the
        ledger's one rule derives from it (:func:`veriml.ledger.settlement.settle`): a slash
        of each loser's operator (written even at 0), the winning challenger's reward, and
        reputation +1 for the winner, -100 for each loser."""
        return DisputeVerdictEntry(
            dispute=dispute,
            winner=outcome.winner,
            reason=outcome.reason,
            at=_now(),
            node_index=outcome.node_index,
            op_type=outcome.op_type,
            inputs=dict(outcome.inputs),
            claims=dict(outcome.claims),
            referee=dict(outcome.referee),
            rounds=rounds,
            messages=messages,
        )

    async def settle_checked(
        self,
        *,
        inference: str,
        defendant: str,
        receipt: Envelope,
        challenger: str,
        outputs: Mapping[str, Digest],
        winner: Winner,
        claims: Mapping[str, Digest],
        referee: Mapping[str, Digest],
        op_type: str,
        step: int | None = None,
        challenger_node: bool = True,
        bond: int = 0,
        authorization: Envelope | None = None,
        statement: Envelope | None = None,
    ) -> DisputeRef:
        """A dispute already decided by a signed check that anyone can re-run (an LLM
        completion's prefill check, docs/llm.md): its challenge and its settlement are logged
        together, in one append. ``defendant`` is a node id whose ``receipt`` is challenged;
        ``challenger`` a node id (its node stands by ``outputs`` and signs in with its own
        ``statement`` about the inference: its receipt, or its prefill check) or, with
        ``challenger_node=False``, an account (a watcher) that signs in with its signed
        ``authorization`` (default: the one :func:`bonded` set) for its ``bond``, returned or
        burned by the verdict; ``referee`` names the signed check by digest. A claim disputed
        before is a :class:`ConflictError`."""
        if authorization is None and not challenger_node:
            authorization = _AUTHORIZATION.get()
        dispute = str(uuid.uuid4())
        node = challenger if challenger_node else None
        claim = Claim(challenger, dict(outputs), EMPTY_TRACE, node, statement)
        challenge = self._challenge_entry(
            dispute,
            inference,
            defendant,
            receipt,
            (EMPTY_TRACE, EMPTY_TRACE),
            claim,
            "bitwise",
            bond,
            None if challenger_node else authorization,
        )
        state = await asyncio.to_thread(self._book.state)
        check_challenge(state, challenge)
        outcome = Outcome(
            winner, "referee", node_index=step, op_type=op_type, claims=claims, referee=referee
        )
        verdict = self._verdict(dispute, outcome, rounds=1, messages=2)
        indices = await self._book.append([challenge, verdict])
        _log.info("checked dispute %s: winner %s (%s)", dispute, winner, op_type)
        return DisputeRef(dispute, defendant, challenger, winner, indices[1], opened=indices[0])

    async def _settle(self, run: DisputeRun, outcome: Outcome) -> None:
        verdict = self._verdict(run.id, outcome, rounds=run.rounds, messages=run.messages)
        indices = await self._book.append([verdict])
        run.log_index = indices[0]
        run.winner = outcome.winner
        run.result = verdict.to_json()
        await self._forget(run.id)
        _log.info(
            "dispute %s settled: winner %s (%s) after %d rounds",
            run.id,
            outcome.winner,
            outcome.reason,
            run.rounds,
        )


def _claimed(receipt: Envelope) -> tuple[TraceCommitment | None, dict[str, Digest]]:
    predicate, outputs = receipt_claim(receipt)
    return predicate.trace, outputs
