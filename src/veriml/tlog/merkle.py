"""RFC 9162 Merkle tree math: hashing, proofs, proof plans and compact ranges.

Follows RFC 9162 §2.1 (https://www.rfc-editor.org/rfc/rfc9162#section-2.1): SHA-256 with a
``0x00`` prefix for leaves and ``0x01`` for interior nodes; inclusion proofs (§2.1.3) and
consistency proofs (§2.1.4). The structure follows transparency-dev/merkle: *which* nodes a
proof needs (:func:`inclusion_nodes`, :func:`consistency_nodes`, a :class:`ProofPlan`) is kept
apart from *combining* their hashes (:meth:`ProofPlan.rehash`), so storage fetches the nodes
it holds and nothing more; and every ``verify_*`` is a ``root_from_*`` plus a comparison that
raises :class:`~veriml.errors.RootMismatchError` with both roots.

Pure logic, no I/O. Sizes and indices are bounded to ``[0, 2**63)`` as in every C2SP log.

>>> leaves = [leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")]
>>> root = root_from_leaf_hashes(leaves)
>>> verify_inclusion(leaves[1], 1, 3, inclusion_proof(1, 3, leaves), root)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from veriml.core.errors import Check, RootMismatchError, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_SIZE",
    "CompactRange",
    "NodeID",
    "ProofPlan",
    "consistency_nodes",
    "consistency_proof",
    "inclusion_nodes",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_nodes",
    "root_from_consistency_proof",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "root_from_range",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
MAX_SIZE = 1 << 63
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """MTH of a one-entry list: ``SHA-256(0x00 || entry)`` (RFC 9162 §2.1.1)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """An interior node: ``SHA-256(0x01 || left || right)`` (RFC 9162 §2.1.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


@dataclass(frozen=True, slots=True, order=True)
class NodeID:
    """A node of the tree: ``level`` 0 holds leaves; node ``(l, i)`` covers leaves
    ``[i * 2**l, (i + 1) * 2**l)``. Only complete subtrees have a NodeID."""

    level: int
    index: int

    def __post_init__(self) -> None:
        if not 0 <= self.level < 64 or not 0 <= self.index < MAX_SIZE:
            raise VerificationError(
                "node id out of range", check=Check.NODE_ID, level=self.level, index=self.index
            )

    def coverage(self) -> tuple[int, int]:
        """The leaf range ``[begin, end)`` under this node."""
        return self.index << self.level, (self.index + 1) << self.level

    def parent(self) -> NodeID:
        return NodeID(self.level + 1, self.index >> 1)

    def sibling(self) -> NodeID:
        return NodeID(self.level, self.index ^ 1)


def _check_size(name: str, value: int) -> None:
    if not 0 <= value < MAX_SIZE:
        raise VerificationError(f"{name} out of range", check=name, value=value)


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise VerificationError(
            f"{name} must be {HASH_SIZE} bytes", check=f"{name} size", length=len(value)
        )


def _decompose(begin: int, end: int) -> tuple[int, int]:
    """Bit masks of the levels of the left and right parts of the compact range [begin, end)."""
    if begin == 0:
        return 0, end
    xbegin = begin - 1
    # Below the point where the paths to leaves begin-1 and end diverge, the left part is
    # made of the zero bits of begin-1 and the right part of the one bits of end.
    mask = (1 << ((xbegin ^ end).bit_length() - 1)) - 1
    return ~xbegin & mask, end & mask


def _range_nodes(begin: int, end: int) -> list[NodeID]:
    """The complete subtrees, left to right, that exactly cover leaves ``[begin, end)``."""
    left, right = _decompose(begin, end)
    ids: list[NodeID] = []
    pos = begin
    level = 0
    while left:
        if left & 1:
            ids.append(NodeID(level, pos >> level))
            pos += 1 << level
        left >>= 1
        level += 1
    for level in range(right.bit_length() - 1, -1, -1):
        if right >> level & 1:
            ids.append(NodeID(level, pos >> level))
            pos += 1 << level
    return ids


def range_nodes(size: int) -> list[NodeID]:
    """The complete subtrees, left to right, whose roots make up a tree of ``size`` leaves."""
    _check_size("size", size)
    return _range_nodes(0, size)


def root_from_range(hashes: Sequence[bytes]) -> bytes:
    """The tree root from the hashes of :func:`range_nodes`, folded right to left."""
    if not hashes:
        return EMPTY_ROOT
    root = hashes[-1]
    for left in reversed(hashes[:-1]):
        root = node_hash(left, root)
    return root


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 §2.1.1, level by level: an unpaired last node moves up as is,
    which is the same tree as splitting at the largest power of two below n."""
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


@dataclass(frozen=True, slots=True)
class ProofPlan:
    """The stored nodes a proof needs (``ids``) and how to combine their hashes.

    ``ids[begin:end]`` are the complete subtrees that together make up the one *ephemeral*
    node of the proof (a node of the incomplete right edge, never stored); :meth:`rehash`
    folds them into it. Mirrors ``proof.Nodes`` of transparency-dev/merkle.
    """

    ids: tuple[NodeID, ...]
    begin: int = 0
    end: int = 0

    def rehash(self, hashes: Sequence[bytes]) -> list[bytes]:
        """Turn the hashes of :attr:`ids`, in order, into the proof."""
        if len(hashes) != len(self.ids):
            raise VerificationError(
                "wrong number of node hashes for the proof plan",
                check=Check.NODE_COUNT,
                expected=len(self.ids),
                got=len(hashes),
            )
        for h in hashes:
            _check_hash("node hash", h)
        proof = list(hashes[: self.begin])
        if self.begin < self.end:
            # Ephemeral nodes are listed lowest first; each next one is to the left.
            ephemeral = hashes[self.begin]
            for h in hashes[self.begin + 1 : self.end]:
                ephemeral = node_hash(h, ephemeral)
            proof.append(ephemeral)
        proof.extend(hashes[self.end :])
        return proof


def _plan(index: int, level: int, size: int, *, skip_first: bool) -> ProofPlan:
    """Nodes proving that node ``(level, index)`` is in the tree of ``size`` leaves."""
    inner = (index ^ (size >> level)).bit_length() - 1
    fork = NodeID(level + inner, index >> inner)
    begin, end = fork.coverage()
    node = NodeID(level, index)
    ids = [node]
    while node.level < fork.level:
        ids.append(node.sibling())
        node = node.parent()
    start = len(ids)
    # The right of the fork is the ephemeral node, lowest levels first so rehash can fold them.
    ids.extend(reversed(_range_nodes(end, size)))
    stop = len(ids)
    ids.extend(reversed(_range_nodes(0, begin)))
    if start >= stop:
        start = stop = 0
    if skip_first:
        ids = ids[1:]
        if start < stop:
            start, stop = start - 1, stop - 1
    return ProofPlan(tuple(ids), start, stop)


def inclusion_nodes(index: int, size: int) -> ProofPlan:
    """The plan of the inclusion proof of leaf ``index`` in a tree of ``size`` (§2.1.3)."""
    _check_size("size", size)
    if not 0 <= index < size:
        raise VerificationError("index is beyond size", check=Check.INDEX, index=index, size=size)
    return _plan(index, 0, size, skip_first=True)


def consistency_nodes(size1: int, size2: int) -> ProofPlan:
    """The plan of the consistency proof between sizes ``0 < size1 <= size2`` (§2.1.4)."""
    _check_size("size2", size2)
    if not 0 < size1 <= size2:
        raise VerificationError(
            "consistency needs 0 < size1 <= size2", check=Check.SIZES, size1=size1, size2=size2
        )
    if size1 == size2:
        return ProofPlan(())
    level = (size1 & -size1).bit_length() - 1
    power_of_two = size1 & (size1 - 1) == 0
    # A power-of-two old tree is its own subtree root, which the verifier already has.
    return _plan((size1 - 1) >> level, level, size2, skip_first=power_of_two)


def _subproof(m: int, hashes: Sequence[bytes], complete: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 §2.1.4.1."""
    n = len(hashes)
    if m == n:
        return [] if complete else [root_from_leaf_hashes(hashes)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*_subproof(m, hashes[:k], complete), root_from_leaf_hashes(hashes[k:])]
    return [*_subproof(m - k, hashes[k:], False), root_from_leaf_hashes(hashes[:k])]


def _path(m: int, hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1."""
    n = len(hashes)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, hashes[:k]), root_from_leaf_hashes(hashes[k:])]
    return [*_path(m - k, hashes[k:]), root_from_leaf_hashes(hashes[:k])]


def inclusion_proof(index: int, size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The inclusion proof of leaf ``index`` in the first ``size`` leaves, computed in memory
    straight from the RFC's recursive definition (for tests and tools)."""
    inclusion_nodes(index, size)  # validates the arguments
    if size > len(leaf_hashes):
        raise VerificationError("fewer leaves than size", check=Check.SIZE, size=size)
    return _path(index, leaf_hashes[:size])


def consistency_proof(size1: int, size2: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The consistency proof between the first ``size1`` and ``size2`` leaves, in memory."""
    consistency_nodes(size1, size2)  # validates the arguments
    if size2 > len(leaf_hashes):
        raise VerificationError("fewer leaves than size2", check=Check.SIZE2, size2=size2)
    if size1 == size2:
        return []
    return _subproof(size1, leaf_hashes[:size2], True)


def _proof_shape(index: int, size: int) -> tuple[int, int]:
    """(inner, border): proof hashes below and above where paths to index and size-1 split."""
    inner = (index ^ (size - 1)).bit_length()
    return inner, (index >> inner).bit_count()


def _chain_inner(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    for i, h in enumerate(proof):
        seed = node_hash(seed, h) if (index >> i) & 1 == 0 else node_hash(h, seed)
    return seed


def _chain_inner_right(seed: bytes, proof: Sequence[bytes], index: int) -> bytes:
    # Only the siblings to the left: the hash of the same subtree at the older size.
    for i, h in enumerate(proof):
        if (index >> i) & 1:
            seed = node_hash(h, seed)
    return seed


def _chain_border_right(seed: bytes, proof: Sequence[bytes]) -> bytes:
    for h in proof:
        seed = node_hash(h, seed)
    return seed


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """The root implied by an inclusion proof (RFC 9162 §2.1.3.2)."""
    # 1. The index lies in the tree and every hash has the hash size.
    _check_size("size", size)
    if not 0 <= index < size:
        raise VerificationError("index is beyond size", check=Check.INDEX, index=index, size=size)
    _check_hash("leaf hash", leaf_hash)
    # 2. The proof has exactly the length the tree shape requires.
    inner, border = _proof_shape(index, size)
    if len(proof) != inner + border:
        raise VerificationError(
            "wrong inclusion proof length",
            check=Check.PROOF_LENGTH,
            expected=inner + border,
            got=len(proof),
        )
    for h in proof:
        _check_hash("proof hash", h)
    # 3. Hash up the path: siblings below the split, then the left border above it.
    return _chain_border_right(_chain_inner(leaf_hash, proof[:inner], index), proof[inner:])


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise unless ``proof`` shows leaf ``index`` with ``leaf_hash`` in the tree ``root``."""
    _check_hash("root", root)
    calculated = root_from_inclusion_proof(leaf_hash, index, size, proof)
    if calculated != root:
        raise RootMismatchError(
            "inclusion proof does not lead to the root",
            expected=root,
            calculated=calculated,
            check=Check.INCLUSION,
        )


def root_from_consistency_proof(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes
) -> bytes:
    """The root of tree ``size2`` implied by a consistency proof from ``root1`` (§2.1.4.2);
    raises :class:`RootMismatchError` if the proof does not also lead to ``root1``."""
    # 1. Sizes: 0 < size1 <= size2 (a proof from the empty tree proves nothing).
    _check_size("size2", size2)
    if size2 < size1:
        raise VerificationError(
            "size2 is smaller than size1", check=Check.SIZES, size1=size1, size2=size2
        )
    if size1 <= 0:
        raise VerificationError(
            "consistency from an empty tree is meaningless", check=Check.SIZES, size1=size1
        )
    # 2. Equal sizes: the proof is empty and the root is the same.
    if size1 == size2:
        if proof:
            raise VerificationError(
                "equal sizes need an empty proof", check=Check.PROOF_LENGTH, got=len(proof)
            )
        return root1
    _check_hash("root1", root1)
    for h in proof:
        _check_hash("proof hash", h)
    # 3. The proof starts with the largest complete subtree at size1's right edge, unless
    #    size1 is a power of two: then that subtree is the old tree, whose root is root1.
    inner, border = _proof_shape(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1
    inner -= shift
    if size1 == 1 << shift:
        seed, rest = root1, list(proof)
    else:
        if not proof:
            raise VerificationError("empty consistency proof", check=Check.PROOF_LENGTH, got=0)
        seed, rest = proof[0], list(proof[1:])
    if len(rest) != inner + border:
        raise VerificationError(
            "wrong consistency proof length",
            check=Check.PROOF_LENGTH,
            expected=inner + border + len(proof) - len(rest),
            got=len(proof),
        )
    mask = (size1 - 1) >> shift
    # 4. Rebuild root1 from the left siblings alone; it must match.
    hash1 = _chain_border_right(_chain_inner_right(seed, rest[:inner], mask), rest[inner:])
    if hash1 != root1:
        raise RootMismatchError(
            "consistency proof does not lead to the old root",
            expected=root1,
            calculated=hash1,
            check=Check.CONSISTENCY_ROOT1,
        )
    # 5. Rebuild root2 from all the siblings.
    return _chain_border_right(_chain_inner(seed, rest[:inner], mask), rest[inner:])


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Raise unless ``proof`` shows the tree ``root1`` of ``size1`` is a prefix of ``root2``."""
    calculated = root_from_consistency_proof(size1, size2, proof, root1)
    if calculated != root2:
        raise RootMismatchError(
            "consistency proof does not lead to the new root",
            expected=root2,
            calculated=calculated,
            check=Check.CONSISTENCY_ROOT2,
        )


class CompactRange:
    """The right edge of a tree: the roots of :func:`range_nodes` of :attr:`size`.

    Appending a leaf completes zero or more nodes; :meth:`append` reports each of them
    (level 0 included) so a sequencer can store exactly the new node hashes. This object is
    mutable on purpose: it is an accumulator, like ``compact.Range`` in transparency-dev/merkle.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_hashes(cls, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """A range for a tree of ``size`` from the hashes of ``range_nodes(size)``."""
        _check_size("size", size)
        if len(hashes) != size.bit_count():
            raise VerificationError(
                "wrong number of hashes for a compact range",
                check=Check.RANGE_LENGTH,
                expected=size.bit_count(),
                got=len(hashes),
            )
        for h in hashes:
            _check_hash("range hash", h)
        rng = cls()
        rng._size = size
        rng._hashes = list(hashes)
        return rng

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def append(
        self, leaf_hash: bytes, visit: Callable[[NodeID, bytes], None] | None = None
    ) -> None:
        """Add one leaf; call ``visit(node, hash)`` for each node it completes, lowest first."""
        _check_hash("leaf hash", leaf_hash)
        _check_size("size", self._size + 1)
        index, level, h = self._size, 0, leaf_hash
        if visit is not None:
            visit(NodeID(0, index), h)
        while index & 1:
            h = node_hash(self._hashes.pop(), h)
            index >>= 1
            level += 1
            if visit is not None:
                visit(NodeID(level, index), h)
        self._hashes.append(h)
        self._size += 1

    def root(self) -> bytes:
        return root_from_range(self._hashes)

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, root={self.root().hex()})"
