"""Real transparency-log material for the tlog fuzz targets: a log key, a witness, a small log
of 600 entries (two full level-0 tiles and a partial one), its signed and cosigned checkpoint,
and tlog-proof files. Keys are derived from names, so every run builds the same bytes."""

from __future__ import annotations

from _ledger import account
from veriml.tlog.checkpoint import Checkpoint, sign_checkpoint
from veriml.tlog.cosignature import CosignatureSigner, CosignatureVerifier
from veriml.tlog.merkle import inclusion_proof, leaf_hash, root_from_leaf_hashes
from veriml.tlog.note import Note, NoteSigner, NoteVerifier, sign_note
from veriml.tlog.proof import TlogProof

ORIGIN = "example.com/fuzz-log"
LOG = NoteSigner(ORIGIN, account("fuzz-log"))
WITNESS = CosignatureSigner("witness.example/w1", account("fuzz-witness"))
STRANGER = NoteSigner("stranger.example/log", account("fuzz-stranger"))
LOG_KEY = NoteVerifier.from_vkey(LOG.vkey)
WITNESS_KEY = CosignatureVerifier.from_vkey(WITNESS.vkey)

ENTRIES = [b"entry %d" % i for i in range(600)]
LEAVES = [leaf_hash(e) for e in ENTRIES]
CHECKPOINT = Checkpoint(ORIGIN, len(ENTRIES), root_from_leaf_hashes(LEAVES), ("ext one",))
TIMESTAMP = 1_700_000_000

SIGNED_CHECKPOINT = (
    Note.from_bytes(sign_checkpoint(CHECKPOINT, [LOG]))
    .add_signatures(WITNESS.sign(CHECKPOINT, TIMESTAMP))
    .to_bytes()
)
"""The checkpoint note: the log's signature, then a witness's cosignature."""

PLAIN_TEXT = "hello, fuzz\nsecond line\n"
PLAIN_NOTE = sign_note(PLAIN_TEXT, [LOG, STRANGER])
SIGNED_TEXTS = frozenset({CHECKPOINT.to_text(), PLAIN_TEXT})
"""Every note text our keys signed: no other text may open."""


def proof_file(index: int, *, extra: bool = True) -> bytes:
    return TlogProof(
        index,
        tuple(inclusion_proof(index, len(ENTRIES), LEAVES)),
        SIGNED_CHECKPOINT,
        ENTRIES[index] if extra else None,
    ).to_bytes()


PROOF_FILES = [proof_file(0), proof_file(257), proof_file(599), proof_file(3, extra=False)]
