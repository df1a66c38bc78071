"""LLM jobs on the wire: the kind and the request digest are signed, the request travels beside
the envelope and must be the one signed; ONNX job bytes do not change (docs/llm.md)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veriml.core import Digest, generate_key
from veriml.core.canonical import canonical_digest, canonicalize
from veriml.core.errors import FormatError, KeyFileError, SignatureError, VerificationError
from veriml.protocol.jobs import Job
from veriml.protocol.messages import format_time
from veriml.protocol.prefill_check import (
    PREFILL_CHECK_PREDICATE_TYPE,
    PrefillCheck,
    open_prefill_check,
    sign_prefill_check,
)

NOW = dt.datetime(2026, 11, 26, 5, 0, tzinfo=dt.UTC)
MODEL = Digest.of(b"gguf model")
_KEYS = (generate_key(), generate_key())  # Ed25519 key generation is not what is under test


def _request(**overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "type": "chat.completion",
        "model": MODEL.to_text(),
        "messages": [{"role": "user", "content": "Say hi"}],
        "seed": 7,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "max_tokens": 8,
        "stop": [],
    }
    request.update(overrides)
    return request


def _job(node_id: str, **overrides: Any) -> Job:
    fields: dict[str, Any] = {
        "job_id": "j-1",
        "node_id": node_id,
        "request_id": "r-1",
        "model": MODEL,
        "inputs": {},
        "policy": "none",
        "issued_at": format_time(NOW),
        "expires_at": format_time(NOW + dt.timedelta(seconds=30)),
        "kind": "completion",
        "request": _request(),
    }
    fields.update(overrides)
    return Job(**fields)


def test_an_onnx_job_signs_the_same_bytes_as_before_llm_jobs() -> None:
    job = Job(
        job_id="j",
        node_id="n",
        request_id="r",
        model=MODEL,
        inputs={"x": Digest.of(b"x")},
        policy="none",
        issued_at=format_time(NOW),
        expires_at=format_time(NOW + dt.timedelta(seconds=30)),
    )
    members = json.loads(canonicalize(job.to_json()))
    assert "kind" not in members
    assert "request_digest" not in members
    assert sorted(members) == [
        "expires_at",
        "inputs",
        "issued_at",
        "job_id",
        "model",
        "node_id",
        "policy",
        "request_id",
        "trace",
        "type",
    ]


def test_a_completion_job_round_trips_with_its_request() -> None:
    coordinator, node = generate_key(), generate_key()
    job = _job(node.key_id)
    assert job.request_digest == canonical_digest(_request())
    signed = json.loads(job.sign(coordinator).payload)
    assert signed["kind"] == "completion"
    assert signed["request_digest"] == job.request_digest.to_text()
    assert "request" not in signed  # it travels beside the envelope
    opened = Job.open(
        job.sign(coordinator), coordinator.public, node_id=node.key_id, now=NOW, request=_request()
    )
    assert opened == job
    assert opened.request == _request()


def test_a_request_that_is_not_the_signed_one_is_refused() -> None:
    coordinator, node = generate_key(), generate_key()
    envelope = _job(node.key_id).sign(coordinator)
    with pytest.raises(VerificationError) as info:
        Job.open(
            envelope,
            coordinator.public,
            node_id=node.key_id,
            now=NOW,
            request=_request(seed=8),  # another seed: another completion
        )
    assert info.value.check == "job-request"
    assert info.value.evidence["expected"] == canonical_digest(_request())


def test_an_llm_job_without_its_request_or_signed_digest_is_refused() -> None:
    coordinator, node = generate_key(), generate_key()
    envelope = _job(node.key_id).sign(coordinator)
    with pytest.raises(FormatError) as info:
        Job.open(envelope, coordinator.public, node_id=node.key_id, now=NOW)
    assert info.value.evidence["member"] == "request"
    with pytest.raises(FormatError):  # an LLM job must be built with a request or its digest
        _job(node.key_id, request=None)


def test_an_onnx_job_carries_no_request() -> None:
    coordinator, node = generate_key(), generate_key()
    onnx_job = _job(node.key_id, kind="onnx", request=None, inputs={"x": Digest.of(b"x")}).sign(
        coordinator
    )
    with pytest.raises(FormatError):
        Job.open(onnx_job, coordinator.public, node_id=node.key_id, now=NOW, request=_request())
    with pytest.raises(FormatError):
        _job(node.key_id, kind="onnx")


def test_addressee_and_validity_are_checked_before_the_request() -> None:
    coordinator, node = generate_key(), generate_key()
    envelope = _job(node.key_id).sign(coordinator)
    with pytest.raises(VerificationError) as info:
        Job.open(envelope, coordinator.public, node_id="someone-else", now=NOW, request={})
    assert info.value.check == "job-node"
    with pytest.raises(SignatureError):
        Job.open(envelope, generate_key().public, node_id=node.key_id, now=NOW, request=_request())


@pytest.mark.parametrize(
    ("kind", "request_type"),
    [("embedding", "chat.completion"), ("completion", "embedding"), ("prefill", "embedding")],
)
def test_a_job_kind_runs_only_its_request_types(kind: str, request_type: str) -> None:
    with pytest.raises(FormatError) as info:
        _job("n", kind=kind, request=_request(type=request_type))
    assert info.value.evidence["member"] == "request"


def test_a_request_for_another_model_is_refused() -> None:
    with pytest.raises(VerificationError) as info:
        _job("n", request=_request(model=Digest.of(b"other").to_text()))
    assert info.value.check == "job-request"


def test_unknown_kinds_and_llm_jobs_with_tensors_are_refused() -> None:
    with pytest.raises(FormatError):
        _job("n", kind="training")
    with pytest.raises(FormatError):
        _job("n", inputs={"x": Digest.of(b"x")})


def _check(node_id: str, *, accepted: bool = True) -> PrefillCheck:
    return PrefillCheck(
        receipt=Digest.of(b"receipt payload"),
        report={"accepted": accepted, "checked": 8, "first_failure": None, "reason": None},
        model=MODEL,
        runtime={"engine": "llama.cpp"},
        node_id=node_id,
        request_id="r-1",
        started=format_time(NOW),
        finished=format_time(NOW),
    )


def test_a_prefill_check_opens_under_the_checking_node_key() -> None:
    node = generate_key("ed25519")
    check = _check(node.key_id)
    envelope = sign_prefill_check(check, node)
    opened = open_prefill_check(envelope, node.public)
    assert opened == check
    assert opened.accepted
    assert not open_prefill_check(
        sign_prefill_check(_check(node.key_id, accepted=False), node), node.public
    ).accepted
    payload = json.loads(envelope.payload)
    assert payload["predicateType"] == PREFILL_CHECK_PREDICATE_TYPE
    assert payload["subject"] == [{"name": "receipt", "digest": {"sha256": check.receipt.hex}}]


def test_a_prefill_check_by_another_key_or_naming_another_node_is_refused() -> None:
    node, other = generate_key("ed25519"), generate_key("ed25519")
    with pytest.raises(SignatureError):
        open_prefill_check(sign_prefill_check(_check(node.key_id), node), other.public)
    with pytest.raises(KeyFileError):
        sign_prefill_check(_check(node.key_id), other)


def test_a_completion_receipt_is_not_a_prefill_check() -> None:
    from veriml.core.dsse import Envelope, Statement, Subject

    node = generate_key("ed25519")
    statement = Statement(
        (Subject("completion", Digest.of(b"x")),), "https://veriml.dev/completion/v1", {}
    )
    with pytest.raises(VerificationError) as info:
        open_prefill_check(Envelope.sign(statement.to_bytes(), [node]), node.public)
    assert info.value.check == "prefill-check"


def test_a_relay_node_names_the_upstream_model_it_fronts() -> None:
    from veriml.protocol.accounts import OperatorBinding
    from veriml.protocol.messages import NodeDescriptor

    key, operator = generate_key("ed25519"), generate_key("ed25519")
    fields: dict[str, Any] = {
        "public_key": key.public.to_pem().decode(),
        "operator_binding": OperatorBinding.of(operator, key.key_id).sign(operator),
        "endpoint": "http://127.0.0.1:8799",
        "issued_at": format_time(NOW),
        "nonce": "cd" * 16,
        "engines": ("relay",),
    }
    relay = NodeDescriptor(**fields, models=("relay:smollm2",))
    assert NodeDescriptor.open(relay.sign(key), max_age=None).models == ("relay:smollm2",)
    with pytest.raises(FormatError):
        NodeDescriptor.open(NodeDescriptor(**fields, models=("relay:",)).sign(key), max_age=None)


_TEXT = st.text(min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["completion", "prefill"]),
    content=_TEXT,
    seed=st.integers(min_value=0, max_value=2**53 - 1),
    max_tokens=st.integers(min_value=1, max_value=4096),
    stop=st.lists(_TEXT, max_size=4),
    policy=st.sampled_from(["none", "quorum:3/2", "spot:0.5", "prefill"]),
)
def test_any_llm_job_round_trips_and_no_other_request_opens_it(
    kind: str, content: str, seed: int, max_tokens: int, stop: list[str], policy: str
) -> None:
    coordinator, node = _KEYS
    request = _request(
        messages=[{"role": "user", "content": content}],
        seed=seed,
        max_tokens=max_tokens,
        stop=stop,
    )
    job = _job(node.key_id, kind=kind, request=request, policy=policy)
    envelope = job.sign(coordinator)
    opened = Job.open(envelope, coordinator.public, node_id=node.key_id, now=NOW, request=request)
    assert opened == job
    assert opened.request == request
    with pytest.raises(VerificationError):
        Job.open(
            envelope,
            coordinator.public,
            node_id=node.key_id,
            now=NOW,
            request=request | {"max_tokens": max_tokens + 1},
        )
