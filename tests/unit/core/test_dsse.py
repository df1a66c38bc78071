from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core import Digest, Envelope, Statement, Subject, generate_key, pae
from veriml.core.errors import FormatError, SignatureError, VerificationError


def test_pae_matches_the_dsse_protocol_example() -> None:
    # DSSE protocol.md, "PAE" test vector:
    #   printf 'DSSEv1 29 http://example.com/HelloWorld 11 hello world'
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_bytes_not_characters() -> None:
    assert pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"


def test_signed_envelope_verifies_and_round_trips() -> None:
    key = generate_key()
    env = Envelope.sign(b'{"a":1}', [key])
    again = Envelope.from_bytes(env.to_bytes())
    assert again == env
    assert again.verify([key.public]) == [key.public]


def test_tampered_payload_is_rejected() -> None:
    key = generate_key()
    obj = Envelope.sign(b'{"a":1}', [key]).to_json()
    obj["payload"] = base64.b64encode(b'{"a":2}').decode()
    with pytest.raises(SignatureError) as info:
        Envelope.from_json(obj).verify([key.public])
    assert info.value.check == "signature"


def test_tampered_payload_type_is_rejected() -> None:
    key = generate_key()
    obj = Envelope.sign(b"{}", [key]).to_json()
    obj["payloadType"] = "text/plain"
    with pytest.raises(SignatureError):
        Envelope.from_json(obj).verify([key.public])


def test_signatures_by_unknown_keys_do_not_count() -> None:
    signer, trusted = generate_key(), generate_key()
    env = Envelope.sign(b"{}", [signer])
    with pytest.raises(SignatureError, match="not signed by enough"):
        env.verify([trusted.public])


def test_threshold_counts_distinct_trusted_keys() -> None:
    a, b = generate_key(), generate_key("ec")
    env = Envelope.sign(b"{}", [a, b])
    assert len(env.verify([a.public, b.public], threshold=2)) == 2
    with pytest.raises(SignatureError):
        env.verify([a.public], threshold=2)


@pytest.mark.parametrize(
    "obj",
    [
        {},
        {"payloadType": "x", "payload": "!!!", "signatures": [{"keyid": "", "sig": ""}]},
        {"payloadType": "x", "payload": "", "signatures": []},
        {"payloadType": 1, "payload": "", "signatures": [{"sig": ""}]},
    ],
)
def test_malformed_envelopes_are_format_errors(obj: dict[str, object]) -> None:
    with pytest.raises(FormatError):
        Envelope.from_bytes(json.dumps(obj).encode())


@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=10), st.binary(min_size=32, max_size=32)),
        max_size=4,
    ),
    st.dictionaries(st.text(max_size=5), st.integers(-1000, 1000), max_size=3),
)
def test_statement_round_trips_canonically(
    subjects: list[tuple[str, bytes]], predicate: dict[str, int]
) -> None:
    statement = Statement(
        tuple(Subject(name, Digest(raw)) for name, raw in subjects), "https://x/v1", predicate
    )
    data = statement.to_bytes()
    assert Statement.from_bytes(data) == statement
    assert Statement.from_bytes(data).to_bytes() == data


def test_statement_of_another_type_is_refused() -> None:
    with pytest.raises(VerificationError) as info:
        Statement.from_bytes(b'{"_type":"https://in-toto.io/Statement/v0.1","subject":[]}')
    assert info.value.check == "statement-type"
