"""LLM disputes: prefill checks of a completion by other operators' nodes, and the
disputes they settle (docs/llm.md, "Disputes"; ONNX disputes are
:mod:`veriml.coordinator.disputes.service`).

A completion's tokens are re-checked in one batched prefill pass by a node of another
operator, which signs its report (:func:`~veriml.coordinator.llm.checks.check_prefill`). The
:class:`PrefillReferee` runs those checks for the ``prefill`` policy, settles the
disagreements a verdict leaves (a failed ``spot`` check, a ``quorum``'s dissent), and settles
a watcher's external challenge. Nobody is convicted on one check: a rejection is confirmed by
a third operator's node before a dispute is logged through
:meth:`~veriml.coordinator.disputes.service.DisputeService.settle_checked`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from veriml.coordinator.llm.checks import (
    OUTPUT,
    CompletionJob,
    NodeAnswer,
    PrefillVouch,
    check_prefill,
)
from veriml.coordinator.llm.transport import NodeTransport
from veriml.coordinator.nodes.scheduler import Candidate, gather, node_key
from veriml.core.digest import Digest
from veriml.core.errors import NodeUnavailableError
from veriml.core.keys import SigningKey
from veriml.verify.policy import DisputeRef, Verdict, Winner, disputed_pairs

if TYPE_CHECKING:
    from veriml.coordinator.disputes.service import DisputeService
    from veriml.coordinator.llm.service import CompletionOptions, Prepared

__all__ = ["Choose", "PrefillReferee"]

_log = logging.getLogger(__name__)

Choose = Callable[["Prepared", int, frozenset[str], frozenset[str]], list[Candidate]]
"""``choose(prepared, count, tried, busy)``: up to ``count`` nodes for ``prepared``'s request,
none of the node ids ``tried`` nor of the operators ``busy``."""


class PrefillReferee:
    """Prefill checks and the LLM disputes they settle, for one completion service: jobs
    signed with ``key`` and posted through ``transport`` to nodes ``choose`` picks; events go
    to ``observe`` (``("node-failure", reason)``, ``("dispute", winner)``). Without
    ``disputes``, checks still run (the ``prefill`` policy) and nothing is disputed."""

    def __init__(
        self,
        *,
        key: SigningKey,
        transport: NodeTransport,
        choose: Choose,
        observe: Callable[[str, str], None],
        options: CompletionOptions,
        disputes: DisputeService | None = None,
    ) -> None:
        self._key = key
        self._transport = transport
        self._choose = choose
        self._observe = observe
        self._options = options
        self._disputes = disputes

    @property
    def hosts_disputes(self) -> bool:
        """Whether disagreements are settled and logged (the app has a dispute service)."""
        return self._disputes is not None

    async def challenge(
        self, prepared: Prepared, defendant: Candidate, answer: NodeAnswer, *, account: str
    ) -> DisputeRef:
        """Settle ``account``'s challenge of ``defendant``'s logged completion ``answer``
        (``prepared``: the request it answered): a node of another operator prefill-checks
        it, a rejection is confirmed by a third operator, and the outcome is logged. If the
        check fails, ``defendant`` is convicted and ``account`` rewarded; if it passes, the
        challenge fails and ``account`` loses its bond."""
        assert self._disputes is not None
        node_id = defendant.node_id
        job = prepared.job
        pair = (defendant, answer)
        check = await self.prefill(prepared, pair, avoid=frozenset({defendant.operator}))
        if check is None:
            raise NodeUnavailableError("no node of another operator could check the completion")
        rejected = check.vouched != {OUTPUT: answer.output}
        if rejected and not await self.confirmed(prepared, pair, check):
            raise NodeUnavailableError(
                "the completion's rejection could not be confirmed by a second operator: "
                "nobody is convicted on one check",
                node=node_id,
            )
        ref = await self._disputes.settle_checked(
            inference=job.request_id,
            defendant=node_id,
            receipt=answer.receipt,
            challenger=account,
            outputs={},
            winner="challenger" if rejected else "defendant",
            claims={"defendant": answer.output},
            referee={"prefill-check": Digest.of(check.receipt.payload)},
            op_type="prefill",
            step=check.first_failure,
            challenger_node=False,
            bond=self._disputes.options.challenge_bond,
        )
        self._observe("dispute", ref.winner)
        return ref

    async def settle_dissent(
        self,
        prepared: Prepared,
        answers: Sequence[tuple[Candidate, NodeAnswer]],
        verdict: Verdict,
    ) -> list[DisputeRef]:
        """The disagreements ``verdict`` leaves (:func:`~veriml.verify.policy.disputed_pairs`:
        a ``spot`` check that came out different, the primary against the checker; under
        ``quorum``, dissenting answers against an agreeing one), each settled by prefill checks
        (:meth:`_arbitrate`)."""
        if self._disputes is None or prepared.job.kind == "embedding" or len(answers) < 2:
            return []
        parties = [(n.node_id, n.operator) for n, _ in answers]
        pairs = [
            (answers[d], answers[c]) for d, c in disputed_pairs(prepared.policy, verdict, parties)
        ]
        settled = await asyncio.gather(*(self._arbitrate(prepared, d, c) for d, c in pairs))
        return [ref for ref in settled if ref is not None]

    async def _arbitrate(
        self,
        prepared: Prepared,
        defendant: tuple[Candidate, NodeAnswer],
        challenger: tuple[Candidate, NodeAnswer],
    ) -> DisputeRef | None:
        """Two nodes gave different completions of one request (same seed, same sampling):
        a third operator's node prefill-checks the defendant's, then, if that passes, the
        challenger's. The one whose check fails loses (``none`` when both pass); the settlement
        is logged with the signed check it rests on. None when no node of a third operator
        answered: the parties' own operators never check, or one operator's word (the
        challenger's, checking its own claim) would convict another."""
        assert self._disputes is not None
        avoid = frozenset({defendant[0].operator, challenger[0].operator})
        check = await self.prefill(prepared, defendant, avoid=avoid, strict=True)
        if check is None:
            return None
        # The losing side is held wrong by two operators: the third operator's check, and
        # the other side's own different completion.
        if check.vouched != {OUTPUT: defendant[1].output}:
            return await self.record(prepared, defendant, challenger, check, "challenger")
        other = await self.prefill(prepared, challenger, avoid=avoid, strict=True)
        if other is None:
            return None
        if other.vouched != {OUTPUT: challenger[1].output}:
            return await self.record(prepared, defendant, challenger, other, "defendant")
        return await self.record(prepared, defendant, challenger, check, "none")

    async def record(
        self,
        prepared: Prepared,
        defendant: tuple[Candidate, NodeAnswer],
        challenger: tuple[Candidate, NodeAnswer],
        check: PrefillVouch,
        winner: Winner,
    ) -> DisputeRef:
        """Log a dispute ``check`` settled: its challenge and settlement in one append. The
        challenger is the node that answered differently or, under ``prefill``, the checking
        node itself (then it claims no output of its own)."""
        assert self._disputes is not None
        claims = {"defendant": defendant[1].output}
        checking = challenger[0].node_id == check.node.node_id
        if not checking:
            claims["challenger"] = challenger[1].output
        ref = await self._disputes.settle_checked(
            inference=prepared.job.request_id,
            defendant=defendant[0].node_id,
            receipt=defendant[1].receipt,
            challenger=challenger[0].node_id,
            outputs={} if "challenger" not in claims else {OUTPUT: challenger[1].output},
            winner=winner,
            claims=claims,
            referee={"prefill-check": Digest.of(check.receipt.payload)},
            op_type="prefill",
            step=check.first_failure,
            # The challenger signs in with its own statement about the request: the checking
            # node's signed prefill check, or the other node's completion receipt.
            statement=check.receipt if checking else challenger[1].receipt,
        )
        self._observe("dispute", winner)
        return ref

    async def prefill(
        self,
        prepared: Prepared,
        primary: tuple[Candidate, NodeAnswer],
        *,
        avoid: frozenset[str] = frozenset(),
        strict: bool = False,
    ) -> PrefillVouch | None:
        """``prefill``: a node of another operator checks the primary's completion (failing
        checkers replaced like any node); None when no such node answered. Operators in
        ``avoid`` (the parties of a disagreement) check only when no other operator can, or,
        ``strict``, never."""
        generator, answer = primary
        tried, busy = frozenset({generator.node_id}), frozenset({generator.operator})
        if strict:
            busy |= avoid
        first = self._choose(prepared, 1, tried, busy | avoid) or self._choose(
            prepared, 1, tried, busy
        )
        if not first:
            _log.warning(
                "prefill check of %s: no node of another operator", prepared.job.request_id
            )
            return None
        gathered = await gather(
            first,
            lambda node: self._check(node, prepared.job, answer),
            lambda t, used: next(
                iter(self._choose(prepared, 1, frozenset(t) | tried, frozenset(used) | busy)),
                None,
            ),
            attempts_per_slot=self._options.attempts_per_slot,
            timeout=self._options.job_timeout * self._options.attempts_per_slot,
        )
        gathered.report(self._observe)
        return gathered.answers[0][1] if gathered.answers else None

    async def confirmed(
        self,
        prepared: Prepared,
        primary: tuple[Candidate, NodeAnswer],
        check: PrefillVouch,
        avoid: frozenset[str] = frozenset(),
    ) -> bool:
        """Whether a check that rejected ``primary``'s completion is confirmed by a second
        check, by a node of yet another operator. A conviction rests on two independent
        operators' signed, re-runnable checks, so one lying checker (a party that bought an
        operator account) cannot get an honest node slashed. Unconfirmed (the second check
        accepts, or no third operator can check): nobody is convicted."""
        others = avoid | {primary[0].operator, check.node.operator}
        second = await self.prefill(prepared, primary, avoid=others, strict=True)
        confirmed = second is not None and second.vouched != {OUTPUT: primary[1].output}
        if not confirmed:
            _log.warning(
                "prefill rejection of %s by %s not confirmed by another operator: no conviction",
                prepared.job.request_id,
                check.node.node_id,
            )
        return confirmed

    async def _check(self, node: Candidate, job: CompletionJob, answer: NodeAnswer) -> PrefillVouch:
        """One prefill job: post the completion, verify the signed report under the checking
        node's registered key and that it is about this receipt, model and request."""
        timeout = self._options.job_timeout
        envelope = job.sign_for(node.node_id, self._key, timeout=timeout, kind="prefill")
        body = {
            "job": envelope.to_json(),
            "request": dict(job.canonical),
            "completion": {
                "receipt": answer.receipt.to_json(),
                "prompt_tokens": list(answer.prompt_tokens),
                "completion_tokens": list(answer.completion_tokens),
            },
        }
        result = await self._transport.post(node, body)
        return check_prefill(result, node, node_key(node.public_key), job, answer)
