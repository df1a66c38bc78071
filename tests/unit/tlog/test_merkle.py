"""Properties of the Merkle math: proofs from random trees verify, any flipped bit fails, the
log only grows, and the storage-side plans agree with the RFC's recursive definitions."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veriml.core.errors import RootMismatchError, VerificationError
from veriml.tlog.merkle import (
    EMPTY_ROOT,
    CompactRange,
    NodeID,
    consistency_nodes,
    consistency_proof,
    inclusion_nodes,
    inclusion_proof,
    leaf_hash,
    node_hash,
    range_nodes,
    root_from_leaf_hashes,
    root_from_range,
    verify_consistency,
    verify_inclusion,
)


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def _mth(hashes: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH, written recursively exactly as the RFC states it."""
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return node_hash(_mth(hashes[:k]), _mth(hashes[k:]))


def _node(leaves: list[bytes], node: NodeID) -> bytes:
    begin, end = node.coverage()
    return _mth(leaves[begin:end])


sizes = st.integers(min_value=1, max_value=300)


def test_hashing_follows_rfc9162_prefixes() -> None:
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    assert root_from_leaf_hashes([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


@given(sizes)
def test_root_equals_rfc_recursive_definition(n: int) -> None:
    leaves = _leaves(n)
    assert root_from_leaf_hashes(leaves) == _mth(leaves)


@given(sizes, st.data())
def test_inclusion_proofs_from_random_trees_verify(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    index = data.draw(st.integers(0, n - 1))
    verify_inclusion(leaves[index], index, n, inclusion_proof(index, n, leaves), _mth(leaves))


@given(st.integers(2, 200), st.data())
def test_any_flipped_bit_in_an_inclusion_proof_or_root_fails(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    index = data.draw(st.integers(0, n - 1))
    proof = inclusion_proof(index, n, leaves)
    root = _mth(leaves)
    target = data.draw(st.integers(0, len(proof)))  # len(proof) means "the root"
    bit = data.draw(st.integers(0, 255))
    if target == len(proof):
        root = _flip(root, bit)
    else:
        proof[target] = _flip(proof[target], bit)
    with pytest.raises(RootMismatchError):
        verify_inclusion(leaves[index], index, n, proof, root)


def _flip(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


@given(sizes, st.data())
def test_the_log_only_grows_every_prefix_is_consistent(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    size1 = data.draw(st.integers(1, n))
    size2 = data.draw(st.integers(size1, n))
    proof = consistency_proof(size1, size2, leaves)
    verify_consistency(size1, size2, proof, _mth(leaves[:size1]), _mth(leaves[:size2]))


@given(st.integers(2, 200), st.data())
def test_any_flipped_bit_in_a_consistency_proof_or_root_fails(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    size1 = data.draw(st.integers(1, n - 1))
    size2 = data.draw(st.integers(size1 + 1, n))
    proof = consistency_proof(size1, size2, leaves)
    roots = [_mth(leaves[:size1]), _mth(leaves[:size2])]
    target = data.draw(st.integers(0, len(proof) + 1))
    bit = data.draw(st.integers(0, 255))
    if target >= len(proof):
        roots[target - len(proof)] = _flip(roots[target - len(proof)], bit)
    else:
        proof[target] = _flip(proof[target], bit)
    with pytest.raises(RootMismatchError):
        verify_consistency(size1, size2, proof, *roots)


@given(st.integers(2, 200), st.data())
def test_a_rewritten_history_is_inconsistent(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    size1 = data.draw(st.integers(1, n - 1))
    forged = list(leaves)
    forged[data.draw(st.integers(0, size1 - 1))] = leaf_hash(b"forged")
    proof = consistency_proof(size1, n, forged)
    with pytest.raises(RootMismatchError):
        verify_consistency(size1, n, proof, _mth(leaves[:size1]), _mth(forged))


@given(st.integers(0, 600))
def test_compact_range_root_equals_root_from_leaf_hashes(n: int) -> None:
    leaves = _leaves(n)
    rng = CompactRange()
    for h in leaves:
        rng.append(h)
    assert rng.size == n
    assert rng.root() == root_from_leaf_hashes(leaves)
    ids = range_nodes(n)
    assert list(rng.hashes) == [_node(leaves, i) for i in ids]
    assert root_from_range(rng.hashes) == rng.root()
    assert CompactRange.from_hashes(n, rng.hashes).root() == rng.root()


@given(st.integers(1, 300))
def test_compact_range_visits_every_completed_node_exactly_once(n: int) -> None:
    leaves = _leaves(n)
    seen: dict[NodeID, bytes] = {}

    def visit(node: NodeID, h: bytes) -> None:
        assert node not in seen
        seen[node] = h

    rng = CompactRange()
    for h in leaves:
        rng.append(h, visit)
    expected = {
        NodeID(level, index) for level in range(n.bit_length()) for index in range(n >> level)
    }
    assert set(seen) == expected
    assert all(seen[node] == _node(leaves, node) for node in seen)


@given(sizes, st.data())
@settings(max_examples=200)
def test_inclusion_plan_rehash_equals_in_memory_proof(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    index = data.draw(st.integers(0, n - 1))
    plan = inclusion_nodes(index, n)
    assert all(node.coverage()[1] <= n for node in plan.ids)  # only complete, stored nodes
    fetched = [_node(leaves, node) for node in plan.ids]
    assert plan.rehash(fetched) == inclusion_proof(index, n, leaves)


@given(sizes, st.data())
@settings(max_examples=200)
def test_consistency_plan_rehash_equals_in_memory_proof(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    size1 = data.draw(st.integers(1, n))
    plan = consistency_nodes(size1, n)
    assert all(node.coverage()[1] <= n for node in plan.ids)
    fetched = [_node(leaves, node) for node in plan.ids]
    assert plan.rehash(fetched) == consistency_proof(size1, n, leaves)


def test_range_nodes_are_the_binary_decomposition_of_size() -> None:
    assert range_nodes(0) == []
    assert range_nodes(13) == [NodeID(3, 0), NodeID(2, 2), NodeID(0, 12)]
    assert range_nodes(2**62) == [NodeID(62, 0)]


@pytest.mark.parametrize(
    ("index", "size"), [(0, 0), (5, 5), (-1, 3), (0, 2**63), (2**63, 2**63 + 1)]
)
def test_out_of_range_index_or_absurd_size_is_rejected(index: int, size: int) -> None:
    with pytest.raises(VerificationError):
        verify_inclusion(b"\x00" * 32, index, size, [], b"\x00" * 32)
    with pytest.raises(VerificationError):
        inclusion_nodes(index, size)


def test_proof_of_the_wrong_length_is_rejected_with_the_expected_length() -> None:
    leaves = _leaves(10)
    proof = inclusion_proof(3, 10, leaves)
    with pytest.raises(VerificationError) as info:
        verify_inclusion(leaves[3], 3, 10, [*proof, proof[0]], _mth(leaves))
    assert info.value.check == "proof length"
    assert info.value.evidence == {"expected": len(proof), "got": len(proof) + 1}


def test_consistency_from_the_empty_tree_or_backwards_is_rejected() -> None:
    with pytest.raises(VerificationError):
        verify_consistency(0, 5, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(VerificationError):
        verify_consistency(5, 4, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(VerificationError):
        consistency_nodes(0, 3)


def test_plan_rehash_rejects_wrong_count_and_short_hashes() -> None:
    plan = inclusion_nodes(5, 11)
    with pytest.raises(VerificationError):
        plan.rehash([b"\x00" * 32] * (len(plan.ids) + 1))
    with pytest.raises(VerificationError):
        plan.rehash([b"\x00" * 31] * len(plan.ids))


def test_compact_range_from_hashes_checks_their_number() -> None:
    with pytest.raises(VerificationError):
        CompactRange.from_hashes(3, [b"\x00" * 32])


@given(
    st.binary(max_size=40),
    st.integers(-5, 2**64),
    st.integers(-5, 2**64),
    st.lists(st.binary(max_size=40), max_size=70),
    st.binary(max_size=40),
)
def test_arbitrary_inclusion_input_fails_only_with_verification_errors(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> None:
    with pytest.raises(VerificationError):
        verify_inclusion(leaf, index, size, proof, root)


@given(
    st.integers(-5, 2**64),
    st.integers(-5, 2**64),
    st.lists(st.binary(min_size=31, max_size=33), max_size=70),
    st.binary(max_size=40),
    st.binary(max_size=40),
)
def test_arbitrary_consistency_input_fails_only_with_verification_errors(
    size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes
) -> None:
    if size1 == size2 and size1 > 0 and not proof and root1 == root2:
        return  # the one trivially true case
    with pytest.raises(VerificationError):
        verify_consistency(size1, size2, proof, root1, root2)


@pytest.mark.parametrize("module", ["merkle", "note", "checkpoint", "cosignature"])
def test_module_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"veriml.tlog.{module}"))
    assert result.attempted > 0
    assert result.failed == 0


def test_format_and_math_names_are_exported_by_the_package() -> None:
    import veriml.tlog

    names = {
        "verify_inclusion", "verify_consistency", "leaf_hash", "node_hash", "EMPTY_ROOT",
        "HASH_SIZE", "NodeID", "ProofPlan", "CompactRange", "inclusion_nodes",
        "consistency_nodes", "range_nodes", "root_from_range", "root_from_leaf_hashes",
        "Note", "NoteSignature", "NoteSigner", "NoteVerifier", "sign_note", "open_note",
        "Checkpoint", "sign_checkpoint", "open_checkpoint", "CosignatureSigner",
        "CosignatureVerifier", "TilePath", "TileHashReader", "build_tiles", "tiles_for_size",
        "encode_entry_bundle", "decode_entry_bundle", "split_tile_hashes", "TlogProof",
        "verify_tlog_proof",
    }  # fmt: skip
    assert names <= set(veriml.tlog.__all__)
    assert all(hasattr(veriml.tlog, name) for name in veriml.tlog.__all__)
