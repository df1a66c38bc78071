"""The bond map: a Merkle commitment to every account's stake (docs/ledger.md, "Bonds").

A client cannot fold the whole log for every answer, yet it must know that the operators
behind a verdict were bonded. So the ledger's ``state`` entries commit to the **bond map**:
one leaf per account with stake, sorted by account id, each leaf the RFC 8785 bytes of
``{"account": id, "stake": n}``, and the map's root the RFC 9162 Merkle root of those leaves
(``0x00`` leaf and ``0x01`` node prefixes, as the log itself). An auditor folding the log
recomputes the root at every ``state`` entry and refuses one that differs; a client checks
one account with a :class:`BondProof`: the leaf and its inclusion proof, O(log n) hashes.

Only stake is in a leaf (not balances or reputation), so the map changes only with ``stake``,
``unstake`` and ``slash`` entries, and a ``state`` entry stays current while inferences are
logged. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from veriml.core.canonical import canonicalize
from veriml.core.digest import Digest
from veriml.core.errors import Check, FormatError, VerificationError
from veriml.tlog.merkle import (
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
    verify_inclusion,
)

__all__ = ["BondMap", "BondProof", "bond_leaf"]

_MAX_PROOF = 64


def bond_leaf(account: str, stake: int) -> bytes:
    """The leaf of one account: RFC 8785 ``{"account": id, "stake": n}``."""
    return canonicalize({"account": account, "stake": stake})


@dataclass(frozen=True, slots=True)
class BondMap:
    """The bond map of one ledger state: accounts with stake, sorted by id."""

    accounts: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, stakes: Mapping[str, int]) -> BondMap:
        """The map of ``stakes`` (accounts with zero stake are left out)."""
        return cls(tuple(sorted((a, s) for a, s in stakes.items() if s > 0)))

    @property
    def size(self) -> int:
        return len(self.accounts)

    def leaf_hashes(self) -> list[bytes]:
        return [leaf_hash(bond_leaf(a, s)) for a, s in self.accounts]

    def root(self) -> Digest:
        """The RFC 9162 root over the leaves (the empty tree's root when no one has stake)."""
        return Digest(root_from_leaf_hashes(self.leaf_hashes()))

    def prove(self, account: str, hashes: Sequence[bytes] | None = None) -> BondProof:
        """The proof of ``account``'s stake; ``hashes`` are :meth:`leaf_hashes` when the
        caller has them (a coordinator proving several accounts of one map)."""
        for index, (name, stake) in enumerate(self.accounts):
            if name == account:
                leaves = list(hashes) if hashes is not None else self.leaf_hashes()
                proof = inclusion_proof(index, self.size, leaves)
                return BondProof(account, stake, index, self.size, tuple(proof))
        raise FormatError("the account has no stake in this bond map", account=account[:80])


@dataclass(frozen=True, slots=True)
class BondProof:
    """``account`` had ``stake`` in the bond map of ``size`` leaves: leaf ``index`` and its
    inclusion proof (``{"account", "stake", "index", "size", "proof": [base64]}``)."""

    account: str
    stake: int
    index: int
    size: int
    proof: tuple[bytes, ...]

    def check(self, root: Digest, size: int) -> None:
        """Raise :class:`VerificationError` (``check="bonds"``) unless this leaf is in the
        map committed to by ``root`` (a ``state`` entry's ``bonds``) of ``size`` leaves."""
        if self.size != size:
            raise VerificationError(
                "the stake proof is for another bond map",
                check=Check.BONDS,
                account=self.account,
                size=self.size,
                expected=size,
            )
        try:
            verify_inclusion(
                leaf_hash(bond_leaf(self.account, self.stake)),
                self.index,
                self.size,
                list(self.proof),
                root.raw,
            )
        except (VerificationError, FormatError) as exc:
            raise VerificationError(
                "the account's stake is not in the logged bond map",
                check=Check.BONDS,
                account=self.account,
                reason=exc.message,
            ) from exc

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "stake": self.stake,
            "index": self.index,
            "size": self.size,
            "proof": [base64.b64encode(h).decode() for h in self.proof],
        }

    @classmethod
    def from_json(cls, obj: object) -> BondProof:
        if not isinstance(obj, Mapping):
            raise FormatError("a stake proof is an object")
        try:
            account, stake, index, size = obj["account"], obj["stake"], obj["index"], obj["size"]
            hashes = obj["proof"]
        except KeyError as exc:
            raise FormatError("a stake proof is missing a member", member=str(exc)) from exc
        numbers = (stake, index, size)
        if not isinstance(account, str) or not all(
            type(n) is int and 0 <= n < 1 << 53 for n in numbers
        ):
            raise FormatError("a stake proof names an account and integers")
        if not isinstance(hashes, list) or len(hashes) > _MAX_PROOF:
            raise FormatError("a stake proof has at most 64 hashes")
        try:
            proof = tuple(base64.b64decode(h, validate=True) for h in hashes)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise FormatError("stake proof hashes are base64") from exc
        return cls(account, stake, index, size, proof)
