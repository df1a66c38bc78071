from __future__ import annotations

import pytest

from veriml.core import Digest, Statement, generate_key
from veriml.core.errors import VerificationError
from veriml.core.receipt import (
    PREDICATE_TYPE,
    InferencePredicate,
    TraceCommitment,
    request_digest,
    sign_receipt,
)


def _predicate(**overrides: object) -> InferencePredicate:
    fields: dict[str, object] = {
        "request_id": "r-1",
        "request_digest": request_digest({"model": "m", "inputs": {}}),
        "model_digest": Digest.of(b"model"),
        "inputs": {"x": Digest.of(b"x"), "a": Digest.of(b"a")},
        "runtime": {"engine": "onnxruntime", "version": "1.0"},
        "node_id": "sha256:" + "11" * 32,
        "policy": "none",
        "started": "2026-01-01T00:00:00.000000Z",
        "finished": "2026-01-01T00:00:01.000000Z",
        "trace": TraceCommitment(Digest.of(b"root"), 7),
    }
    fields.update(overrides)
    return InferencePredicate(**fields)  # type: ignore[arg-type]


def test_predicate_round_trips_through_json() -> None:
    predicate = _predicate()
    assert InferencePredicate.from_json(predicate.to_json()) == predicate


def test_inputs_are_listed_in_name_order() -> None:
    names = [item["name"] for item in _predicate().to_json()["inputs"]]
    assert names == ["a", "x"]


def test_signed_receipt_binds_outputs_and_predicate() -> None:
    key = generate_key()
    env = sign_receipt({"y": Digest.of(b"y")}, _predicate(), key)
    env.verify([key.public])
    statement = Statement.from_bytes(env.payload)
    assert statement.predicate_type == PREDICATE_TYPE
    assert [(s.name, s.digest) for s in statement.subjects] == [("y", Digest.of(b"y"))]
    assert InferencePredicate.from_json(statement.predicate) == _predicate()


def test_request_digest_does_not_depend_on_member_order() -> None:
    assert request_digest({"a": 1, "b": [1, 2]}) == request_digest({"b": [1, 2], "a": 1})


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: p.pop("model"),
        lambda p: p["model"].update(digest="md5:00"),
        lambda p: p.update(inputs={"x": "y"}),
        lambda p: p["trace"].update(size=-1),
        lambda p: p.update(policy=3),
    ],
)
def test_malformed_predicates_fail_the_predicate_check(mutate: object) -> None:
    obj = _predicate().to_json()
    mutate(obj)  # type: ignore[operator]
    with pytest.raises(VerificationError) as info:
        InferencePredicate.from_json(obj)
    assert info.value.check == "predicate"
