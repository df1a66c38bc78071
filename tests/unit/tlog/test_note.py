"""C2SP signed notes against Go's golang.org/x/mod/sumdb/note (tests/vectors/go-sumdb-note)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from _vectors import GO_NOTES
from veriml.core.errors import Error, FormatError, KeyFileError, SignatureError
from veriml.core.keys import generate_key
from veriml.tlog.note import (
    Note,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    open_note,
    sign_note,
)

NOTES = json.loads(GO_NOTES.read_text())
VECTORS: list[dict[str, Any]] = NOTES["vectors"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["desc"] for v in VECTORS])
def test_go_note_verifies_or_is_rejected_as_marked(vector: dict[str, Any]) -> None:
    verifiers = [NoteVerifier.from_vkey(k) for k in vector["verifier_keys"]]
    data = vector["note"].encode()
    if vector["wantErr"]:
        with pytest.raises((SignatureError, FormatError)):
            open_note(data, verifiers)
        return
    note = open_note(data, verifiers)
    assert note.text == vector["text"]
    assert [s.name for s in note.verified] == vector["verified_by"]
    assert note.to_bytes() == data


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS if not v["wantErr"]], ids=lambda v: v["desc"]
)
def test_signing_the_same_text_with_go_keys_reproduces_the_same_bytes(
    vector: dict[str, Any],
) -> None:
    parsed = Note.from_bytes(vector["note"].encode())
    signers = [NoteSigner.from_skey(NOTES["signer_keys"][s.name]) for s in parsed.signatures]
    assert sign_note(parsed.text, signers) == vector["note"].encode()


@pytest.mark.parametrize("name", sorted(NOTES["signer_keys"]))
def test_go_signer_key_gives_the_published_verifier_key(name: str) -> None:
    signer = NoteSigner.from_skey(NOTES["signer_keys"][name])
    assert signer.vkey == NOTES["verifier_keys"][name]
    assert NoteVerifier.from_vkey(signer.vkey).vkey == signer.vkey
    assert "PRIVATE" not in repr(signer)


def test_spec_example_verifies() -> None:
    # c2sp.org/signed-note, "Verifier keys", Example.
    vkey = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
    note = (
        "This is an example message.\n\n"
        "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERY"
        "NZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
    )
    assert open_note(note.encode(), [NoteVerifier.from_vkey(vkey)]).text == (
        "This is an example message.\n"
    )


def test_signature_by_a_known_name_but_unknown_key_id_is_ignored() -> None:
    signer = NoteSigner("example.com/log", generate_key())
    impostor = NoteSigner("example.com/log", generate_key())
    data = sign_note("text\n", [impostor, signer])
    note = open_note(data, [NoteVerifier.from_vkey(signer.vkey)])
    assert note.verified == (note.signatures[1],)


def test_added_signatures_merge_without_duplicates() -> None:
    a, b = NoteSigner("a.example/a", generate_key()), NoteSigner("b.example/b", generate_key())
    note_a = Note.from_bytes(sign_note("x\n", [a]))
    note_b = Note.from_bytes(sign_note("x\n", [b]))
    merged = note_a.add_signatures(*note_b.signatures, *note_a.signatures)
    assert [s.name for s in merged.signatures] == ["a.example/a", "b.example/b"]
    opened = open_note(merged.to_bytes(), [NoteVerifier.from_vkey(v.vkey) for v in (a, b)])
    assert len(opened.verified) == 2


# Note text is UTF-8: lone surrogates (category Cs) cannot be encoded, so they are not text.
@given(
    st.text(alphabet=st.characters(min_codepoint=0x20, exclude_categories=("Cs",)), max_size=200),
    st.data(),
)
def test_sign_then_open_round_trips(body: str, data: st.DataObject) -> None:
    lines = data.draw(st.lists(st.just(""), max_size=2))  # texts may contain blank lines
    text = "\n".join([body, *lines]) + "\n"
    signer = NoteSigner("example.com/log", _KEY)
    signed = sign_note(text, [signer])
    note = open_note(signed, [NoteVerifier.from_vkey(signer.vkey)])
    assert note.text == text
    assert Note.from_bytes(signed).to_bytes() == signed


_KEY = generate_key()


@given(st.binary(max_size=400))
def test_parsing_arbitrary_bytes_raises_only_veriml_errors(data: bytes) -> None:
    try:
        note = Note.from_bytes(data)
    except FormatError:
        return
    assert note.to_bytes() == data  # whatever parses is in the one canonical form


@given(st.text(max_size=200))
def test_parsing_arbitrary_keys_raises_only_veriml_errors(text: str) -> None:
    try:
        verifier = NoteVerifier.from_vkey(text)
    except FormatError:
        pass
    else:
        assert verifier.vkey == text.strip()
    try:
        signature = NoteSignature.from_line(text)
    except FormatError:
        pass
    else:
        assert signature.to_line() == text + "\n"
    with pytest.raises((FormatError, KeyFileError)):
        NoteSigner.from_skey(text)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"text\n\n", "no signature line"),
        (b"text\n\n\xe2\x80\x94 n AAAA\n", "signature too short"),
        (b"text\n\n\xe2\x80\x94 n AAAAAA==\n\n", "trailing blank line"),
        (b"te\x01xt\n\n\xe2\x80\x94 n AAAAAAA=\n", "control character"),
        (b"\xff\n\n\xe2\x80\x94 n AAAAAAA=\n", "not UTF-8"),
        (b"text\n\n- n AAAAAAA=\n", "no em dash"),
        (b"text\n\n\xe2\x80\x94 a+b AAAAAAA=\n", "plus in key name"),
        (b"text\n\n\xe2\x80\x94 n AAAAAAA\n", "unpadded base64"),
    ],
)
def test_malformed_note_is_a_format_error(data: bytes, why: str) -> None:
    with pytest.raises(FormatError):
        Note.from_bytes(data)


def test_oversized_note_and_too_many_signatures_are_rejected_before_parsing() -> None:
    with pytest.raises(FormatError, match="too large"):
        Note.from_bytes(b"x" * (2 << 20))
    line = "\u2014 n " + "A" * 8 + "\n"
    with pytest.raises(FormatError, match="too many"):
        Note.from_bytes(("x\n\n" + line * 101).encode())


@pytest.mark.parametrize(
    "vkey",
    [
        "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2",  # truncated
        "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # wrong id
        "example.com/foo+530D903A+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # upper hex
        "example.com/foo+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # no id
    ],
)
def test_bad_verifier_key_is_rejected(vkey: str) -> None:
    with pytest.raises(Error):
        NoteVerifier.from_vkey(vkey)


def test_notes_need_ed25519_keys() -> None:
    with pytest.raises(KeyFileError):
        NoteSigner("example.com/log", generate_key("ec"))
