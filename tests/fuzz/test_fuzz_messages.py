"""Signed protocol messages: node descriptors (with their operator bindings), jobs and
heartbeats. Any envelope opens or is a FormatError or VerificationError, and an envelope
nobody signed again opens only as the message its signer signed."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from typing import Any

from _fuzzing import attempt, dumps, fuzz_settings, mutated_json, raw_json_bytes
from hypothesis import example, given
from hypothesis import strategies as st

from _ledger import account, descriptor, t
from veriml.core.canonical import canonical_digest, parse_json_object
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, pae
from veriml.core.errors import FormatError, VerificationError
from veriml.node._jobs import parse_job_body
from veriml.protocol.jobs import Job
from veriml.protocol.messages import Heartbeat, NodeDescriptor
from veriml.protocol.openai_requests import canonical_request

NODE = account("fuzz-msg-node")
OPERATOR = account("fuzz-msg-operator")
COORDINATOR = account("fuzz-msg-coordinator")
NOW = dt.datetime(2026, 11, 26, 10, 0, 30, tzinfo=dt.UTC)

DESCRIPTORS = [
    descriptor(NODE, OPERATOR, nonce="0" * 32),
    descriptor(
        NODE,
        OPERATOR,
        nonce="1" * 32,
        engines=("onnxruntime", "llama.cpp"),
        models=("*", "relay:gpt-x", Digest.of(b"m").to_text()),
        hardware={"cpu": "x86_64", "cores": 2},
        runtime={"onnxruntime": "1.18"},
    ),
]
SIGNED_DESCRIPTORS = [d.sign(NODE) for d in DESCRIPTORS]


def _envelopes(signed: list[Envelope], signers: list[Any]) -> st.SearchStrategy[tuple[Any, bool]]:
    return st.one_of(
        mutated_json([e.to_json() for e in signed], signers=signers),
        mutated_json([e.to_json() for e in signed], signers=signers),
        raw_json_bytes().map(lambda b: (b, False)),
    )


def _envelope(obj: Any) -> Envelope:
    if isinstance(obj, bytes):
        return Envelope.from_bytes(obj)
    return Envelope.from_json(obj)


def _size(obj: Any) -> int:
    return len(obj) if isinstance(obj, bytes) else len(dumps(obj))


def _edited(envelope: dict[str, Any], signer: Any, **members: Any) -> dict[str, Any]:
    """``envelope`` with its payload's ``members`` replaced, signed again by ``signer``."""
    payload = json.loads(base64.b64decode(envelope["payload"])) | members
    data = dumps(payload)
    out = dict(envelope, payload=base64.b64encode(data).decode())
    if signer is not None:
        signature = signer.sign(pae(envelope["payloadType"], data))
        out["signatures"] = [{"keyid": signer.key_id, "sig": base64.b64encode(signature).decode()}]
    return out


_DESCRIPTOR = SIGNED_DESCRIPTORS[0].to_json()
_BINDING = DESCRIPTORS[0].operator_binding.to_json()


@fuzz_settings()
@given(_envelopes(SIGNED_DESCRIPTORS, [NODE, OPERATOR]))
# Found probing this target's inputs: a lone surrogate in a public_key (the descriptor's, or its
# operator binding's) made encode() raise UnicodeEncodeError before any signature was checked.
@example((_edited(_DESCRIPTOR, None, public_key="\ud800"), False))
@example(
    (
        _edited(_DESCRIPTOR, NODE, operator_binding=_edited(_BINDING, None, public_key="\ud800")),
        True,
    )
)
def test_a_node_descriptor_opens_only_as_its_node_and_operator_signed_it(
    case: tuple[Any, bool],
) -> None:
    obj, resigned = case

    def open_() -> NodeDescriptor:
        return NodeDescriptor.open(_envelope(obj), now=NOW, max_age=dt.timedelta(hours=1))

    opened, _ = attempt(open_, allowed=(FormatError, VerificationError), size=_size(obj))
    if opened is not None:
        assert opened.node_id == NODE.key_id
        assert opened.operator == OPERATOR.key_id
        if not resigned:
            assert opened in DESCRIPTORS


MODEL = Digest.of(b"fuzz model")
REQUEST = canonical_request(
    "chat.completion", MODEL, {"messages": [{"role": "user", "content": "Hi"}]}, seed=7
)
JOBS = [
    Job(
        job_id="job-1",
        node_id=NODE.key_id,
        request_id="req-1",
        model=MODEL,
        inputs={"x": Digest.of(b"x")},
        policy="quorum:2/3",
        issued_at=t(0),
        expires_at=t(60),
        trace=True,
        spot=Digest.of(b"spot"),
        retain_until=t(3600),
    ),
    Job(
        job_id="job-2",
        node_id=NODE.key_id,
        request_id="req-2",
        model=MODEL,
        inputs={},
        policy="none",
        issued_at=t(0),
        expires_at=t(60),
        kind="completion",
        request=REQUEST,
    ),
]
SIGNED_JOBS = [j.sign(COORDINATOR) for j in JOBS]
requests = st.one_of(
    st.just(REQUEST),
    st.none(),
    mutated_json([REQUEST]).map(lambda t: t[0]),
)


@fuzz_settings()
@given(_envelopes(SIGNED_JOBS, [COORDINATOR]), requests)
def test_a_job_opens_only_as_its_coordinator_signed_it_with_its_own_request(
    case: tuple[Any, bool], request: Any
) -> None:
    obj, resigned = case
    if isinstance(obj, bytes):  # raw bytes stand for the whole body
        data = obj
    else:
        data = dumps({"job": obj} | ({} if request is None else {"request": request}))

    def open_() -> Job:
        # What a node does with a POST /v1/jobs body: parse it, then open the job.
        parsed = parse_job_body(parse_json_object(data, what="job body"))
        return Job.open(
            parsed.envelope,
            COORDINATOR.public,
            node_id=NODE.key_id,
            now=NOW,
            request=parsed.request,
        )

    job, _ = attempt(open_, allowed=(FormatError, VerificationError), size=len(data))
    if job is None:
        return
    assert job.node_id == NODE.key_id
    if job.kind != "onnx":
        assert job.request is not None
        assert canonical_digest(dict(job.request)) == job.request_digest
    if not resigned:
        assert dataclasses.replace(job, request=None) in [
            dataclasses.replace(j, request=None) for j in JOBS
        ]


HEARTBEAT = Heartbeat(NODE.key_id, t(0), active=1, queued=2, capacity=4, cached=("sha256:x",))


@fuzz_settings()
@given(_envelopes([HEARTBEAT.sign(NODE)], [NODE]))
def test_a_heartbeat_opens_only_as_its_node_signed_it(case: tuple[Any, bool]) -> None:
    obj, resigned = case
    beat, _ = attempt(
        lambda: Heartbeat.open(_envelope(obj), NODE.public),
        allowed=(FormatError, VerificationError),
        size=_size(obj),
    )
    if beat is not None and not resigned:
        assert beat == HEARTBEAT
