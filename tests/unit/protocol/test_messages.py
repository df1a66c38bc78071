from __future__ import annotations

import datetime as dt

import pytest

from veriml.core import Digest, Envelope, generate_key
from veriml.core.errors import FormatError, SignatureError, VerificationError
from veriml.protocol import Heartbeat, Job, NodeDescriptor, format_time

NOW = dt.datetime(2026, 11, 26, 3, 0, tzinfo=dt.UTC)


def _descriptor(key_pem: str, **overrides: object) -> NodeDescriptor:
    fields: dict[str, object] = {
        "public_key": key_pem,
        "operator": "op-1",
        "endpoint": "http://127.0.0.1:8701",
        "issued_at": format_time(NOW),
        "nonce": "ab" * 16,
    }
    fields.update(overrides)
    return NodeDescriptor(**fields)  # type: ignore[arg-type]


def test_a_node_descriptor_verifies_against_the_key_it_carries() -> None:
    key = generate_key()
    descriptor = _descriptor(key.public.to_pem().decode())
    opened = NodeDescriptor.open(descriptor.sign(key), now=NOW, max_age=dt.timedelta(minutes=5))
    assert opened == descriptor
    assert opened.node_id == key.key_id


def test_a_descriptor_signed_by_another_key_is_refused() -> None:
    key, other = generate_key(), generate_key()
    descriptor = _descriptor(key.public.to_pem().decode())
    forged = Envelope.sign(
        descriptor.sign(key).payload, [other], payload_type=descriptor.sign(key).payload_type
    )
    with pytest.raises(SignatureError):
        NodeDescriptor.open(forged, now=NOW, max_age=None)


def test_a_stale_descriptor_is_refused_unless_reread_from_the_log() -> None:
    key = generate_key()
    old = _descriptor(
        key.public.to_pem().decode(), issued_at=format_time(NOW - dt.timedelta(hours=1))
    )
    envelope = old.sign(key)
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
