"""C2SP tlog-proof files: exact round trips and offline verification against a policy."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.errors import Error, FormatError, RootMismatchError, SignatureError
from veriml.core.keys import generate_key
from veriml.tlog.checkpoint import Checkpoint, sign_checkpoint
from veriml.tlog.cosignature import CosignatureSigner, CosignatureVerifier
from veriml.tlog.merkle import inclusion_proof, leaf_hash, root_from_leaf_hashes
from veriml.tlog.note import Note, NoteSigner, NoteVerifier
from veriml.tlog.proof import TlogProof, verify_tlog_proof

ORIGIN = "example.com/log"
LOG = NoteSigner(ORIGIN, generate_key())
WITNESSES = [CosignatureSigner(f"witness.example/w{i}", generate_key()) for i in range(3)]
ENTRIES = [b"entry %d" % i for i in range(11)]
LEAVES = [leaf_hash(e) for e in ENTRIES]
CHECKPOINT = Checkpoint(ORIGIN, len(ENTRIES), root_from_leaf_hashes(LEAVES))


def _note(cosigners: list[CosignatureSigner]) -> bytes:
    note = Note.from_bytes(sign_checkpoint(CHECKPOINT, [LOG]))
    return note.add_signatures(*(w.sign(CHECKPOINT, 1_700_000_000) for w in cosigners)).to_bytes()


def _proof(index: int, cosigners: list[CosignatureSigner], *, extra: bool = True) -> bytes:
    return TlogProof(
        index,
        tuple(inclusion_proof(index, len(ENTRIES), LEAVES)),
        _note(cosigners),
        ENTRIES[index] if extra else None,
    ).to_bytes()


LOG_KEY = NoteVerifier.from_vkey(LOG.vkey)
WITNESS_KEYS = [CosignatureVerifier.from_vkey(w.vkey) for w in WITNESSES]


def test_proof_file_has_the_spec_layout() -> None:
    text = _proof(3, WITNESSES[:1]).decode()
    head, checkpoint = text.split("\n\n", 1)
    lines = head.split("\n")
    assert lines[0] == "c2sp.org/tlog-proof@v1"
    assert lines[1].startswith("extra ")
    assert lines[2] == "index 3"
    assert len(lines[3:]) == 4  # sibling hashes of leaf 3 in a tree of 11
    assert checkpoint.startswith(CHECKPOINT.to_text())


@pytest.mark.parametrize("index", range(len(ENTRIES)))
def test_proof_verifies_offline_with_a_witness_quorum(index: int) -> None:
    data = _proof(index, WITNESSES[:2])
    got_index, checkpoint = verify_tlog_proof(data, log=LOG_KEY, witnesses=WITNESS_KEYS, quorum=2)
    assert (got_index, checkpoint) == (index, CHECKPOINT)
    assert verify_tlog_proof(data, log=LOG_KEY, entry=ENTRIES[index])[0] == index


def test_fewer_cosignatures_than_the_quorum_fail() -> None:
    data = _proof(4, WITNESSES[:1])
    with pytest.raises(SignatureError, match="too few"):
        verify_tlog_proof(data, log=LOG_KEY, witnesses=WITNESS_KEYS, quorum=2)


def test_untrusted_witnesses_do_not_count() -> None:
    stranger = CosignatureSigner("witness.example/w0", generate_key())  # same name, other key
    data = _proof(4, [stranger, WITNESSES[1]])
    with pytest.raises(SignatureError):
        verify_tlog_proof(data, log=LOG_KEY, witnesses=WITNESS_KEYS, quorum=2)


def test_a_quorum_the_policy_cannot_meet_is_refused() -> None:
    with pytest.raises(Error, match="quorum"):
        verify_tlog_proof(_proof(0, WITNESSES), log=LOG_KEY, quorum=1)


def test_another_entry_or_a_forged_extra_fails_inclusion() -> None:
    data = _proof(5, [])
    with pytest.raises(RootMismatchError):
        verify_tlog_proof(data, log=LOG_KEY, entry=b"entry 6")
    forged = TlogProof.from_bytes(data)
    forged = TlogProof(forged.index, forged.proof, forged.checkpoint, b"not logged")
    with pytest.raises(RootMismatchError):
        verify_tlog_proof(forged.to_bytes(), log=LOG_KEY)


def test_proof_signed_by_another_log_or_origin_fails() -> None:
    other = NoteVerifier.from_vkey(NoteSigner(ORIGIN, generate_key()).vkey)
    with pytest.raises(SignatureError):
        verify_tlog_proof(_proof(1, []), log=other)
    with pytest.raises(SignatureError, match="another log"):
        verify_tlog_proof(_proof(1, []), log=LOG_KEY, origin="example.com/other")


def test_proof_without_entry_or_extra_cannot_verify() -> None:
    with pytest.raises(Error, match="no entry"):
        verify_tlog_proof(_proof(1, [], extra=False), log=LOG_KEY)


@given(st.integers(0, len(ENTRIES) - 1), st.booleans(), st.integers(0, 3))
def test_proof_file_round_trips_exactly(index: int, extra: bool, cosigners: int) -> None:
    data = _proof(index, WITNESSES[:cosigners], extra=extra)
    parsed = TlogProof.from_bytes(data)
    assert parsed.to_bytes() == data
    assert parsed.index == index


@given(st.binary(max_size=400))
def test_parsing_arbitrary_bytes_raises_only_format_errors(data: bytes) -> None:
    try:
        parsed = TlogProof.from_bytes(data)
    except FormatError:
        return
    assert parsed.to_bytes() == data


GOOD = _proof(3, [])


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (GOOD.replace(b"@v1", b"@v2", 1), "wrong header"),
        (GOOD.replace(b"index 3", b"index 03", 1), "leading zero"),
        (GOOD.replace(b"index 3", b"index -3", 1), "negative index"),
        (GOOD.replace(b"index 3", b"index 99999999999999999999", 1), "absurd index"),
        (GOOD.replace(b"index 3\n", b"", 1), "no index"),
        (GOOD.split(b"\n\n")[0], "no checkpoint"),
        (GOOD.replace(b"=\n\n", b"\n\n", 1), "unpadded hash"),
        (GOOD.replace(b"\n\n", b"\nAAAA\n\n", 1), "short hash"),
        (GOOD.replace(b"\n\n", b"\n" + b"A" * 43 + b"=\n" * 70 + b"\n", 1), "too long"),
        (GOOD + b"junk", "trailing junk after the note"),
        (b"x" * (3 << 20), "too large"),
    ],
)
def test_malformed_proof_files_are_format_errors(data: bytes, why: str) -> None:
    with pytest.raises(FormatError):
        TlogProof.from_bytes(data)


def test_wrong_proof_length_is_a_verification_error() -> None:
    parsed = TlogProof.from_bytes(_proof(3, []))
    short = TlogProof(parsed.index, parsed.proof[:-1], parsed.checkpoint, parsed.extra)
    with pytest.raises(Error, match="length"):
        verify_tlog_proof(short.to_bytes(), log=LOG_KEY)
