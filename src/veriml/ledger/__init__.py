"""The ledger: the log's entry types (and, later, the state folded from them)."""

from veriml.ledger.entries import (
    Entry,
    InferenceEntry,
    ModelEntry,
    NodeEntry,
    parse_entry,
)

__all__ = ["Entry", "InferenceEntry", "ModelEntry", "NodeEntry", "parse_entry"]
