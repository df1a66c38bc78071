"""Verification policies decided and checked: verdicts from receipts (pure logic, no I/O).

The policy and verdict formats (``none``, ``quorum:N/K``, ``spot:P``, ``optimistic:W``,
``prefill``; spot commit-reveal; the verdict JSON) live in :mod:`veriml.protocol.policy`, the
wire formats the coordinator, the nodes, the ledger and the SDK share; this module re-exports
them, so ``from veriml.verify.policy import Policy, Verdict`` keeps working.

The verdict is recomputed by anyone from the receipts: :func:`decide` is what the coordinator
runs and what the SDK runs again to check the coordinator's claim with :func:`check_verdict`;
:func:`check_spot` re-derives a revealed spot check from the receipt's commitment, and
:func:`check_spot_reveal` is the whole spot evidence of an answer (both answer checks use it).
:func:`disputed_pairs` is which disagreements a coordinator settles by dispute before it logs a
verdict (both its services use it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from veriml.core.digest import Digest
from veriml.core.errors import Check, DigestMismatchError, FormatError, VerificationError
from veriml.protocol.draw import Draw
from veriml.protocol.policy import (
    BASIS_POINTS,
    COMPARES,
    MAX_QUORUM,
    MAX_WINDOW,
    SPOT_COMMIT_TAG,
    SPOT_DECIDE_TAG,
    SPOT_SECRET_SIZE,
    WINNERS,
    Compare,
    DisputeRef,
    Outcome,
    Policy,
    PolicyKind,
    SpotReveal,
    Verdict,
    Winner,
    spot_checked,
    spot_commitment,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from veriml.verify.tolerance import OutputBounds

__all__ = [
    "BASIS_POINTS",
    "COMPARES",
    "MAX_DISSENT_DISPUTES",
    "MAX_QUORUM",
    "MAX_WINDOW",
    "SPOT_COMMIT_TAG",
    "SPOT_DECIDE_TAG",
    "SPOT_SECRET_SIZE",
    "WINNERS",
    "Compare",
    "DisputeRef",
    "Outcome",
    "Policy",
    "PolicyKind",
    "SpotReveal",
    "Verdict",
    "Winner",
    "check_spot",
    "check_spot_reveal",
    "check_verdict",
    "decide",
    "disputed_pairs",
    "spot_checked",
    "spot_commitment",
]

Answer = tuple[str, str, Mapping[str, Digest]]

MAX_DISSENT_DISPUTES: Final = 4
"""Disputes one quorum request opens at most (one per dissenting answer): N <= 16 bounds
them already; this keeps a request's latency to a few disputes run side by side."""


def check_spot(
    policy: Policy, reveal: SpotReveal, draw: Draw | None, commitment: Digest | None
) -> None:
    """Raise unless a verdict's spot decision is the one its draw secret implies, and the
    secret is the one the primary node's signed receipt committed to.

    ``commitment`` is the receipt predicate's ``spot.commitment``: ``spot_commitment(r)`` of
    the verdict's draw secret ``r`` must equal it (``DigestMismatchError``, ``check="spot"``: the
    node signed the commitment before anyone could see the decision), and
    :func:`spot_checked` of ``r`` must be the verdict's ``checked`` (``VerificationError``).
    """
    if draw is None:
        raise VerificationError("a spot:P verdict must reveal its draw secret", check=Check.SPOT)
    # 1. The secret is the one committed to before the node signed.
    calculated = spot_commitment(draw.secret)
    if commitment is None or calculated != commitment:
        raise DigestMismatchError(
            "the revealed draw secret is not the one the receipt commits to",
            check=Check.SPOT,
            expected=commitment,
            calculated=calculated,
        )
    # 2. The decision follows from the secret.
    checked = spot_checked(policy, draw.secret)
    if checked != reveal.checked:
        raise VerificationError(
            "the spot decision does not follow from the draw secret",
            check=Check.SPOT,
            claimed=reveal.checked,
            recomputed=checked,
        )


def check_spot_reveal(
    policy: Policy,
    verdict: Verdict,
    commitment: Digest | None,
    operators: Iterable[str],
) -> bool:
    """Raise unless an answer's spot-check evidence holds (docs/verification.md, "Spot checks");
    return whether the policy has one (``spot:P``), i.e. whether the ``spot`` check ran.

    ``commitment`` is the primary (first) receipt's ``spot.commitment`` and ``operators`` those
    of every verified answer. Only a ``spot:P`` verdict has a spot decision, and it must: the
    verdict's draw secret is the one the primary committed to and implies the decision
    (:func:`check_spot`; a receipt that commits to nothing fails), and a drawn check has a
    second operator's answer in the evidence, or a dispute: a drawn check that no node could
    carry out is not an accepted answer (the coordinator refuses it too).
    """
    reveal = verdict.spot
    if policy.kind != "spot":
        if reveal is not None:
            raise VerificationError("only a spot:P verdict has a spot decision", check=Check.SPOT)
        return False
    if reveal is None:
        raise VerificationError(
            "a spot:P verdict must say whether it was checked", check=Check.SPOT
        )
    check_spot(policy, reveal, verdict.draw, commitment)
    answered = set(operators)
    if reveal.checked and len(answered) < 2 and not verdict.disputes:
        raise VerificationError(
            "the spot check was drawn but no second operator's answer is in the evidence",
            check=Check.SPOT,
            operators=len(answered),
        )
    return True


def decide(
    policy: Policy,
    answers: Sequence[Answer],
    *,
    tensors: Sequence[Mapping[str, npt.NDArray[np.generic]]] | None = None,
    bounds: OutputBounds | None = None,
    spot: SpotReveal | None = None,
    final_after: str | None = None,
    disputes: Sequence[DisputeRef] = (),
    draw: Draw | None = None,
) -> Verdict:
    """The verdict for verified ``answers``: ``(node id, operator id, output digests)`` each.

    Answers from one operator count once (the first), as distinct operators are the point of
    the policy. Two answers agree when their output-digest maps are equal, or, in tolerance
    mode, when their output ``tensors`` (one map per answer, in the same order, checked here
    against the digests) agree within ``bounds``. Tolerance agreement is not transitive, so
    answers are grouped greedily in answer order: each joins the first group whose first member
    it agrees with, else starts a group; the largest group (the earliest on a tie) wins.

    - ``none`` / ``optimistic``: the first answer.
    - ``quorum:N/K``: accepted when K distinct operators agree, even if fewer than N answered.
    - ``prefill``: ``answers[0]`` generated, ``answers[1]`` is the checking node, whose output
      map is the generation's when its signed report accepts: accepted with both when they
      agree (two distinct operators), else rejected.
    - ``spot:P``: ``answers[0]`` is the primary, ``answers[1]`` the checker. Unchecked (or no
      checker answer): the primary. Checked and agreeing: both. Differing: the dispute against
      the primary decides (``defendant``: the primary alone, ``challenger``: the checker alone,
      ``none``: both, ``neither`` or no dispute: rejected).

    Finally, any dispute lost by an agreeing node (as defendant or challenger) rejects.
    ``final_after`` (when the answer can no longer be challenged) and ``draw`` (the request's
    draw secret) are recorded as given.
    """
    mode = policy.compare
    if (spot is not None) != (policy.kind == "spot"):
        raise FormatError("a spot:P verdict needs the spot decision, and only it has one")
    refs = tuple(disputes)
    same = _agreement(policy, answers, tensors, bounds)
    seen_operators: set[str] = set()
    distinct: list[int] = []
    for index, (_, operator, _) in enumerate(answers):
        if operator not in seen_operators:
            seen_operators.add(operator)
            distinct.append(index)

    def verdict(outcome: Outcome, members: Sequence[int]) -> Verdict:
        agreeing = tuple(answers[i][0] for i in members)
        outputs = dict(answers[members[0]][2]) if members else {}
        if outcome == "accepted" and any(set(agreeing) & set(d.losers()) for d in refs):
            outcome = "rejected"
        return Verdict(str(policy), outcome, agreeing, outputs, mode, spot, final_after, refs, draw)

    if not distinct:
        return verdict("rejected", ())
    if policy.kind == "spot":
        assert spot is not None
        primary = distinct[0]
        if not spot.checked or len(distinct) < 2:
            return verdict("accepted", (primary,))
        checker = distinct[1]
        if same(primary, checker):
            return verdict("accepted", (primary, checker))
        ruling = next((d for d in refs if d.defendant == answers[primary][0]), None)
        if ruling is None or ruling.winner == "neither":
            return verdict("rejected", ())
        chosen = {"defendant": (primary,), "challenger": (checker,), "none": (primary, checker)}
        return verdict("accepted", chosen[ruling.winner])
    if policy.kind == "prefill":
        if len(distinct) < 2 or not same(distinct[0], distinct[1]):
            return verdict("rejected", ())
        return verdict("accepted", (distinct[0], distinct[1]))
    if policy.kind != "quorum":
        return verdict("accepted", (distinct[0],))
    groups: list[list[int]] = []
    for index in distinct:
        group = next((g for g in groups if same(g[0], index)), None)
        if group is None:
            groups.append([index])
        else:
            group.append(index)
    best = max(groups, key=len)  # max keeps the first of equal-sized groups
    return verdict("accepted" if len(best) >= policy.needed else "rejected", best)


def _agreement(
    policy: Policy,
    answers: Sequence[Answer],
    tensors: Sequence[Mapping[str, npt.NDArray[np.generic]]] | None,
    bounds: OutputBounds | None,
) -> Callable[[int, int], bool]:
    """The agreement relation between two answers (by index) for the policy's mode."""
    digests = [tuple(sorted(outputs.items())) for _, _, outputs in answers]
    if policy.compare == "bitwise":
        return lambda i, j: digests[i] == digests[j]
    if tensors is None or bounds is None or len(tensors) != len(answers):
        raise FormatError(
            "tolerance mode needs the output tensors of every answer and the output bounds",
            answers=len(answers),
            tensors=None if tensors is None else len(tensors),
        )
    from veriml.verify.tensors import check_tensor_digests
    from veriml.verify.tolerance import outputs_agree

    for (node_id, _, outputs), values in zip(answers, tensors, strict=True):
        check_tensor_digests(
            values,
            outputs,
            check=Check.VERDICT,
            kind="output",
            claimant=f"node {node_id}'s receipt",
        )
    return lambda i, j: digests[i] == digests[j] or outputs_agree(tensors[i], tensors[j], bounds)


def check_verdict(claimed: Verdict, recomputed: Verdict) -> None:
    """Raise unless a verdict claimed by a coordinator is the one the receipts support."""
    if claimed != recomputed:
        raise VerificationError(
            "the verdict does not follow from the receipts",
            check=Check.VERDICT,
            claimed=claimed.outcome,
            recomputed=recomputed.outcome,
        )
    if recomputed.outcome != "accepted":
        raise VerificationError(
            "the policy was not met",
            check=Check.VERDICT,
            policy=recomputed.policy,
            agreeing=len(recomputed.agreeing),
        )


def disputed_pairs(
    policy: Policy, verdict: Verdict, answers: Sequence[tuple[str, str]]
) -> list[tuple[int, int]]:
    """The disagreements a verdict leaves that become disputes before it is logged, as
    ``(defendant, challenger)`` indexes into ``answers``.

    ``answers`` are ``(node id, operator id)``, in the order :func:`decide` was given them, and
    ``verdict`` is what :func:`decide` concluded from them before any dispute:

    - ``spot:P``: a checked answer that the checker contradicts (the verdict is rejected): the
      primary (``answers[0]``) is the defendant, the checker (``answers[1]``) the challenger;
    - ``quorum:N/K`` accepted: each dissenting answer (of an operator not among the agreeing
      ones) is a defendant against the first agreeing answer, at most
      :data:`MAX_DISSENT_DISPUTES`;
    - any other policy or outcome: none.
    """
    if policy.kind == "spot":
        return [(0, 1)] if len(answers) >= 2 and verdict.outcome == "rejected" else []
    if policy.kind != "quorum" or verdict.outcome != "accepted":
        return []
    index = {node: i for i, (node, _) in enumerate(answers)}
    agreeing_operators = {answers[index[node]][1] for node in verdict.agreeing}
    dissent = [
        i
        for i, (node, operator) in enumerate(answers)
        if node not in verdict.agreeing and operator not in agreeing_operators
    ]
    first = index[verdict.agreeing[0]]
    return [(d, first) for d in dissent[:MAX_DISSENT_DISPUTES]]
