"""What the ledger state is made of (docs/ledger.md, "State"): accounts, open disputes, the
running totals, and the error the fold raises for an entry it refuses. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from veriml.core.errors import FormatError
from veriml.ledger.settlement import Parties

__all__ = ["Account", "LedgerError", "OpenDispute", "Totals", "Unbonding"]


class LedgerError(FormatError):
    """An entry the fold refuses: it would overdraw a balance, a stake or a dispute's held
    slash, it was not authorised by the account it debits, it does not follow from a verdict,
    or it does not parse. ``index`` is the entry's log index; an auditor fails on it."""

    def __init__(self, message: str, *, index: int, **evidence: Any) -> None:
        super().__init__(message, index=index, **evidence)
        self.index = index


@dataclass(frozen=True, slots=True)
class Unbonding:
    """Stake on its way out: slashable until ``available_at``, then back in the balance."""

    amount: int
    available_at: str

    def to_json(self) -> dict[str, Any]:
        return {"amount": self.amount, "available_at": self.available_at}


@dataclass(slots=True)
class Account:
    """One account's money and record. The state hands out copies: changing one changes
    nothing in the ledger."""

    balance: int = 0
    stake: int = 0
    unbonding: list[Unbonding] = field(default_factory=list)
    reputation: int = 0
    jobs: int = 0
    slashes: int = 0
    slashed: int = 0

    @property
    def unbonding_total(self) -> int:
        return sum(u.amount for u in self.unbonding)

    def copy(self) -> Account:
        return Account(
            self.balance,
            self.stake,
            list(self.unbonding),
            self.reputation,
            self.jobs,
            self.slashes,
            self.slashed,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "balance": self.balance,
            "stake": self.stake,
            "unbonding": [u.to_json() for u in self.unbonding],
            "reputation": self.reputation,
            "jobs": self.jobs,
            "slashes": self.slashes,
            "slashed": self.slashed,
        }


@dataclass(frozen=True, slots=True)
class OpenDispute:
    """A dispute between its challenge and its verdict; ``bond`` is locked in it."""

    inference: str
    defendant: str
    challenger: str
    bond: int
    opened_at: str
    challenger_node: str | None = None

    @property
    def parties(self) -> Parties:
        return Parties(self.defendant, self.challenger, self.challenger_node)

    def to_json(self) -> dict[str, Any]:
        out = {
            "inference": self.inference,
            "defendant": self.defendant,
            "challenger": self.challenger,
            "bond": self.bond,
            "opened_at": self.opened_at,
        }
        if self.challenger_node is not None:
            out["challenger_node"] = self.challenger_node
        return out


@dataclass(slots=True)
class Totals:
    """Running sums. ``staked`` is the current stake plus unbonding of every account; the
    others only grow."""

    minted: int = 0
    burned: int = 0
    staked: int = 0
    fees: int = 0
    rewards: int = 0
    slashed: int = 0

    def copy(self) -> Totals:
        return Totals(self.minted, self.burned, self.staked, self.fees, self.rewards, self.slashed)

    def to_json(self) -> dict[str, int]:
        return {
            "minted": self.minted,
            "burned": self.burned,
            "staked": self.staked,
            "fees": self.fees,
            "rewards": self.rewards,
            "slashed": self.slashed,
        }
