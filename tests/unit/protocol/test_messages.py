"""Node descriptors (with their operator's binding), heartbeats and jobs: what each
message's ``open`` accepts, and what it refuses (docs/network.md)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from veriml.core import Digest, Envelope, generate_key
from veriml.core.canonical import canonicalize
from veriml.core.errors import FormatError, KeyFileError, SignatureError, VerificationError
from veriml.core.keys import SigningKey
from veriml.protocol import (
    NODE_DESCRIPTOR_TYPE,
    Heartbeat,
    Job,
    NodeDescriptor,
    format_time,
    sign_message,
)
from veriml.protocol.accounts import OPERATOR_BINDING_TYPE, OperatorBinding

NOW = dt.datetime(2026, 11, 26, 3, 0, tzinfo=dt.UTC)


def _descriptor(node: SigningKey, bound_by: SigningKey, **overrides: object) -> NodeDescriptor:
    fields: dict[str, object] = {
        "public_key": node.public.to_pem().decode(),
        "operator_binding": _binding(bound_by, node.key_id),
        "endpoint": "http://127.0.0.1:8701",
        "issued_at": format_time(NOW),
        "nonce": "ab" * 16,
    }
    fields.update(overrides)
    return NodeDescriptor(**fields)  # type: ignore[arg-type]


def _binding(operator: SigningKey, node_id: str) -> Envelope:
    return OperatorBinding.of(operator, node_id, issued_at=format_time(NOW)).sign(operator)


def test_a_node_descriptor_verifies_against_the_key_it_carries_and_names_its_operator() -> None:
    node, operator = generate_key(), generate_key()
    descriptor = _descriptor(node, operator)
    opened = NodeDescriptor.open(descriptor.sign(node), now=NOW, max_age=dt.timedelta(minutes=5))
    assert opened == descriptor
    assert (opened.node_id, opened.operator) == (node.key_id, operator.key_id)
    assert opened.binding.operator == operator.key_id
    logged = json.loads(descriptor.sign(node).payload)
    assert logged["operator"] == operator.key_id
    assert logged["operator_binding"] == descriptor.operator_binding.to_json()


def test_a_descriptor_signed_by_another_key_is_refused() -> None:
    node, operator, other = generate_key(), generate_key(), generate_key()
    genuine = _descriptor(node, operator).sign(node)
    forged = Envelope.sign(genuine.payload, [other], payload_type=genuine.payload_type)
    with pytest.raises(SignatureError):
        NodeDescriptor.open(forged, now=NOW, max_age=None)
    with pytest.raises(KeyFileError):
        _descriptor(node, operator).sign(other)


def test_a_binding_for_another_node_is_refused() -> None:
    node, operator, elsewhere = generate_key(), generate_key(), generate_key()
    borrowed = _descriptor(node, operator, operator_binding=_binding(operator, elsewhere.key_id))
    with pytest.raises(VerificationError) as info:
        NodeDescriptor.open(borrowed.sign(node), now=NOW, max_age=None)
    assert info.value.check == "operator-binding"
    assert info.value.evidence["expected"] == node.key_id


def test_a_binding_not_signed_by_the_operator_it_names_is_refused() -> None:
    node, operator, impostor = generate_key(), generate_key(), generate_key()
    # The operator's binding, re-signed by someone else: the signature is not the operator's.
    payload = canonicalize(OperatorBinding.of(operator, node.key_id).to_json())
    resigned = Envelope.sign(payload, [impostor], payload_type=OPERATOR_BINDING_TYPE)
    with pytest.raises(SignatureError):
        NodeDescriptor.open(
            _descriptor(node, operator, operator_binding=resigned).sign(node), max_age=None
        )
    # The impostor's own key, claiming the operator's account id.
    claimed = OperatorBinding.of(impostor, node.key_id).to_json() | {"operator": operator.key_id}
    mislabelled = Envelope.sign(
        canonicalize(claimed), [impostor], payload_type=OPERATOR_BINDING_TYPE
    )
    descriptor = _descriptor(node, operator, operator_binding=mislabelled)
    with pytest.raises(VerificationError) as info:
        NodeDescriptor.open(descriptor.sign(node), max_age=None)
    assert info.value.check == "operator-binding"


def test_a_descriptor_naming_another_operator_than_its_binding_is_refused() -> None:
    node, operator, other = generate_key(), generate_key(), generate_key()
    misnamed = _descriptor(node, operator, operator=other.key_id)
    assert misnamed.operator == other.key_id  # a descriptor can say anything...
    with pytest.raises(VerificationError) as info:
        NodeDescriptor.open(misnamed.sign(node), max_age=None)  # ...opening checks it
    assert info.value.check == "operator-binding"
    assert info.value.evidence["bound"] == operator.key_id


def test_a_descriptor_without_a_binding_or_with_a_malformed_one_is_refused() -> None:
    node, operator = generate_key(), generate_key()
    message = _descriptor(node, operator).to_json()
    for binding in (None, "signed", {"payloadType": OPERATOR_BINDING_TYPE}):
        body = {k: v for k, v in message.items() if k != "operator_binding"}
        if binding is not None:
            body["operator_binding"] = binding
        envelope = sign_message(NODE_DESCRIPTOR_TYPE, body, node)
        with pytest.raises(VerificationError) as info:
            NodeDescriptor.open(envelope, max_age=None)
        assert info.value.check == "operator-binding"
    # Another message the operator signed is not a binding: it cannot even be built into one.
    not_a_binding = sign_message(NODE_DESCRIPTOR_TYPE, {"type": "x"}, operator)
    with pytest.raises(FormatError):
        _descriptor(node, operator, operator_binding=not_a_binding)
    body = message | {"operator_binding": not_a_binding.to_json()}
    with pytest.raises(VerificationError):
        NodeDescriptor.open(sign_message(NODE_DESCRIPTOR_TYPE, body, node), max_age=None)


def test_a_node_key_is_ed25519() -> None:
    node, operator = generate_key("ec"), generate_key("ec")  # an operator may hold an EC key
    with pytest.raises(VerificationError, match="Ed25519"):
        NodeDescriptor.open(_descriptor(node, operator).sign(node), max_age=None)
    ed_node = generate_key()
    opened = NodeDescriptor.open(_descriptor(ed_node, operator).sign(ed_node), max_age=None)
    assert opened.operator == operator.key_id


def test_a_stale_descriptor_is_refused_unless_reread_from_the_log() -> None:
    node, operator = generate_key(), generate_key()
    old = _descriptor(node, operator, issued_at=format_time(NOW - dt.timedelta(hours=1)))
    envelope = old.sign(node)
    with pytest.raises(VerificationError) as info:
        NodeDescriptor.open(envelope, now=NOW, max_age=dt.timedelta(minutes=5))
    assert info.value.check == "freshness"
    assert NodeDescriptor.open(envelope, max_age=None) == old


def test_heartbeat_binds_the_node() -> None:
    key, other = generate_key(), generate_key()
    beat = Heartbeat(key.key_id, format_time(NOW), active=1, queued=2, capacity=4)
    assert Heartbeat.open(beat.sign(key), key.public) == beat
    with pytest.raises(SignatureError):
        Heartbeat.open(beat.sign(key), other.public)
    with pytest.raises(VerificationError):
        Heartbeat.open(Heartbeat(key.key_id, format_time(NOW)).sign(other), other.public)


def _job(node_id: str, **overrides: object) -> Job:
    fields: dict[str, object] = {
        "job_id": "j-1",
        "node_id": node_id,
        "request_id": "r-1",
        "model": Digest.of(b"model"),
        "inputs": {"x": Digest.of(b"x")},
        "policy": "quorum:3/2",
        "issued_at": format_time(NOW),
        "expires_at": format_time(NOW + dt.timedelta(seconds=30)),
    }
    fields.update(overrides)
    return Job(**fields)  # type: ignore[arg-type]


def test_a_job_opens_only_for_its_node_within_its_window() -> None:
    coordinator, node = generate_key(), generate_key()
    job = _job(node.key_id)
    envelope = job.sign(coordinator)
    assert Job.open(envelope, coordinator.public, node_id=node.key_id, now=NOW) == job
    with pytest.raises(VerificationError) as info:
        Job.open(envelope, coordinator.public, node_id="sha256:" + "00" * 32, now=NOW)
    assert info.value.check == "job-node"
    with pytest.raises(VerificationError) as info:
        Job.open(
            envelope, coordinator.public, node_id=node.key_id, now=NOW + dt.timedelta(minutes=1)
        )
    assert info.value.check == "job-expired"
    with pytest.raises(SignatureError) as sig:
        Job.open(envelope, generate_key().public, node_id=node.key_id, now=NOW)
    assert sig.value.check == "job-signature"


def test_job_inputs_must_match_their_signed_digests() -> None:
    job = _job("n")
    job.check_inputs({"x": Digest.of(b"x")})
    with pytest.raises(VerificationError) as info:
        job.check_inputs({"x": Digest.of(b"y")})
    assert info.value.check == "job-inputs"


def test_a_traced_job_signs_how_long_its_trace_is_kept_and_older_jobs_keep_their_bytes() -> None:
    """``retain_until`` (the answer's challenge window) is signed when set and absent when not,
    so a job without it has the bytes it had before the member existed."""
    coordinator, node = generate_key(), generate_key()
    plain = _job(node.key_id, trace=True)
    assert "retain_until" not in plain.to_json()
    until = format_time(NOW + dt.timedelta(days=1))
    kept = _job(node.key_id, trace=True, retain_until=until)
    opened = Job.open(kept.sign(coordinator), coordinator.public, node_id=node.key_id, now=NOW)
    assert opened.retain_until == until
    assert opened.to_json() == {**plain.to_json(), "retain_until": until}
    with pytest.raises(FormatError):
        _job(node.key_id, retain_until=until)  # only a traced job keeps a trace
    with pytest.raises(FormatError):
        _job(node.key_id, trace=True, retain_until="tomorrow")


def test_a_heartbeat_is_not_a_job() -> None:
    key = generate_key()
    beat = Heartbeat(key.key_id, format_time(NOW)).sign(key)
    with pytest.raises(VerificationError) as info:
        Job.open(beat, key.public, node_id=key.key_id, now=NOW)
    assert info.value.check in {"payload-type", "job-signature"}


@pytest.mark.parametrize("text", ["2026-11-26T03:00:00", "yesterday", "2026-13-01T00:00:00Z", 5])
def test_timestamps_must_be_rfc3339_utc(text: object) -> None:
    from veriml.protocol import parse_time

    with pytest.raises(FormatError):
        parse_time(text)
