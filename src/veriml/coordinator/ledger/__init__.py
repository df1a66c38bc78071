"""The coordinator's side of the ledger: the book that appends entries, stored tensors and
the ledger routes (docs/ledger.md)."""
