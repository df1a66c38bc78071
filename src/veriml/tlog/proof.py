"""C2SP tlog-proof: an offline-verifiable proof that an entry is in a witnessed log.

Follows https://c2sp.org/tlog-proof (``c2sp.org/tlog-proof@v1``), "Format"::

    c2sp.org/tlog-proof@v1
    extra <base64 opaque data>          (optional)
    index <decimal>
    <base64 inclusion proof hash>        (zero or more, leaf's sibling first)

    <the signed, cosigned checkpoint, verbatim>

and "Verifying a tlog proof": compute the leaf hash, check the log's signature and origin,
count the trusted witnesses' cosignatures against a quorum, then check the inclusion proof.

veriml puts the logged entry itself in ``extra`` when it writes a proof, so a proof file is
self-contained: :func:`verify_tlog_proof` uses ``extra`` as the entry when none is given, and
the inclusion proof then authenticates it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from veriml.core.errors import Check, FormatError, SignatureError, VerificationError
from veriml.tlog.checkpoint import Checkpoint, open_checkpoint, parse_size
from veriml.tlog.merkle import HASH_SIZE, leaf_hash, verify_inclusion
from veriml.tlog.note import MAX_NOTE_SIZE, Note, Verifier, b64decode_strict, b64encode

__all__ = ["HEADER", "MAX_PROOF_SIZE", "TlogProof", "verify_tlog_proof"]

HEADER = "c2sp.org/tlog-proof@v1"
MAX_PROOF_HASHES = 64
MAX_PROOF_SIZE = MAX_NOTE_SIZE + 256 * 1024


@dataclass(frozen=True, slots=True)
class TlogProof:
    """A parsed tlog-proof. ``checkpoint`` is the signed checkpoint note, byte for byte."""

    index: int
    proof: tuple[bytes, ...]
    checkpoint: bytes
    extra: bytes | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.index < 1 << 63:
            raise FormatError("proof index out of range", index=self.index)
        if len(self.proof) > MAX_PROOF_HASHES:
            raise FormatError("inclusion proof is too long", hashes=len(self.proof))
        if any(len(h) != HASH_SIZE for h in self.proof):
            raise FormatError("inclusion proof hashes must be 32 bytes")
        if self.extra is not None and not self.extra:
            raise FormatError("extra data, when present, must not be empty")
        # The checkpoint must at least parse; its signatures are checked by verify_tlog_proof.
        Checkpoint.from_text(Note.from_bytes(self.checkpoint).text)

    def to_bytes(self) -> bytes:
        lines = [HEADER]
        if self.extra is not None:
            lines.append(f"extra {b64encode(self.extra)}")
        lines.append(f"index {self.index}")
        lines.extend(b64encode(h) for h in self.proof)
        return ("\n".join(lines) + "\n\n").encode() + self.checkpoint

    @classmethod
    def from_bytes(cls, data: bytes) -> TlogProof:
        """Parse a ``.tlog-proof`` file strictly (the one form :meth:`to_bytes` writes)."""
        # 1. Bound the size; the header ends at the first blank line, the checkpoint follows.
        if len(data) > MAX_PROOF_SIZE:
            raise FormatError("tlog proof is too large", size=len(data))
        head, sep, checkpoint = data.partition(b"\n\n")
        if not sep:
            raise FormatError("tlog proof has no blank line before the checkpoint")
        try:
            lines = head.decode("ascii").split("\n")
        except UnicodeDecodeError as exc:
            raise FormatError("tlog proof header is not ASCII") from exc
        # 2. The header line, then an optional extra line, then the index line.
        if lines[0] != HEADER:
            raise FormatError("not a c2sp.org/tlog-proof@v1 file", first_line=lines[0][:80])
        pos = 1
        extra = None
        if pos < len(lines) and lines[pos].startswith("extra "):
            extra = b64decode_strict(lines[pos][len("extra ") :], "extra data")
            pos += 1
        if pos >= len(lines) or not lines[pos].startswith("index "):
            raise FormatError("tlog proof has no index line")
        index = parse_size(lines[pos][len("index ") :], "index")
        # 3. Zero or more base64 hashes: the inclusion proof.
        hashes = lines[pos + 1 :]
        if len(hashes) > MAX_PROOF_HASHES:
            raise FormatError("inclusion proof is too long", hashes=len(hashes))
        proof = tuple(b64decode_strict(h, "inclusion proof hash") for h in hashes)
        return cls(index, proof, checkpoint, extra)


def verify_tlog_proof(
    data: bytes,
    *,
    log: Verifier,
    witnesses: Sequence[Verifier] = (),
    quorum: int = 0,
    entry: bytes | None = None,
    origin: str | None = None,
) -> tuple[int, Checkpoint]:
    """Verify a tlog-proof offline against a policy; return the entry's index and checkpoint.

    ``entry`` is the logged entry; when omitted, the proof's ``extra`` data is taken as the
    entry (as veriml writes it) and is authenticated by the inclusion proof. ``quorum`` is
    the number of distinct trusted ``witnesses`` that must have cosigned the checkpoint.
    Raises :class:`FormatError` for a malformed file and a :class:`VerificationError`
    subclass for every failed check.
    """
    proof = TlogProof.from_bytes(data)
    if not 0 <= quorum <= len(witnesses):
        raise VerificationError(
            "quorum cannot be met by the trusted witnesses",
            check=Check.POLICY,
            quorum=quorum,
            witnesses=len(witnesses),
        )
    # 1. Compute the leaf hash of the entry.
    if entry is None:
        if proof.extra is None:
            raise VerificationError("no entry given and none in the proof", check=Check.ENTRY)
        entry = proof.extra
    leaf = leaf_hash(entry)
    # 2. The checkpoint is signed by the log key, for the expected origin.
    checkpoint, note = open_checkpoint(
        proof.checkpoint, log, others=witnesses, origin=origin or log.name
    )
    # 3. Enough distinct trusted witnesses cosigned it.
    witness_ids = {(w.name, w.key_hash) for w in witnesses}
    cosigned = {(s.name, s.key_hash) for s in note.verified} & witness_ids
    if len(cosigned) < quorum:
        raise SignatureError(
            "too few trusted witnesses cosigned the checkpoint",
            check=Check.WITNESS_QUORUM,
            cosigned=len(cosigned),
            quorum=quorum,
        )
    # 4. The inclusion proof binds the leaf to the checkpoint's root.
    verify_inclusion(leaf, proof.index, checkpoint.size, proof.proof, checkpoint.root_hash)
    return proof.index, checkpoint
