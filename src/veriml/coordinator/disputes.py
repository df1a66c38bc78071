"""Disputes hosted by the coordinator: bisection, referee, settlement in the log.

docs/verification.md ("Disputes") is the spec. One engine serves two kinds of dispute:

- **coordinator-opened** (a spot check that disagrees, a dissenting quorum answer): both
  parties are nodes (``NodeParty``); the inference waits for the verdict, whose log index it
  records;
- **external** (``POST /v1/disputes``): the challenger is a remote account (a client, a
  watcher, a node) moving through HTTP (``RemoteParty``); the defendant is a node.

The parties live in :mod:`veriml.coordinator.dispute_parties`.

A party is anything with the small :class:`Party` interface: ``open`` (the trace commitment
it stands by), ``reveal(index)`` (a trace entry and its RFC 9162 inclusion proof) and
``tensors(names)``. The engine checks every answer (:func:`~veriml.verify.dispute.check_reveal`,
tensor digests), so a party is trusted with nothing. Steps of :meth:`DisputeService._decide`:

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

A party that misses a move's deadline (``timeout``) or answers with a reveal that does not
verify (``invalid-proof``) loses at once. Settlement appends, through the ledger book, the
``verdict`` entry, a ``slash`` of each loser (``slash_fraction`` of its stake and unbonding,
written even when it is 0: every conviction is recorded), a ``reward`` of ``reward_fraction`` of
the slash to a winning challenger, and ``reputation`` entries (+1 winner, -100 loser). The
``challenge`` entry was appended when the dispute opened.

Open disputes live in memory: a coordinator restart loses the open external ones (their
``challenge`` entries stay in the log, and the ledger fold shows them open). Settled disputes
are kept for ``GET /v1/disputes/{id}`` up to :attr:`DisputeOptions.keep_settled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import httpx
import numpy as np
import numpy.typing as npt
import onnx

from veriml.coordinator.dispatch import JobSpec
from veriml.coordinator.dispute_parties import (
    EMPTY_TRACE,
    Claim,
    NodeParty,
    Party,
    PartyFault,
    RemoteParty,
    check_commitment,
    receipt_claim,
)
from veriml.coordinator.scheduler import Candidate
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import (
    Conflict,
    FormatError,
    NotFound,
    VerificationError,
)
from veriml.core.keys import SigningKey
from veriml.core.receipt import TraceCommitment
from veriml.core.tensors import tensor_digest, tensor_from_json, tensor_to_json
from veriml.core.timestamps import format_time, parse_time
from veriml.ledger.entries import (
    ChallengeEntry,
    DisputeVerdictEntry,
)
from veriml.runtime import TraceEntry
from veriml.verify.dispute import Bisection, Reason, TraceLayout, check_reveal, referee
from veriml.verify.policy import DisputeRef, Winner

__all__ = [
    "Claim",
    "DisputeOptions",
    "DisputeService",
    "LedgerAppender",
    "NodeParty",
    "Party",
    "PartyFault",
    "RemoteParty",
    "receipt_claim",
]

Array = npt.NDArray[Any]
Mode = str
_log = logging.getLogger(__name__)
_GRACE = 1.0


class LedgerAppender(Protocol):
    """What the engine needs of the coordinator's ledger book (``coordinator.ledger``)."""

    async def append(self, entries: Sequence[Any]) -> list[int]: ...

    def state(self) -> Any: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DisputeOptions:
    """Deadlines (seconds) and the economic rules of a dispute (coordinator settings)."""

    timeout: float = 60.0
    job_timeout: float = 60.0
    slash_fraction: float = 0.5
    reward_fraction: float = 0.5
    challenge_bond: int = 0
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
        if self.challenge_bond < 0:
            raise FormatError("challenge bond must be >= 0", bond=self.challenge_bond)


# -- one dispute ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    winner: Winner
    reason: Reason
    node_index: int | None = None
    op_type: str | None = None
    inputs: Mapping[str, Digest] = field(default_factory=dict)
    claims: Mapping[str, Digest] = field(default_factory=dict)
    referee: Mapping[str, Digest] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class DisputeRun:
    """The live state of one dispute (what ``GET /v1/disputes/{id}`` shows)."""

    id: str
    inference: str
    defendant: Party
    challenger: Party
    mode: Mode
    model: Digest
    inputs: Mapping[str, Array]
    status: str = "open"
    rounds: int = 0
    messages: int = 0
    result: dict[str, Any] | None = None
    log_index: int | None = None
    winner: Winner | None = None
    task: asyncio.Task[None] | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def to_json(self) -> dict[str, Any]:
        query = None
        deadline = None
        if isinstance(self.challenger, RemoteParty) and self.status == "open":
            query = self.challenger.query
            if self.challenger.deadline is not None:
                deadline = format_time(dt.datetime.fromtimestamp(self.challenger.deadline, dt.UTC))
        return {
            "id": self.id,
            "status": self.status,
            "inference": self.inference,
            "defendant": self.defendant.claim.account,
            "challenger": self.challenger.claim.account,
            "mode": self.mode,
            "query": query,
            "deadline": deadline,
            "rounds": self.rounds,
            "messages": self.messages,
            "result": self.result,
        }

    def ref(self) -> DisputeRef:
        """The verdict's reference to this (settled) dispute."""
        if self.winner is None or self.log_index is None:
            raise Conflict("the dispute is not settled", dispute=self.id)
        return DisputeRef(
            id=self.id,
            defendant=self.defendant.claim.account,
            challenger=self.challenger.claim.account,
            winner=self.winner,
            log_index=self.log_index,
        )


async def _reveal(party: Party, *, index: int, timeout: float) -> tuple[TraceEntry, list[bytes]]:
    return await party.reveal(index, timeout)


def _now() -> str:
    return format_time(dt.datetime.now(dt.UTC))


class DisputeService:
    """Opens, drives and settles disputes (module docstring); one per coordinator.

    ``load_model(digest)`` and ``load_tensor(digest)`` are blocking (run in worker threads):
    the hub's model and a stored request input. ``list_nodes(model)`` gives the registered
    nodes serving a model (to reach a defendant named by id). ``book`` appends ledger entries
    (validated against the folded state) and gives the state (stakes to slash).
    """

    def __init__(
        self,
        *,
        key: SigningKey,
        http: httpx.AsyncClient,
        load_model: Callable[[Digest], onnx.ModelProto],
        book: LedgerAppender,
        load_tensor: Callable[[Digest], Array] | None = None,
        list_nodes: Callable[[Digest], Sequence[Candidate]] | None = None,
        options: DisputeOptions | None = None,
    ) -> None:
        self._key = key
        self._http = http
        self._load_model = load_model
        self._load_tensor = load_tensor
        self._list_nodes = list_nodes
        self._book = book
        self.options = options or DisputeOptions()
        self._runs: OrderedDict[str, DisputeRun] = OrderedDict()
        self._layouts: dict[Digest, tuple[onnx.ModelProto, TraceLayout]] = {}

    # -- public API --------------------------------------------------------------------------

    def get(self, dispute_id: str) -> DisputeRun:
        """The dispute ``dispute_id`` (``NotFound`` when unknown or long settled)."""
        run = self._runs.get(dispute_id)
        if run is None:
            raise NotFound("no dispute with this id", id=dispute_id[:200])
        return run

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
        parties: list[NodeParty] = []
        for node, receipt in (defendant, challenger):
            predicate, outputs = receipt_claim(receipt)
            parties.append(
                NodeParty(
                    http=self._http,
                    key=self._key,
                    node=node,
                    spec=spec,
                    outputs=outputs,
                    trace=predicate.trace,
                    job_timeout=self.options.job_timeout,
                    max_tensor_bytes=self.options.max_tensor_bytes,
                )
            )
        run = await self.open(
            inference=spec.request_id,
            defendant=parties[0],
            challenger=parties[1],
            receipt=defendant[1],
            mode=mode,
            model=spec.model,
            inputs=inputs,
            bond=0,
        )
        await run.settled.wait()
        return run.ref()

    async def challenge(
        self, answer: Mapping[str, Any], body: Mapping[str, Any], *, account: str
    ) -> DisputeRun:
        """Open an external dispute: ``account`` (a verified request signer) challenges the
        receipt of node ``body["node"]`` in the stored inference ``answer``."""
        unknown = sorted(set(body) - {"inference", "node", "trace", "outputs", "mode"})
        if unknown:
            raise FormatError("dispute request has unknown members", members=",".join(unknown))
        node_id = body.get("node")
        if not isinstance(node_id, str):
            raise FormatError("dispute request needs the defendant node id")
        claim = Claim(
            account=account,
            outputs=_digest_map(body.get("outputs"), "outputs"),
            trace=_commitment(body.get("trace")),
        )
        verdict = answer.get("verdict") or {}
        mode = body.get("mode", verdict.get("mode", "bitwise"))
        if mode not in ("bitwise", "tolerance"):
            raise FormatError("dispute mode must be bitwise or tolerance", got=str(mode)[:40])
        receipt = _receipt_of(answer, node_id)
        predicate, outputs = receipt_claim(receipt)
        if set(claim.outputs) != set(outputs):
            raise FormatError(
                "the challenge must claim the receipt's outputs",
                receipt=",".join(sorted(outputs))[:200],
                challenge=",".join(sorted(claim.outputs))[:200],
            )
        node = await asyncio.to_thread(self._find_node, predicate.model_digest, node_id)
        inputs = await asyncio.to_thread(self._stored_inputs, predicate.inputs)
        spec = JobSpec(
            request_id=predicate.request_id,
            model=predicate.model_digest,
            input_digests=dict(predicate.inputs),
            inputs_json={name: tensor_to_json(a) for name, a in inputs.items()},
            policy=predicate.policy,
        )
        defendant = NodeParty(
            http=self._http,
            key=self._key,
            node=node,
            spec=spec,
            outputs=outputs,
            trace=predicate.trace,
            job_timeout=self.options.job_timeout,
            max_tensor_bytes=self.options.max_tensor_bytes,
        )
        return await self.open(
            inference=str(answer.get("id", predicate.request_id)),
            defendant=defendant,
            challenger=RemoteParty(claim),
            receipt=receipt,
            mode=mode,
            model=predicate.model_digest,
            inputs=inputs,
            bond=self.options.challenge_bond,
        )

    async def submit(
        self,
        run: DisputeRun,
        *,
        reveal: Mapping[str, Any] | None = None,
        tensors: Mapping[str, Array] | None = None,
    ) -> None:
        """Take the challenger's move, then wait until it is asked again or the dispute
        settles (bounded: the defendant's move and the referee take at most a few deadlines).

        ``Conflict`` when the challenger is not a remote party or is not asked for this move;
        ``FormatError`` for a malformed move (the move stays open until its deadline)."""
        challenger = run.challenger
        if run.status != "open" or not isinstance(challenger, RemoteParty):
            raise Conflict("the dispute does not wait for this challenger", dispute=run.id)
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

    async def void_abandoned(
        self, *, older_than: float, now: dt.datetime | None = None
    ) -> list[str]:
        """Close, with no winner, every dispute the ledger shows open that no run in this
        process hosts and whose challenge is older than ``older_than`` seconds.

        Open disputes live in memory, so a coordinator restart (or a replica that died)
        leaves their ``challenge`` entries open in the fold with the bond locked. Once a
        dispute is older than any live one can be (its moves each have a deadline), a
        ``verdict`` with winner ``none`` and reason ``timeout`` closes it: nobody is slashed
        and the bond returns to the challenger. Returns the ids it closed.
        """
        current = now or dt.datetime.now(dt.UTC)
        state = await asyncio.to_thread(self._book.state)
        stale = [
            dispute_id
            for dispute_id, open_dispute in sorted(state.open_disputes.items())
            if dispute_id not in self._runs
            and (current - parse_time(open_dispute.opened_at)).total_seconds() > older_than
        ]
        if stale:
            at = format_time(current)
            entries = [DisputeVerdictEntry(d, "none", "timeout", at) for d in stale]
            await self._book.append(entries)
            _log.warning("closed %d abandoned disputes without a winner", len(stale))
        return stale

    async def aclose(self) -> None:
        """Cancel the open disputes (the coordinator is shutting down)."""
        tasks = [run.task for run in self._runs.values() if run.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- engine --------------------------------------------------------------------------------

    def _find_node(self, model: Digest, node_id: str) -> Candidate:
        for node in self._list_nodes(model) if self._list_nodes is not None else ():
            if node.node_id == node_id:
                return node
        raise NotFound("the defendant node is not registered or not live", node=node_id[:200])

    def _stored_inputs(self, digests: Mapping[str, Digest]) -> dict[str, Array]:
        if self._load_tensor is None:
            raise NotFound("this coordinator keeps no request inputs")
        out = {}
        for name, digest in digests.items():
            array = self._load_tensor(digest)
            if tensor_digest(array) != digest:
                raise VerificationError(
                    "stored input does not match its digest", check="input-digest", input=name
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
    ) -> DisputeRun:
        """Open a dispute between any two parties over ``receipt`` (the defendant's) for one
        request of ``model`` with graph ``inputs``: open both (step 1, retraces), log the
        ``challenge`` entry, start the engine; the run settles by itself (await
        ``run.settled``). A ledger rule the challenge breaks (the bond) is a ``Conflict``, and
        then nothing is logged or kept."""
        account = challenger.claim.account
        if bond > 0 and self._book.state().account(account).balance < bond:
            raise Conflict("the challenger's balance does not cover the bond", bond=bond)
        run = DisputeRun(
            id=str(uuid.uuid4()),
            inference=inference,
            defendant=defendant,
            challenger=challenger,
            mode=mode,
            model=model,
            inputs=dict(inputs),
        )
        _, layout = await self._layout(model)

        def sized(side: str, party: Party, commitment: TraceCommitment) -> TraceCommitment:
            check_commitment(side, commitment, layout)
            return commitment

        opened = await self._both(
            run,
            lambda p: p.open(self.options.timeout),
            sized,
            limit=self.options.timeout + self.options.job_timeout,
        )
        # A party that produced no trace (its retrace failed) is recorded with the commitment
        # to nothing: the RFC 9162 root of the empty tree, size 0.
        committed = [p.claim.trace or EMPTY_TRACE for p in (defendant, challenger)]
        c = challenger.claim
        entry = ChallengeEntry(
            dispute=run.id,
            inference=inference,
            defendant={
                "node": defendant.claim.account,
                "receipt": Digest.of(receipt.payload),
                "trace": committed[0].to_json(),
            },
            challenger={
                "account": c.account,
                **({} if c.node is None else {"node": c.node}),
                "trace": committed[1].to_json(),
                "outputs": dict(c.outputs),
            },
            mode=mode,
            bond=bond,
            deadline_seconds=self.options.timeout,
            at=_now(),
        )
        await self._book.append([entry])
        self._runs[run.id] = run
        while len(self._runs) > self.options.keep_settled:
            oldest = next(iter(self._runs.values()))
            if oldest.status == "open":
                break
            self._runs.popitem(last=False)
        run.task = asyncio.create_task(self._drive(run, opened), name=f"dispute {run.id}")
        return run

    async def _drive(
        self, run: DisputeRun, opened: tuple[TraceCommitment, TraceCommitment] | _Outcome
    ) -> None:
        try:
            outcome = opened if isinstance(opened, _Outcome) else await self._decide(run, opened)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A fault of the coordinator itself (the referee's runtime fails, the model cannot
            # be loaded) convicts no one: the dispute closes with no winner.
            _log.exception("dispute %s failed in the engine; settled with no winner", run.id)
            outcome = _Outcome("none", "referee")
        try:
            await self._settle(run, outcome)
        except Exception:
            # The ledger refused or the log failed: the challenge entry stays open in the fold
            # (as after a restart) and the coordinator's operator settles it.
            _log.exception("dispute %s decided (%s) but not logged", run.id, outcome.winner)
        finally:
            if run.result is not None:
                run.status = "settled"
            run.settled.set()  # waiters wake either way; ``ref()`` refuses an unlogged one

    async def _both(
        self,
        run: DisputeRun,
        ask: Callable[[Party], Awaitable[Any]],
        check: Callable[[str, Party, Any], Any] | None = None,
        *,
        limit: float | None = None,
    ) -> tuple[Any, Any] | _Outcome:
        """Ask both parties at once; a fault decides the dispute against its party.

        The engine enforces the deadline itself (``limit`` seconds, the move timeout plus a
        grace by default): a party's own timeouts are not trusted to fire."""
        bound = limit if limit is not None else self.options.timeout + _GRACE

        async def bounded(party: Party) -> Any:
            try:
                return await asyncio.wait_for(ask(party), bound)
            except TimeoutError as exc:
                raise PartyFault("party missed the deadline", reason="timeout") from exc

        results = await asyncio.gather(
            bounded(run.defendant), bounded(run.challenger), return_exceptions=True
        )
        checked: list[Any] = []
        faults: list[PartyFault | None] = []
        for side, party, result in zip(
            ("defendant", "challenger"), (run.defendant, run.challenger), results, strict=True
        ):
            if isinstance(result, BaseException):
                if not isinstance(result, PartyFault):
                    raise result
                faults.append(result)
                checked.append(None)
                continue
            run.messages += 1
            try:
                checked.append(check(side, party, result) if check is not None else result)
                faults.append(None)
            except PartyFault as fault:
                faults.append(fault)
                checked.append(None)
        d_fault, c_fault = faults
        if d_fault is not None and c_fault is not None:
            return _Outcome("neither", d_fault.reason)
        if d_fault is not None:
            return _Outcome("challenger", d_fault.reason)
        if c_fault is not None:
            return _Outcome("defendant", c_fault.reason)
        return checked[0], checked[1]

    async def _decide(
        self, run: DisputeRun, opened: tuple[TraceCommitment, TraceCommitment]
    ) -> _Outcome:
        model, layout = await self._layout(run.model)
        timeout = self.options.timeout
        # 1. (done by open) Both commitments, each of the model's trace size.
        commitments = {"defendant": opened[0], "challenger": opened[1]}
        # 2. Bisection, one index per round, each reveal proved against the party's root.
        bisection = Bisection(
            layout,
            run.defendant.claim.outputs,
            run.challenger.claim.outputs,
            input_digests={name: tensor_digest(a) for name, a in run.inputs.items()},
        )
        revealed: dict[int, tuple[Digest, Digest]] = {}
        while (index := bisection.next_query()) is not None:

            def proved(
                side: str, party: Party, reveal: tuple[TraceEntry, list[bytes]], i: int = index
            ) -> Digest:
                entry, proof = reveal
                try:
                    check_reveal(commitments[side], layout, i, entry, proof)
                except VerificationError as exc:
                    raise PartyFault(
                        f"the {side}'s reveal does not verify",
                        reason="invalid-proof",
                        index=i,
                        detail=exc.diagnostics()[:200],
                    ) from exc
                return entry.digest

            answered = await self._both(run, partial(_reveal, index=index, timeout=timeout), proved)
            if isinstance(answered, _Outcome):
                run.rounds = bisection.rounds
                return answered
            revealed[index] = answered
            bisection.record(index, answered[0], answered[1])
            run.rounds = bisection.rounds
        if bisection.early is not None:
            winner, reason = bisection.early
            return _Outcome(winner, reason)
        found = bisection.found
        assert found is not None  # next_query() is None: decided early or found
        claims = revealed[found]
        agreed = dict(bisection.agreed_inputs())
        # 3. The agreed inputs of the found operator, each checked against its digest.
        values = await self._agreed_tensors(run, layout, agreed)
        if isinstance(values, _Outcome):
            return values
        d_value = c_value = None
        if run.mode == "tolerance":
            name = layout.entries[found].output
            expected = {"defendant": claims[0], "challenger": claims[1]}

            def matches(side: str, party: Party, tensors: dict[str, Array]) -> Array:
                value = tensors.get(name)
                if value is None or tensor_digest(value) != expected[side]:
                    raise PartyFault(
                        f"the {side}'s output tensor does not match its reveal",
                        reason="invalid-proof",
                        tensor=name,
                    )
                return value

            outputs = await self._both(run, lambda p: p.tensors([name], timeout), matches)
            if isinstance(outputs, _Outcome):
                return outputs
            d_value, c_value = outputs
        # 4. The referee re-executes that one operator.
        decision = await asyncio.to_thread(
            referee,
            model,
            layout,
            found,
            values,
            claims[0],
            claims[1],
            agreed=agreed,
            mode="tolerance" if run.mode == "tolerance" else "bitwise",
            defendant_value=d_value,
            challenger_value=c_value,
        )
        return _Outcome(
            decision.winner,
            "referee",
            node_index=decision.node_index,
            op_type=decision.op_type,
            inputs=agreed,
            claims={"defendant": claims[0], "challenger": claims[1]},
            referee=dict(decision.referee),
        )

    async def _agreed_tensors(
        self, run: DisputeRun, layout: TraceLayout, agreed: Mapping[str, Digest]
    ) -> dict[str, Array] | _Outcome:
        values: dict[str, Array] = {}
        wanted: list[str] = []
        for name in agreed:
            stored = run.inputs.get(name)
            if name in layout.graph_inputs and stored is not None:
                values[name] = stored
            else:
                wanted.append(name)
        for party in (run.defendant, run.challenger):
            if not wanted:
                break
            try:
                got = await asyncio.wait_for(
                    party.tensors(wanted, self.options.timeout), self.options.timeout + _GRACE
                )
            except (PartyFault, TimeoutError):
                continue
            run.messages += 1
            for name in list(wanted):
                value = got.get(name)
                if value is not None and tensor_digest(value) == agreed[name]:
                    values[name] = value
                    wanted.remove(name)
        if wanted:
            # Both parties revealed these digests and neither can produce the tensor.
            return _Outcome("neither", "timeout")
        return values

    # -- settlement ----------------------------------------------------------------------------

    def _verdict(
        self,
        dispute: str,
        outcome: _Outcome,
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
    ) -> DisputeRef:
        """A dispute already decided by a signed check that anyone can re-run (an LLM
        completion's prefill check, docs/llm.md): its challenge and its settlement are logged
        together, in one append. ``defendant`` is a node id, ``challenger`` a node id (its node
        stands by ``outputs``) or, with ``challenger_node=False``, an account (a watcher) whose
        ``bond`` is locked and returned or burned by the verdict; ``referee`` names the signed
        check by digest."""
        dispute = str(uuid.uuid4())
        challenge = ChallengeEntry(
            dispute=dispute,
            inference=inference,
            defendant={
                "node": defendant,
                "receipt": Digest.of(receipt.payload),
                "trace": EMPTY_TRACE.to_json(),
            },
            challenger={
                "account": challenger,
                **({"node": challenger} if challenger_node else {}),
                "trace": EMPTY_TRACE.to_json(),
                "outputs": dict(outputs),
            },
            mode="bitwise",
            bond=bond,
            deadline_seconds=self.options.timeout,
            at=_now(),
        )
        outcome = _Outcome(
            winner, "referee", node_index=step, op_type=op_type, claims=claims, referee=referee
        )
        verdict = self._verdict(dispute, outcome, rounds=1, messages=2)
        indices = await self._book.append([challenge, verdict])
        _log.info("checked dispute %s: winner %s (%s)", dispute, winner, op_type)
        return DisputeRef(dispute, defendant, challenger, winner, indices[1])

    async def _settle(self, run: DisputeRun, outcome: _Outcome) -> None:
        verdict = self._verdict(run.id, outcome, rounds=run.rounds, messages=run.messages)
        entries = [verdict]
        indices = await self._book.append(entries)
        run.log_index = indices[0]
        run.winner = outcome.winner
        run.result = entries[0].to_json()
        _log.info(
            "dispute %s settled: winner %s (%s) after %d rounds",
            run.id,
            outcome.winner,
            outcome.reason,
            run.rounds,
        )


# -- request parsing ----------------------------------------------------------------------------


def _digest_map(raw: object, what: str) -> dict[str, Digest]:
    if not isinstance(raw, Mapping) or not raw:
        raise FormatError(f"{what} must be a non-empty object of name -> digest")
    out: dict[str, Digest] = {}
    for name, value in raw.items():
        if not isinstance(value, str):
            raise FormatError(f"{what} digests must be strings", name=str(name)[:200])
        out[str(name)] = Digest.from_text(value)
    return out


def _commitment(raw: object) -> TraceCommitment:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("root"), str):
        raise FormatError('trace must be {"root": digest, "size": n}')
    size = raw.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise FormatError("trace size must be a positive integer", got=str(size)[:40])
    return TraceCommitment(Digest.from_text(raw["root"]), size)


def _receipt_of(answer: Mapping[str, Any], node_id: str) -> Envelope:
    nodes = answer.get("nodes") or []
    receipts = answer.get("receipts") or []
    for node, receipt in zip(nodes, receipts, strict=False):
        if isinstance(node, Mapping) and node.get("id") == node_id:
            return Envelope.from_json(receipt)
    raise NotFound(
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
