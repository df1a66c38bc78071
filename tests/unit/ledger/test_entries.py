from __future__ import annotations

import pytest

from veriml.core import Digest, Envelope, generate_key
from veriml.core.errors import FormatError
from veriml.ledger import InferenceEntry, ModelEntry, NodeEntry, parse_entry
from veriml.protocol import NodeDescriptor
from veriml.verify.policy import Verdict


def _model() -> ModelEntry:
    return ModelEntry(
        digest=Digest.of(b"m"),
        files_digest=Digest.of(b"f"),
        name="iris",
        version="1.0.0",
        publisher_key_id="sha256:" + "11" * 32,
        publisher_key="-----BEGIN PUBLIC KEY-----\n...",
        signature=Digest.of(b"sig"),
        size=1234,
        registered_at="2026-11-26T03:00:00.000000Z",
        task="classification",
        parents=("sha256:" + "22" * 32,),
    )


def test_every_entry_type_round_trips_through_its_logged_bytes() -> None:
    key = generate_key()
    descriptor = NodeDescriptor(
        public_key=key.public.to_pem().decode(),
        operator="op",
        endpoint="http://127.0.0.1:1",
        issued_at="2026-11-26T03:00:00.000000Z",
        nonce="00",
    ).sign(key)
    receipt = Envelope.sign(b"{}", [key])
    entries = [
        _model(),
        NodeEntry(descriptor),
        InferenceEntry(
            request_id="r",
            request_digest=Digest.of(b"r"),
            model=Digest.of(b"m"),
            policy="none",
            receipts=(receipt,),
            verdict=Verdict("none", "accepted", (key.key_id,), {"y": Digest.of(b"y")}),
        ),
    ]
    for entry in entries:
        assert parse_entry(entry.to_bytes()) == entry


def test_a_node_entry_rechecks_its_descriptor_from_the_log_alone() -> None:
    key = generate_key()
    descriptor = NodeDescriptor(
        public_key=key.public.to_pem().decode(),
        operator="op",
        endpoint="http://127.0.0.1:1",
        issued_at="2020-01-01T00:00:00.000000Z",
        nonce="00",
    )
    entry = parse_entry(NodeEntry(descriptor.sign(key)).to_bytes())
    assert isinstance(entry, NodeEntry)
    assert entry.open() == descriptor


@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b'{"type": "unknown"}',
        b'{"type": "model"}',
        b'{"type": "node", "descriptor": 1}',
        b"{",
    ],
)
def test_malformed_entries_are_format_errors(data: bytes) -> None:
    with pytest.raises(FormatError):
        parse_entry(data)


def test_oversized_entries_are_refused() -> None:
    with pytest.raises(FormatError, match="too large"):
        parse_entry(b'{"type":"model","x":"' + b"a" * 70_000 + b'"}')
