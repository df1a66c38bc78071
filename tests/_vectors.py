"""The test vectors from other implementations, vendored in tests/vectors (see its README.md).

They live inside the repository so that a fresh clone tests with nothing beside it; don't edit
them.
"""

from __future__ import annotations

from pathlib import Path

VECTORS = Path(__file__).resolve().parent / "vectors"
GO_TREE = VECTORS / "go-tlog-tiles"
GO_NOTES = VECTORS / "go-sumdb-note" / "notes.json"
MERKLE_TESTDATA = VECTORS / "transparency-dev-merkle" / "testdata"

# Files vendored beside Go's tile tree that are not part of the tree itself.
_GO_TREE_DOCS = frozenset({"README.txt", "LICENSE"})


def go_tree_files() -> dict[str, bytes]:
    """Go's tile tree, path relative to the tree -> bytes, without its README.txt and LICENSE."""
    return {
        str(p.relative_to(GO_TREE)): p.read_bytes()
        for p in sorted(GO_TREE.rglob("*"))
        if p.is_file() and p.name not in _GO_TREE_DOCS
    }
