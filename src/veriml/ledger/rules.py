"""The ledger's rules, as logged (docs/ledger.md, "Rules").

The coordinator's operator chooses them; they are logged in every ``state`` entry, so the fold
(and any auditor) applies the rules that were in force at each point of the log, and a client
reads the minimum stake it checks operators against from the log, not from the coordinator's
word. Fractions are basis points (integers): the settlement rule must give the same amounts in
every implementation, which floats do not promise.

>>> Rules(admin="sha256:" + "0" * 64, min_stake=100).slash_fraction
Fraction(1, 2)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, Final

from veriml.core.errors import FormatError

__all__ = ["BASIS_POINTS", "Rules"]

BASIS_POINTS: Final = 10_000
_AMOUNT_LIMIT: Final = 1 << 53
_MAX_SECONDS: Final = 10**9
_INTEGERS: Final = ("min_stake", "challenge_bond", "fee_per_job", "slash_bp", "reward_bp")
_SECONDS: Final = ("unstake_delay", "challenge_window", "dispute_timeout")


@dataclass(frozen=True, slots=True, kw_only=True)
class Rules:
    """What the ledger enforces. Amounts are integers; times are seconds (JSON numbers).

    - ``admin``: the account whose signed ``deposit`` requests mint money (the coordinator's
      operator);
    - ``min_stake``: an operator's nodes get jobs, and count for a client, only with this
      much stake;
    - ``min_reputation``: nodes below it get no jobs;
    - ``unstake_delay``: unstaked funds stay slashable this long (an ``unstake`` entry's
      ``available_at`` is at least this after its ``at``);
    - ``slash_bp`` / ``reward_bp``: the part of a loser's stake slashed, and of that slash
      paid to a winning challenger (the rest is burned), in basis points;
    - ``challenge_bond``: what an outside challenger locks to open a dispute;
    - ``fee_per_job``: what a paying client pays each node that answered. 0 means inference is
      free by rule: requests need not be signed and earn nodes no reputation;
    - ``challenge_window``: how long an answer can be challenged (``optimistic:W`` uses W);
    - ``dispute_timeout``: seconds a dispute party has for each move.
    """

    admin: str
    min_stake: int = 100
    min_reputation: int = -1000
    unstake_delay: float = 3600.0
    slash_bp: int = 5000
    reward_bp: int = 5000
    challenge_bond: int = 10
    fee_per_job: int = 0
    challenge_window: float = 86_400.0
    dispute_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.admin, str) or not 0 < len(self.admin) <= 256:
            raise FormatError("rules admin must be an account id")
        for name in _INTEGERS:
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value < _AMOUNT_LIMIT:
                raise FormatError(f"rules {name} must be an integer in [0, 2^53)", got=value)
        for name in ("slash_bp", "reward_bp"):
            if getattr(self, name) > BASIS_POINTS:
                raise FormatError(
                    f"rules {name} is at most {BASIS_POINTS}", got=getattr(self, name)
                )
        reputation = self.min_reputation
        if type(reputation) is not int or not -_AMOUNT_LIMIT < reputation < _AMOUNT_LIMIT:
            raise FormatError("rules min_reputation must be an integer", got=reputation)
        for name in _SECONDS:
            value = getattr(self, name)
            if (
                type(value) not in (int, float)
                or not math.isfinite(value)
                or not 0 <= value <= _MAX_SECONDS
            ):
                raise FormatError(f"rules {name} must be a number of seconds", got=str(value)[:40])
        if self.dispute_timeout <= 0:
            raise FormatError("rules dispute_timeout must be positive")

    @property
    def slash_fraction(self) -> Fraction:
        return Fraction(self.slash_bp, BASIS_POINTS)

    @property
    def reward_fraction(self) -> Fraction:
        return Fraction(self.reward_bp, BASIS_POINTS)

    @property
    def free(self) -> bool:
        """Inference is free by rule: unsigned requests are allowed and earn no reputation."""
        return self.fee_per_job == 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: object) -> Rules:
        if not isinstance(obj, Mapping):
            raise FormatError("rules must be an object")
        names = set(cls.__dataclass_fields__)
        if set(obj) != names:
            raise FormatError(
                "rules have exactly the documented members",
                missing=",".join(sorted(names - set(obj))) or None,
                unknown=",".join(sorted(set(obj) - names))[:200] or None,
            )
        return cls(**dict(obj))

    @classmethod
    def from_fractions(
        cls, *, slash_fraction: float, reward_fraction: float, **values: Any
    ) -> Rules:
        """Rules from fractions in [0, 1] (the coordinator's settings), rounded to basis points."""
        return cls(
            slash_bp=round(slash_fraction * BASIS_POINTS),
            reward_bp=round(reward_fraction * BASIS_POINTS),
            **values,
        )
