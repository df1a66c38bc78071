"""veriml.tlog: an RFC 9162 Merkle log with C2SP checkpoints, signed notes, tiles, witnesses
and offline proofs.

The formats and the math are pure (no I/O) and load eagerly. Storage, sequencing, serving,
witnessing, the read client and the auditor pull in SQLAlchemy, FastAPI and httpx, so their
names load on first use: code that only verifies proofs stays light.
"""

import importlib
from typing import TYPE_CHECKING, Any

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
from veriml.tlog.proof import TlogProof, verify_tlog_proof
from veriml.tlog.tiles import (
    TILE_HEIGHT,
    TILE_WIDTH,
    TileHashReader,
    TilePath,
    build_tiles,
    bundles_for_size,
    decode_entry_bundle,
    encode_entry_bundle,
    hash_at,
    node_tile,
    split_tile_hashes,
    tile_width,
    tiles_for_size,
)

_LAZY: dict[str, str] = {
    "MAX_ENTRY_SIZE": "veriml.tlog.storage",
    "LogStorage": "veriml.tlog.storage",
    "Log": "veriml.tlog.log",
    "LogOptions": "veriml.tlog.log",
    "Sequencer": "veriml.tlog.sequencer",
    "create_log_app": "veriml.tlog.server",
    "create_log_router": "veriml.tlog.server",
    "PublishReport": "veriml.tlog.publish",
    "publish_log": "veriml.tlog.publish",
    "WitnessClient": "veriml.tlog.witness",
    "WitnessConflictError": "veriml.tlog.witness",
    "collect_cosignatures": "veriml.tlog.witness",
    "create_witness_app": "veriml.tlog.witness",
    "LogClient": "veriml.tlog.client",
    "SignedCheckpoint": "veriml.tlog.client",
    "verify_checkpoint_note": "veriml.tlog.client",
    "AuditReport": "veriml.tlog.audit",
    "AuditState": "veriml.tlog.audit",
    "audit": "veriml.tlog.audit",
}

if TYPE_CHECKING:
    from veriml.tlog.audit import AuditReport, AuditState, audit
    from veriml.tlog.client import LogClient, SignedCheckpoint, verify_checkpoint_note
    from veriml.tlog.log import Log, LogOptions
    from veriml.tlog.publish import PublishReport, publish_log
    from veriml.tlog.sequencer import Sequencer
    from veriml.tlog.server import create_log_app, create_log_router
    from veriml.tlog.storage import MAX_ENTRY_SIZE, LogStorage
    from veriml.tlog.witness import (
        WitnessClient,
        WitnessConflictError,
        collect_cosignatures,
        create_witness_app,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'veriml.tlog' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_ENTRY_SIZE",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "AuditReport",
    "AuditState",
    "Checkpoint",
    "CompactRange",
    "CosignatureSigner",
    "CosignatureVerifier",
    "Log",
    "LogClient",
    "LogOptions",
    "LogStorage",
    "NodeID",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "ProofPlan",
    "PublishReport",
    "Sequencer",
    "SignedCheckpoint",
    "TileHashReader",
    "TilePath",
    "TlogProof",
    "WitnessClient",
    "WitnessConflictError",
    "audit",
    "build_tiles",
    "bundles_for_size",
    "collect_cosignatures",
    "consistency_nodes",
    "consistency_proof",
    "create_log_app",
    "create_log_router",
    "create_witness_app",
    "decode_entry_bundle",
    "encode_entry_bundle",
    "hash_at",
    "inclusion_nodes",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "node_tile",
    "open_checkpoint",
    "open_note",
    "publish_log",
    "range_nodes",
    "root_from_consistency_proof",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "root_from_range",
    "sign_checkpoint",
    "sign_note",
    "split_tile_hashes",
    "tile_width",
    "tiles_for_size",
    "verify_checkpoint_note",
    "verify_consistency",
    "verify_inclusion",
    "verify_tlog_proof",
]
