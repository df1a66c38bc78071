"""How a dispute is played once both parties stand by a trace (docs/verification.md,
"Bisection" and "Referee"): steps 2-4 of :mod:`veriml.coordinator.disputes.service`.

:func:`play` asks both parties for one trace index per round (each reveal proved against the
party's own root) until :class:`~veriml.verify.dispute.Bisection` finds the first operator
whose inputs they agree on and whose output differs, gathers that operator's agreed input
tensors (and, in tolerance mode, both outputs), and has the referee re-execute it. Before each
move it calls ``persist(run, move)``, so a restarted coordinator knows where the game stood;
:func:`replay` rebuilds the bisection from the reveals a run recorded.

Faults (:func:`ask_both`): a party that misses a move or whose answer does not check loses at
once; when **both** fault on one move, the defendant is not slashed: the challenger, who
started the dispute, loses with its own fault as the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import numpy.typing as npt
import onnx

from veriml.coordinator.disputes.parties import Party, PartyFaultError
from veriml.coordinator.disputes.run import DisputeRun, Outcome
from veriml.core.digest import Digest
from veriml.core.errors import StorageError, VerificationError
from veriml.core.receipt import TraceCommitment
from veriml.core.tensors import tensor_digest
from veriml.runtime import TraceEntry
from veriml.verify.dispute import Bisection, Reason, TraceLayout, check_reveal, referee

__all__ = ["GRACE", "Persist", "ask_both", "play", "replay"]

Array = npt.NDArray[Any]
Persist = Callable[[DisputeRun, dict[str, Any]], Awaitable[None]]
GRACE = 1.0
"""Seconds the engine waits past a move's deadline before it calls the move missed."""


async def ask_both(
    run: DisputeRun,
    ask: Callable[[Party], Awaitable[Any]],
    check: Callable[[str, Party, Any], Any] | None = None,
    *,
    limit: float,
) -> tuple[Any, Any] | Outcome:
    """Ask both parties at once; a fault decides the dispute against its party, and a fault
    of both for the defendant (an honest node that could not answer is not slashed for a
    challenge that could not be played either).

    The engine enforces the deadline itself (``limit`` seconds): a party's own timeouts are
    not trusted to fire."""

    async def bounded(party: Party) -> Any:
        try:
            return await asyncio.wait_for(ask(party), limit)
        except TimeoutError as exc:
            raise PartyFaultError("party missed the deadline", reason="timeout") from exc

    results = await asyncio.gather(
        bounded(run.defendant), bounded(run.challenger), return_exceptions=True
    )
    checked: list[Any] = []
    faults: list[PartyFaultError | None] = []
    for side, party, result in zip(
        ("defendant", "challenger"), (run.defendant, run.challenger), results, strict=True
    ):
        if isinstance(result, BaseException):
            if not isinstance(result, PartyFaultError):
                raise result
            faults.append(result)
            checked.append(None)
            continue
        run.messages += 1
        try:
            checked.append(check(side, party, result) if check is not None else result)
            faults.append(None)
        except PartyFaultError as fault:
            faults.append(fault)
            checked.append(None)
    d_fault, c_fault = faults
    if c_fault is not None:
        return Outcome("defendant", c_fault.reason)
    if d_fault is not None:
        return Outcome("challenger", d_fault.reason)
    return checked[0], checked[1]


def replay(
    run: DisputeRun, layout: TraceLayout
) -> tuple[Bisection, dict[int, tuple[Digest, Digest]]]:
    """The bisection of ``run`` with the reveals it recorded (a resumed dispute) replayed
    into it: each must be the index the bisection asks next (else :class:`StorageError`)."""
    bisection = Bisection(
        layout,
        run.defendant.claim.outputs,
        run.challenger.claim.outputs,
        input_digests={name: tensor_digest(a) for name, a in run.inputs.items()},
    )
    revealed: dict[int, tuple[Digest, Digest]] = {}
    for index, d_digest, c_digest in run.reveals:
        asked = bisection.next_query()
        if asked != index:
            raise StorageError(
                "the stored reveals do not replay", dispute=run.id, index=index, asked=asked
            )
        bisection.record(index, d_digest, c_digest)
        revealed[index] = (d_digest, c_digest)
    run.rounds = bisection.rounds
    return bisection, revealed


async def _reveal(party: Party, *, index: int, timeout: float) -> tuple[TraceEntry, list[bytes]]:
    return await party.reveal(index, timeout)


async def play(
    run: DisputeRun,
    opened: tuple[TraceCommitment, TraceCommitment],
    *,
    model: onnx.ModelProto,
    layout: TraceLayout,
    timeout: float,
    persist: Persist,
) -> Outcome:
    """Steps 2-4 for ``run``, whose parties stand by the commitments ``opened`` (step 1,
    each of the model's trace size): the outcome, to be logged by the caller."""
    commitments = {"defendant": opened[0], "challenger": opened[1]}
    limit = timeout + GRACE
    # 2. Bisection, one index per round, each reveal proved against the party's root.
    bisection, revealed = replay(run, layout)
    while (index := bisection.next_query()) is not None:

        def proved(
            side: str, party: Party, reveal: tuple[TraceEntry, list[bytes]], i: int = index
        ) -> Digest:
            entry, proof = reveal
            try:
                check_reveal(commitments[side], layout, i, entry, proof)
            except VerificationError as exc:
                raise PartyFaultError(
                    f"the {side}'s reveal does not verify",
                    reason="invalid-proof",
                    index=i,
                    detail=exc.diagnostics()[:200],
                ) from exc
            return entry.digest

        await persist(run, {"index": index})
        ask = partial(_reveal, index=index, timeout=timeout)
        answered = await ask_both(run, ask, proved, limit=limit)
        if isinstance(answered, Outcome):
            run.rounds = bisection.rounds
            return answered
        revealed[index] = answered
        run.reveals.append((index, answered[0], answered[1]))
        bisection.record(index, answered[0], answered[1])
        run.rounds = bisection.rounds
    if bisection.early is not None:
        winner, reason = bisection.early
        return Outcome(winner, reason)
    found = bisection.found
    assert found is not None  # next_query() is None: decided early or found
    claims = revealed[found]
    agreed = dict(bisection.agreed_inputs())
    # 3. The agreed inputs of the found operator, each checked against its digest.
    await persist(run, {"tensors": sorted(agreed)})
    values = await agreed_tensors(run, layout, agreed, timeout=timeout)
    if isinstance(values, Outcome):
        return values
    d_value = c_value = None
    if run.mode == "tolerance":
        name = layout.entries[found].output
        expected = {"defendant": claims[0], "challenger": claims[1]}

        def matches(side: str, party: Party, tensors: dict[str, Array]) -> Array:
            value = tensors.get(name)
            if value is None or tensor_digest(value) != expected[side]:
                raise PartyFaultError(
                    f"the {side}'s output tensor does not match its reveal",
                    reason="invalid-proof",
                    tensor=name,
                )
            return value

        await persist(run, {"tensors": [name]})
        outputs = await ask_both(run, lambda p: p.tensors([name], timeout), matches, limit=limit)
        if isinstance(outputs, Outcome):
            return outputs
        d_value, c_value = outputs
    # 4. The referee re-executes that one operator.
    await persist(run, {"referee": found})
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
    return Outcome(
        decision.winner,
        "referee",
        node_index=decision.node_index,
        op_type=decision.op_type,
        inputs=agreed,
        claims={"defendant": claims[0], "challenger": claims[1]},
        referee=dict(decision.referee),
    )


async def agreed_tensors(
    run: DisputeRun, layout: TraceLayout, agreed: Mapping[str, Digest], *, timeout: float
) -> dict[str, Array] | Outcome:
    """Step 3: the agreed tensors of the found operator; graph inputs from the stored request,
    the others from the defendant, else the challenger, each checked by digest. When neither
    produces one, the defendant wins with the challenger's fault as the reason."""
    values: dict[str, Array] = {}
    wanted: list[str] = []
    for name in agreed:
        stored = run.inputs.get(name)
        if name in layout.graph_inputs and stored is not None:
            values[name] = stored
        else:
            wanted.append(name)
    fault: Reason = "timeout"  # why the last party asked could not produce them
    for party in (run.defendant, run.challenger):
        if not wanted:
            break
        try:
            got = await asyncio.wait_for(party.tensors(wanted, timeout), timeout + GRACE)
        except PartyFaultError as failed:
            fault = failed.reason
            continue
        except TimeoutError:
            fault = "timeout"
            continue
        run.messages += 1
        for name in list(wanted):
            value = got.get(name)
            if value is not None and tensor_digest(value) == agreed[name]:
                values[name] = value
                wanted.remove(name)
        fault = "invalid-proof"
    if wanted:
        # Both parties revealed these digests and neither produces the tensor: a double
        # fault, decided for the defendant.
        return Outcome("defendant", fault)
    return values
