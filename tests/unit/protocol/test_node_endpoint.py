"""A node's endpoint is a plain http(s) origin, and every descriptor member is bounded."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.errors import FormatError, LimitExceededError
from veriml.core.keys import generate_key
from veriml.core.timestamps import utc_now
from veriml.protocol.accounts import OperatorBinding
from veriml.protocol.messages import (
    MAX_DESCRIPTOR_BYTES,
    MAX_MODELS,
    NODE_DESCRIPTOR_TYPE,
    NodeDescriptor,
    node_endpoint,
    sign_message,
)

NODE, OPERATOR = generate_key(), generate_key()


@pytest.mark.parametrize(
    ("given_", "stored"),
    [
        ("http://127.0.0.1:8701", "http://127.0.0.1:8701"),
        ("HTTPS://Node-1.Example.ORG/", "https://node-1.example.org"),
        ("http://[2001:DB8::0:1]:80", "http://[2001:db8::1]:80"),
        ("http://localhost", "http://localhost"),
    ],
)
def test_an_endpoint_is_stored_as_its_normalised_origin(given_: str, stored: str) -> None:
    assert node_endpoint(given_) == stored


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:8701/v1/jobs",  # a path: where the coordinator's POST would land
        "http://127.0.0.1:8701/?q",
        "http://127.0.0.1:8701#f",
        "http://admin:pw@127.0.0.1",
        "http://127.0.0.1@evil.example",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70",
        "http://",
        "http://127.0.0.1:0",
        "http://127.0.0.1:65536",
        "http://[::1",
        "http://exa mple",
        "http://under_score.example",
        "http://ex\u00e4mple.org",
        "http://x\r\nHost: y",
        "http://%6c%6fcalhost",
        "127.0.0.1:8701",
        "",
        "http://" + "a" * 260,
    ],
)
def test_anything_but_a_plain_origin_is_refused(endpoint: str) -> None:
    with pytest.raises(FormatError):
        node_endpoint(endpoint)


_LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(
    scheme=st.sampled_from(["http", "HTTP", "https"]),
    labels=st.lists(_LABEL, min_size=1, max_size=4),
    port=st.none() | st.integers(1, 65535),
    slash=st.booleans(),
)
def test_normalising_an_endpoint_twice_changes_nothing(
    scheme: str, labels: list[str], port: int | None, slash: bool
) -> None:
    text = f"{scheme}://{'.'.join(labels)}" + (f":{port}" if port else "") + ("/" if slash else "")
    once = node_endpoint(text)
    assert node_endpoint(once) == once
    assert once == once.lower()
    assert not once.endswith("/")


def _signed(**members: Any) -> Any:
    message = {
        "type": "node-descriptor",
        "node_id": NODE.key_id,
        "public_key": NODE.public.to_pem().decode(),
        "operator": OPERATOR.key_id,
        "operator_binding": OperatorBinding.of(OPERATOR, NODE.key_id).sign(OPERATOR).to_json(),
        "endpoint": "http://127.0.0.1:8701",
        "engines": ["onnxruntime"],
        "models": ["*"],
        "issued_at": utc_now(),
        "nonce": secrets.token_hex(16),
    } | members
    return sign_message(NODE_DESCRIPTOR_TYPE, message, NODE)


def test_a_descriptor_over_its_size_is_refused_before_its_signature_is_checked() -> None:
    envelope = _signed(padding="x" * MAX_DESCRIPTOR_BYTES)
    with pytest.raises(LimitExceededError):
        NodeDescriptor.open(envelope, max_age=None)


@pytest.mark.parametrize(
    ("members", "error"),
    [
        ({"models": ["*"] * (MAX_MODELS + 1)}, FormatError),
        ({"engines": ["Not An Engine"]}, FormatError),
        ({"hardware": {"cpu": "x" * 5000}}, LimitExceededError),
        ({"runtime": {"deep": [[[["x" * 5000]]]]}}, LimitExceededError),
        ({"endpoint": "http://127.0.0.1:8701/internal"}, FormatError),
        ({"issued_at": "2026-11-26T02:20:23Z" + " " * 100}, FormatError),
    ],
)
def test_every_descriptor_member_is_bounded(members: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        NodeDescriptor.open(_signed(**members), max_age=None)


def test_a_descriptor_within_its_bounds_opens_with_its_endpoint_normalised() -> None:
    descriptor = NodeDescriptor.open(_signed(endpoint="HTTP://127.0.0.1:8701/"), max_age=None)
    assert descriptor.endpoint == "http://127.0.0.1:8701"
    assert descriptor.engines == ("onnxruntime",)
