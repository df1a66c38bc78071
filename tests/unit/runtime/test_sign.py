"""The node's fast receipt signing writes exactly the bytes of the reference path."""

from __future__ import annotations

from typing import Any

import rfc8785
from _runtime_models import mlp_model, runner_of
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.keys import generate_key
from veriml.core.receipt import sign_receipt
from veriml.core.tensors import tensor_digest
from veriml.runtime._run import canonical_json, is_simple

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


def _reference(value: Any) -> bytes | None:
    try:
        return rfc8785.dumps(value)
    except Exception:  # values JCS cannot express (lone surrogates, huge integers)
        return None


@given(json_values)
def test_fast_canonical_json_equals_rfc8785(value: Any) -> None:
    expected = _reference(value)
    if expected is None:
        return  # the fallback raises the same refusal; covered by core tests
    assert canonical_json(value) == expected


@given(st.dictionaries(st.text(max_size=6), st.text(), max_size=6))
def test_string_only_values_are_canonical_without_the_walk(value: dict[str, str]) -> None:
    expected = _reference(value)
    if expected is None or not is_simple(value):
        return
    assert canonical_json(value, known_simple=True) == expected


def test_floats_and_unsafe_integers_are_not_simple() -> None:
    assert not is_simple({"a": 1.5})
    assert not is_simple([2**53 + 1])
    assert not is_simple({"é": 1})
    assert is_simple({"a": [1, "x", None, True, {"b": -(2**53)}]})


def test_node_receipts_are_byte_identical_to_core_sign_receipt() -> None:
    # Ed25519 is deterministic, so equal envelopes mean equal signed bytes.
    model, inputs = mlp_model()
    key = generate_key()
    result = runner_of(model).run(inputs, key=key, trace=True, request_id="r\u2028\x01é")
    outputs = {name: tensor_digest(a) for name, a in result.outputs.items()}
    assert result.receipt == sign_receipt(outputs, result.predicate, key)
