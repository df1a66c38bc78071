"""C2SP tlog-cosignature cosignature/v1 (Ed25519, type 0x04)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.errors import FormatError, SignatureError
from veriml.core.keys import generate_key
from veriml.tlog.checkpoint import Checkpoint
from veriml.tlog.cosignature import CosignatureSigner, CosignatureVerifier, cosigned_message
from veriml.tlog.note import NoteVerifier, open_note

WITNESS = CosignatureSigner("witness.example/w1", generate_key())
CP = Checkpoint("example.com/log", 20852163, bytes(range(32)))


def test_signed_message_is_header_time_line_and_checkpoint_text() -> None:
    assert cosigned_message(CP.to_bytes(), 1679315147) == (
        b"cosignature/v1\ntime 1679315147\n" + CP.to_bytes()
    )


def test_key_id_uses_signature_type_0x04() -> None:
    raw = WITNESS.key.public.raw()
    expected = hashlib.sha256(b"witness.example/w1\n\x04" + raw).digest()[:4]
    assert WITNESS.key_hash.to_bytes(4, "big") == expected
    assert base64.b64decode(WITNESS.vkey.split("+", 2)[2])[0] == 0x04


@given(st.integers(0, 2**63 - 1))
def test_cosignature_verifies_and_returns_its_timestamp(timestamp: int) -> None:
    sig = WITNESS.sign(CP, timestamp)
    assert len(sig.signature) == 72
    verifier = CosignatureVerifier.from_vkey(WITNESS.vkey)
    assert verifier.verify(CP.to_bytes(), sig.signature) == timestamp


def test_changed_timestamp_or_checkpoint_fails() -> None:
    verifier = CosignatureVerifier.from_vkey(WITNESS.vkey)
    sig = WITNESS.sign(CP, 100).signature
    with pytest.raises(SignatureError):
        verifier.verify(CP.to_bytes(), (101).to_bytes(8, "big") + sig[8:])
    other = Checkpoint(CP.origin, CP.size + 1, CP.root_hash)
    with pytest.raises(SignatureError):
        verifier.verify(other.to_bytes(), sig)
    with pytest.raises(SignatureError):
        verifier.verify(CP.to_bytes(), sig[:-1])
    with pytest.raises(SignatureError):
        verifier.verify(CP.to_bytes(), b"\xff" * 8 + sig[8:])


def test_cosignature_works_as_a_note_verifier_and_a_plain_key_does_not_match_it() -> None:
    from veriml.tlog.note import Note, NoteSigner, sign_note

    log = NoteSigner("example.com/log", generate_key())
    note = Note.from_bytes(sign_note(CP.to_text(), [log])).add_signatures(WITNESS.sign(CP, 5))
    opened = open_note(note.to_bytes(), [CosignatureVerifier.from_vkey(WITNESS.vkey)])
    assert [s.name for s in opened.verified] == [WITNESS.name]
    # The same key as a type-0x01 note key has another key ID: the cosignature is ignored.
    plain = NoteSigner(WITNESS.name, WITNESS.key)
    assert plain.key_hash != WITNESS.key_hash
    with pytest.raises(SignatureError):
        open_note(note.to_bytes(), [NoteVerifier.from_vkey(plain.vkey)])


def test_note_vkey_is_not_a_cosignature_vkey() -> None:
    plain = NoteVerifier.from_vkey(
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
    )
    with pytest.raises(FormatError):
        CosignatureVerifier.from_vkey(plain.vkey)
    with pytest.raises(FormatError):
        NoteVerifier.from_vkey(WITNESS.vkey)
