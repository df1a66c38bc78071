"""C2SP signed notes and note keys: any bytes parse or are a FormatError, a parsed note has one
wire form, and no note opens unless one of our keys signed exactly its text."""

from __future__ import annotations

import base64

from _fuzzing import attempt, fuzz_settings, mutated_bytes
from _tlog_examples import (
    LOG,
    LOG_KEY,
    PLAIN_NOTE,
    SIGNED_CHECKPOINT,
    SIGNED_TEXTS,
    STRANGER,
    WITNESS,
    WITNESS_KEY,
)
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.errors import FormatError, KeyFileError, SignatureError
from veriml.core.keys import SigningKey
from veriml.tlog.cosignature import CosignatureVerifier
from veriml.tlog.note import Note, NoteSigner, NoteVerifier, Verifier, open_note

VERIFIERS: list[Verifier] = [LOG_KEY, WITNESS_KEY]
ORIGINAL_SIGNATURES = frozenset(
    Note.from_bytes(SIGNED_CHECKPOINT).signatures + Note.from_bytes(PLAIN_NOTE).signatures
)

names = st.one_of(
    st.sampled_from([LOG.name, WITNESS.name, STRANGER.name, "", "a+b", "a b", "\u2014"]),
    st.text(max_size=12),
)
signature_bytes = st.one_of(
    st.binary(max_size=80),
    st.sampled_from([LOG.sign(b"x"), bytes(72), bytes(4)]),
)


@st.composite
def note_lines(draw: st.DrawFn) -> bytes:
    """A note built line by line: text lines, a blank line, signature lines whose parts are
    each right or wrong (dash, name, key ID, base64, canonical padding)."""
    text = draw(st.lists(st.text(max_size=30), max_size=4))
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        key_hash = draw(st.sampled_from([LOG.key_hash, WITNESS.key_hash, 0, 2**32 - 1]))
        raw = key_hash.to_bytes(4, "big") + draw(signature_bytes)
        encoded = base64.b64encode(raw).decode()
        if draw(st.booleans()):
            encoded = encoded.rstrip("=") if draw(st.booleans()) else encoded + "="
        dash = draw(st.sampled_from(["\u2014 ", "- ", "\u2014", ""]))
        lines.append(f"{dash}{draw(names)} {encoded}")
    body = "\n".join(text) + "\n\n" + "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n"]))
    return body.encode("utf-8", "surrogatepass")


notes = st.one_of(
    mutated_bytes([SIGNED_CHECKPOINT, PLAIN_NOTE]),
    note_lines(),
    st.binary(max_size=300),
)


@fuzz_settings()
@given(notes)
def test_a_note_parses_with_one_wire_form_and_opens_only_with_a_signed_text(data: bytes) -> None:
    note, _ = attempt(lambda: Note.from_bytes(data), allowed=(FormatError,), size=len(data))
    if note is not None:
        assert note.to_bytes() == data
    opened, _ = attempt(
        lambda: open_note(data, VERIFIERS),
        allowed=(FormatError, SignatureError),
        size=len(data),
    )
    if opened is not None:
        assert opened.text in SIGNED_TEXTS
        assert set(opened.verified) <= ORIGINAL_SIGNATURES


ZERO_SIGNER = NoteSigner(
    "example.com/signer", SigningKey(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32)))
)
SKEY = "PRIVATE+KEY+{}+{:08x}+{}".format(
    ZERO_SIGNER.name, ZERO_SIGNER.key_hash, base64.b64encode(b"\x01" + bytes(32)).decode()
)
KEY_TEXTS = [LOG.vkey, WITNESS.vkey, SKEY]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass" if data.isascii() else "replace")


key_texts = st.one_of(
    st.sampled_from(KEY_TEXTS),
    mutated_bytes([k.encode() for k in KEY_TEXTS]).map(_text),
    st.text(max_size=120),
)


@fuzz_settings()
@given(key_texts)
def test_a_note_key_parses_to_its_own_text_or_is_refused(text: str) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    for parse in (NoteVerifier.from_vkey, CosignatureVerifier.from_vkey):
        key, _ = attempt(lambda p=parse: p(text), allowed=(FormatError,), size=size)  # type: ignore[misc]
        if key is not None:
            assert key.vkey == text.strip()
    signer, _ = attempt(
        lambda: NoteSigner.from_skey(text), allowed=(KeyFileError, FormatError), size=size
    )
    if signer is not None:
        assert signer.vkey == ZERO_SIGNER.vkey
