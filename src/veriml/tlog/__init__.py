"""veriml.tlog: an RFC 9162 Merkle log with C2SP checkpoints, signed notes, tiles, witnesses
and offline proofs.

The formats and the math are pure (no I/O); storage, serving and witnessing build on them.
"""

from veriml.tlog.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from veriml.tlog.cosignature import CosignatureSigner, CosignatureVerifier
from veriml.tlog.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    CompactRange,
    NodeID,
    ProofPlan,
    consistency_nodes,
    consistency_proof,
    inclusion_nodes,
    inclusion_proof,
    leaf_hash,
    node_hash,
    range_nodes,
    root_from_consistency_proof,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    root_from_range,
    verify_consistency,
    verify_inclusion,
)
from veriml.tlog.note import Note, NoteSignature, NoteSigner, NoteVerifier, open_note, sign_note

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Checkpoint",
    "CompactRange",
    "CosignatureSigner",
    "CosignatureVerifier",
    "NodeID",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "ProofPlan",
    "consistency_nodes",
    "consistency_proof",
    "inclusion_nodes",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "open_checkpoint",
    "open_note",
    "range_nodes",
    "root_from_consistency_proof",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "root_from_range",
    "sign_checkpoint",
    "sign_note",
    "verify_consistency",
    "verify_inclusion",
]
