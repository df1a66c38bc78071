"""C2SP tlog-checkpoint bodies and signed checkpoints."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.errors import FormatError, SignatureError
from veriml.core.keys import generate_key
from veriml.tlog.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from veriml.tlog.cosignature import CosignatureSigner, CosignatureVerifier
from veriml.tlog.note import NoteSigner, NoteVerifier

LOG = NoteSigner("example.com/log", generate_key())
WITNESS = CosignatureSigner("witness.example/w1", generate_key())

line = st.text(alphabet=st.characters(min_codepoint=0x20, blacklist_categories=("Cs",)), min_size=1)


@given(line, st.integers(0, 2**63 - 1), st.binary(min_size=32, max_size=32), st.lists(line))
def test_text_form_round_trips_exactly(
    origin: str, size: int, root: bytes, extensions: list[str]
) -> None:
    cp = Checkpoint(origin, size, root, tuple(extensions))
    text = cp.to_text()
    assert Checkpoint.from_text(text) == cp
    assert Checkpoint.from_text(text).to_text() == text
    assert Checkpoint.from_bytes(cp.to_bytes()) == cp


def test_spec_example_parses() -> None:
    text = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    cp = Checkpoint.from_text(text)
    assert (cp.origin, cp.size) == ("example.com/behind-the-sofa", 20852163)
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")


ROOT = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="


@pytest.mark.parametrize(
    "text",
    [
        f"o\n1\n{ROOT}",  # no final newline
        "o\n1\n",  # no root line
        f"\n1\n{ROOT}\n",  # empty origin
        f"o\n01\n{ROOT}\n",  # leading zero
        f"o\n+1\n{ROOT}\n",
        f"o\n-1\n{ROOT}\n",
        f"o\n9223372036854775808\n{ROOT}\n",  # 2**63: absurd size
        f"o\n{'9' * 100}\n{ROOT}\n",
        f"o\n١\n{ROOT}\n",  # non-ASCII digit
        "o\n1\nAAAA\n",  # root too short
        f"o\n1\n{ROOT[:-1]}\n",  # unpadded
        f"o\n1\n{ROOT}\n\n",  # empty extension line
        f"o\n1\n{ROOT}\next\x01\n",
    ],
)
def test_non_canonical_or_malformed_checkpoint_is_rejected(text: str) -> None:
    with pytest.raises(FormatError):
        Checkpoint.from_text(text)


@given(st.binary(max_size=200))
def test_parsing_arbitrary_bytes_raises_only_format_errors(data: bytes) -> None:
    try:
        cp = Checkpoint.from_bytes(data)
    except FormatError:
        return
    assert cp.to_bytes() == data  # whatever parses is in the one canonical form


def test_signed_checkpoint_opens_with_the_log_key_and_counts_witnesses() -> None:
    cp = Checkpoint("example.com/log", 5, bytes(range(32)))
    signed = sign_checkpoint(cp, [LOG])
    parsed, note = open_checkpoint(signed, NoteVerifier.from_vkey(LOG.vkey), origin=cp.origin)
    assert parsed == cp
    cosigned = note.add_signatures(WITNESS.sign(cp, 1_700_000_000)).to_bytes()
    witness = CosignatureVerifier.from_vkey(WITNESS.vkey)
    _, note2 = open_checkpoint(cosigned, NoteVerifier.from_vkey(LOG.vkey), others=[witness])
    assert [s.name for s in note2.verified] == [LOG.name, WITNESS.name]


def test_a_witness_signature_alone_does_not_make_a_log_checkpoint() -> None:
    cp = Checkpoint("example.com/log", 5, bytes(32))
    other_log = NoteSigner("example.com/log", generate_key())
    signed = sign_checkpoint(cp, [other_log])
    from veriml.tlog.note import Note

    only_witness = Note.from_bytes(signed).add_signatures(WITNESS.sign(cp, 1)).to_bytes()
    with pytest.raises(SignatureError, match="log's key"):
        open_checkpoint(
            only_witness,
            NoteVerifier.from_vkey(LOG.vkey),
            others=[CosignatureVerifier.from_vkey(WITNESS.vkey)],
        )


def test_checkpoint_for_another_origin_is_rejected() -> None:
    signed = sign_checkpoint(Checkpoint("example.com/other", 1, bytes(32)), [LOG])
    with pytest.raises(SignatureError, match="another log"):
        open_checkpoint(signed, NoteVerifier.from_vkey(LOG.vkey), origin="example.com/log")
