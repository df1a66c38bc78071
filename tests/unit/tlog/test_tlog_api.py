"""veriml.tlog's public names are pinned: outside code (clients, witnesses) builds on them."""

from __future__ import annotations

import subprocess
import sys

import veriml.tlog

PUBLIC = {
    "AuditReport",
    "AuditState",
    "Checkpoint",
    "CompactRange",
    "CosignatureSigner",
    "CosignatureVerifier",
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Log",
    "LogClient",
    "LogOptions",
    "LogStorage",
    "MAX_ENTRY_SIZE",
    "NodeID",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "ProofPlan",
    "PublishReport",
    "Sequencer",
    "SignedCheckpoint",
    "TILE_HEIGHT",
    "TILE_WIDTH",
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
}


def test_exported_names_are_pinned() -> None:
    assert set(veriml.tlog.__all__) == PUBLIC


def test_every_exported_name_resolves() -> None:
    for name in veriml.tlog.__all__:
        assert getattr(veriml.tlog, name) is not None, name


def test_verifying_proofs_does_not_load_storage_or_http() -> None:
    code = (
        "import sys; from veriml.tlog import verify_inclusion, verify_tlog_proof; "
        "print(sorted(m for m in ('sqlalchemy', 'fastapi', 'httpx') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
