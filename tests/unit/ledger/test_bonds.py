"""The bond map (veriml.ledger.bonds): an RFC 9162 Merkle commitment to every account's stake,
and the short proof a client checks one operator's stake with."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.canonical import canonicalize
from veriml.core.digest import Digest
from veriml.core.errors import FormatError, VerificationError
from veriml.ledger import BondMap, BondProof, bond_leaf

A, B, C = ("sha256:" + c * 64 for c in "abc")


def test_the_root_of_an_empty_map_is_the_empty_trees_root() -> None:
    # RFC 9162 §2.1.1: MTH({}) = SHA-256() (e3b0c442... in the RFC's own test data).
    empty = BondMap.of({})
    assert (empty.size, empty.root()) == (0, Digest(hashlib.sha256(b"").digest()))
    assert BondMap.of({A: 0, B: 0}) == empty  # accounts without stake are left out


def test_a_leaf_is_the_rfc8785_account_and_stake_and_one_leaf_is_its_own_root() -> None:
    assert bond_leaf(A, 5) == canonicalize({"account": A, "stake": 5})
    assert bond_leaf(A, 5) == b'{"account":"' + A.encode() + b'","stake":5}'
    # RFC 9162 §2.1.1: MTH({d0}) = SHA-256(0x00 || d0).
    expected = hashlib.sha256(b"\x00" + bond_leaf(A, 5)).digest()
    assert BondMap.of({A: 5}).root() == Digest(expected)


def test_the_map_is_sorted_by_account_so_its_root_does_not_depend_on_insertion_order() -> None:
    one = BondMap.of({C: 3, A: 1, B: 2})
    assert one.accounts == ((A, 1), (B, 2), (C, 3))
    assert one.root() == BondMap.of({A: 1, B: 2, C: 3}).root()
    assert one.root() != BondMap.of({A: 1, B: 2, C: 4}).root()


def test_a_proof_verifies_against_its_maps_root_and_size() -> None:
    bonds = BondMap.of({A: 1, B: 2, C: 3})
    proof = bonds.prove(B)
    assert (proof.account, proof.stake, proof.index, proof.size) == (B, 2, 1, 3)
    proof.check(bonds.root(), bonds.size)
    # A coordinator proving several accounts of one map hashes the leaves once.
    assert bonds.prove(B, bonds.leaf_hashes()) == proof


def _refused(proof: BondProof, root: Digest, size: int) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        proof.check(root, size)
    assert info.value.check == "bonds"
    return info.value


def test_a_proof_for_another_stake_another_size_or_another_root_fails() -> None:
    bonds = BondMap.of({A: 1, B: 2, C: 3})
    proof = bonds.prove(B)
    _refused(BondProof(B, 200, proof.index, proof.size, proof.proof), bonds.root(), 3)
    _refused(BondProof(A, 2, proof.index, proof.size, proof.proof), bonds.root(), 3)
    _refused(proof, bonds.root(), 4)
    _refused(proof, BondMap.of({A: 1, B: 2, C: 4}).root(), 3)
    flipped = (bytes([proof.proof[0][0] ^ 1]) + proof.proof[0][1:], *proof.proof[1:])
    _refused(BondProof(B, 2, proof.index, proof.size, flipped), bonds.root(), 3)
    _refused(BondProof(B, 2, 2, proof.size, proof.proof), bonds.root(), 3)


def test_an_account_without_stake_has_no_proof() -> None:
    with pytest.raises(FormatError, match="no stake"):
        BondMap.of({A: 1, B: 0}).prove(B)


def test_a_proof_round_trips_through_json_and_malformed_ones_are_format_errors() -> None:
    proof = BondMap.of({A: 1, B: 2, C: 3}).prove(C)
    assert BondProof.from_json(proof.to_json()) == proof
    obj: dict[str, Any] = proof.to_json()
    for bad in (
        [obj],
        {k: v for k, v in obj.items() if k != "proof"},
        obj | {"stake": -1},
        obj | {"stake": True},
        obj | {"index": 2**53},
        obj | {"account": 7},
        obj | {"proof": "AAAA"},
        obj | {"proof": ["not base64!"]},
        obj | {"proof": ["AAAA"] * 65},
    ):
        with pytest.raises(FormatError):
            BondProof.from_json(bad)


stakes = st.dictionaries(
    st.text(min_size=1, max_size=12), st.integers(min_value=0, max_value=2**53 - 1), max_size=24
)


@given(stakes)
def test_every_staked_accounts_proof_verifies_against_the_maps_root(
    accounts: dict[str, int],
) -> None:
    bonds = BondMap.of(accounts)
    root, hashes = bonds.root(), bonds.leaf_hashes()
    staked = {a: s for a, s in accounts.items() if s > 0}
    assert dict(bonds.accounts) == staked
    for account, amount in staked.items():
        proof = bonds.prove(account, hashes)
        assert proof.stake == amount
        BondProof.from_json(proof.to_json()).check(root, bonds.size)


@given(stakes, st.data())
def test_no_proof_verifies_for_a_stake_the_map_does_not_hold(
    accounts: dict[str, int], data: st.DataObject
) -> None:
    bonds = BondMap.of(accounts)
    if not bonds.size:
        return
    account, amount = data.draw(st.sampled_from(bonds.accounts))
    proof = bonds.prove(account)
    other = data.draw(st.integers(min_value=0, max_value=2**53 - 1).filter(lambda s: s != amount))
    with pytest.raises(VerificationError):
        BondProof(account, other, proof.index, proof.size, proof.proof).check(
            bonds.root(), bonds.size
        )
