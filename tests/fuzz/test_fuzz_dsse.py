"""DSSE envelopes and in-toto Statements: any bytes parse or are a FormatError, a parsed
envelope round-trips, and a mutated envelope verifies only if it still carries the signed
payload (or was signed again by a trusted key)."""

from __future__ import annotations

import json

from _fuzzing import attempt, dumps, fuzz_settings, mutated_bytes, mutated_json, raw_json_bytes
from hypothesis import example, given
from hypothesis import strategies as st

from _ledger import account
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement, Subject
from veriml.core.errors import FormatError, SignatureError, VerificationError

SIGNER = account("fuzz-dsse")
SECOND = account("fuzz-dsse-2")
STRANGER = account("fuzz-dsse-stranger")
TRUSTED = [SIGNER.public, SECOND.public]
STATEMENT = Statement(
    (Subject("y", Digest.of(b"y")), Subject("z", Digest.of(b"z"))),
    "https://veriml.dev/inference/v1",
    {"node": {"id": SIGNER.key_id}, "policy": "none", "n": [1, 2.5, None, True]},
)
PAYLOAD = STATEMENT.to_bytes()
ENVELOPES = [
    Envelope.sign(PAYLOAD, [SIGNER, SECOND]),
    Envelope.sign(PAYLOAD, [STRANGER, SIGNER], payload_type="application/vnd.veriml.job+json"),
]
SIGNED = {(e.payload_type, e.payload) for e in ENVELOPES}

inputs = st.one_of(
    mutated_json([e.to_json() for e in ENVELOPES], signers=[SIGNER]).map(
        lambda t: (dumps(t[0]), t[1])
    ),
    mutated_bytes([e.to_bytes() for e in ENVELOPES]).map(lambda b: (b, False)),
    raw_json_bytes().map(lambda b: (b, False)),
)


@fuzz_settings()
@given(inputs)
# Found by this target: a lone surrogate (escaped in JSON) as payloadType crashed the PAE.
@example((dumps(ENVELOPES[0].to_json() | {"payloadType": "\ud800"}), False))
def test_an_envelope_verifies_only_with_the_payload_a_trusted_key_signed(
    case: tuple[bytes, bool],
) -> None:
    data, resigned = case
    size = len(data)
    envelope, _ = attempt(lambda: Envelope.from_bytes(data), allowed=(FormatError,), size=size)
    if envelope is None:
        return
    assert Envelope.from_bytes(envelope.to_bytes()) == envelope
    assert Envelope.from_json(json.loads(envelope.to_bytes())) == envelope
    keys, _ = attempt(lambda: envelope.verify(TRUSTED), allowed=(SignatureError,), size=size)
    if keys is not None and not resigned:
        assert (envelope.payload_type, envelope.payload) in SIGNED
    statement, _ = attempt(
        lambda: Statement.from_bytes(envelope.payload),
        allowed=(FormatError, VerificationError),
        size=size,
    )
    if statement is not None:
        again, _ = attempt(statement.to_bytes, allowed=(FormatError,), size=size)
        if again is not None:
            assert Statement.from_bytes(again) == statement
