"""Verification policies and their verdicts (pure logic, no I/O).

- ``none``: one node answers; the verdict accepts its verified receipt.
- ``quorum:N/K`` (1 <= K <= N): N nodes of distinct operators answer; the verdict accepts the
  outputs that at least K receipts agree on, bitwise (same output digests).

The verdict is recomputed by anyone from the receipts alone: :func:`decide` is what the
coordinator runs and what the SDK runs again to check the coordinator's claim.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from veriml.core.digest import Digest
from veriml.core.errors import FormatError, VerificationError

__all__ = ["Policy", "Verdict", "check_verdict", "decide"]

MAX_QUORUM = 16
Outcome = Literal["accepted", "rejected"]


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed policy. ``str(policy)`` is its canonical text (``none``, ``quorum:3/2``)."""

    kind: Literal["none", "quorum"]
    n: int = 1
    k: int = 1

    def __post_init__(self) -> None:
        if self.kind == "none" and (self.n, self.k) != (1, 1):
            raise FormatError("policy none runs exactly one node")
        if not 1 <= self.k <= self.n <= MAX_QUORUM:
            raise FormatError(
                "quorum:N/K needs 1 <= K <= N <= 16", policy=f"quorum:{self.n}/{self.k}"
            )

    @classmethod
    def parse(cls, text: str) -> Policy:
        if text == "none":
            return cls("none")
        kind, sep, rest = text.partition(":")
        n_text, slash, k_text = rest.partition("/")
        if kind != "quorum" or not sep or not slash or not n_text.isdigit() or not k_text.isdigit():
            raise FormatError("policy must be none or quorum:N/K", got=text[:64])
        return cls("quorum", int(n_text), int(k_text))

    @property
    def nodes(self) -> int:
        """How many nodes (of distinct operators) must answer."""
        return self.n

    def __str__(self) -> str:
        return "none" if self.kind == "none" else f"quorum:{self.n}/{self.k}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the policy concluded from the receipts; part of the inference log entry."""

    policy: str
    outcome: Outcome
    agreeing: tuple[str, ...]
    outputs: Mapping[str, Digest] = field(default_factory=dict)
    mode: str = "bitwise"

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "mode": self.mode,
            "outcome": self.outcome,
            "agreeing": list(self.agreeing),
            "outputs": {name: d.to_text() for name, d in sorted(self.outputs.items())},
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Verdict:
        try:
            outcome = obj["outcome"]
            if outcome not in ("accepted", "rejected"):
                raise FormatError("verdict outcome must be accepted or rejected", got=outcome)
            agreeing = obj["agreeing"]
            outputs = obj["outputs"]
            if not isinstance(agreeing, list) or not all(isinstance(a, str) for a in agreeing):
                raise FormatError("verdict agreeing must be a list of node ids")
            if not isinstance(outputs, dict):
                raise FormatError("verdict outputs must be an object")
            return cls(
                policy=str(Policy.parse(str(obj["policy"]))),
                outcome=outcome,
                agreeing=tuple(agreeing),
                outputs={str(k): Digest.from_text(str(v)) for k, v in outputs.items()},
                mode=str(obj.get("mode", "bitwise")),
            )
        except KeyError as exc:
            raise FormatError("verdict is missing a member", member=str(exc)) from exc


def decide(policy: Policy, answers: Sequence[tuple[str, str, Mapping[str, Digest]]]) -> Verdict:
    """The verdict for verified ``answers``: ``(node id, operator id, output digests)`` each.

    Answers from one operator count once (the first), as distinct operators are the point of a
    quorum. Bitwise agreement: identical output-digest maps. The verdict accepts when at least K
    distinct operators agree (1 for ``none``), even if fewer than N answered: K independent
    agreeing answers are the guarantee the policy promises.
    """
    seen_operators: set[str] = set()
    distinct: list[tuple[str, tuple[tuple[str, Digest], ...]]] = []
    for node_id, operator, outputs in answers:
        if operator in seen_operators:
            continue
        seen_operators.add(operator)
        distinct.append((node_id, tuple(sorted(outputs.items()))))
    if not distinct:
        return Verdict(str(policy), "rejected", ())
    counts = Counter(outputs for _, outputs in distinct)
    best, votes = counts.most_common(1)[0]
    agreeing = tuple(node for node, outputs in distinct if outputs == best)
    needed = policy.k if policy.kind == "quorum" else 1
    if votes < needed:
        return Verdict(str(policy), "rejected", agreeing, dict(best))
    return Verdict(str(policy), "accepted", agreeing, dict(best))


def check_verdict(claimed: Verdict, recomputed: Verdict) -> None:
    """Raise unless a verdict claimed by a coordinator is the one the receipts support."""
    if claimed != recomputed:
        raise VerificationError(
            "the verdict does not follow from the receipts",
            check="verdict",
            claimed=claimed.outcome,
            recomputed=recomputed.outcome,
        )
    if recomputed.outcome != "accepted":
        raise VerificationError(
            "the policy was not met",
            check="verdict",
            policy=recomputed.policy,
            agreeing=len(recomputed.agreeing),
        )
