"""Input validation: errors name the input, what was expected and what was given."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.errors import InvalidInput
from veriml.models import IOSignature, TensorSpec
from veriml.runtime import validate_inputs

SIG = IOSignature(
    inputs=(
        TensorSpec("a", "float32", ("n", 5)),
        TensorSpec("b", "float32", ("n", None)),
        TensorSpec("k", "int64", (1,)),
    ),
    outputs=(TensorSpec("y", "float32", ("n",)),),
)


def good(n: int = 3) -> dict[str, np.ndarray]:
    return {
        "a": np.zeros((n, 5), np.float32),
        "b": np.zeros((n, 2), np.float32),
        "k": np.array([1], np.int64),
    }


def test_valid_inputs_come_back_in_signature_order_and_contiguous() -> None:
    inputs = good()
    inputs["a"] = np.asfortranarray(np.ones((5, 3), np.float32).T)
    out = validate_inputs(SIG, dict(reversed(inputs.items())))
    assert list(out) == ["a", "b", "k"]
    assert out["a"].flags.c_contiguous
    assert np.array_equal(out["a"], inputs["a"])


@pytest.mark.parametrize(
    ("change", "message", "evidence"),
    [
        ({"z": np.zeros(1, np.float32)}, "unknown input", "got=z"),
        ({"k": None}, "missing input", "missing=k"),
        ({"a": np.zeros((3, 5), np.float64)}, "'a' has the wrong dtype", "got=float64"),
        ({"a": np.zeros((3, 5, 1), np.float32)}, "'a' has the wrong rank", "expected=2 [n,5]"),
        ({"a": np.zeros((3, 4), np.float32)}, "'a' has the wrong size on axis 1", "got=[3,4]"),
        ({"b": np.zeros((4, 2), np.float32)}, "'b' disagrees with input 'a'", "expected=3"),
        ({"k": [1]}, "'k' must be a NumPy array", "got=list"),
        ({"a": np.zeros((3, 5), "U1")}, "'a' has an unsupported dtype", "expected=float32"),
    ],
)
def test_bad_inputs_are_named_with_expected_and_given(
    change: dict[str, object], message: str, evidence: str
) -> None:
    inputs: dict[str, object] = dict(good())
    for name, value in change.items():
        if value is None:
            del inputs[name]
        else:
            inputs[name] = value
    with pytest.raises(InvalidInput, match=message) as info:
        validate_inputs(SIG, inputs)
    assert evidence in info.value.diagnostics()


@given(st.integers(min_value=0, max_value=6), st.integers(min_value=0, max_value=6))
def test_symbolic_dims_accept_any_size_used_consistently(n: int, m: int) -> None:
    inputs = good(n)
    inputs["b"] = np.zeros((n, m), np.float32)
    assert validate_inputs(SIG, inputs)["b"].shape == (n, m)


def test_unknown_rank_accepts_any_shape() -> None:
    sig = IOSignature((TensorSpec("x", "int32", None),), ())
    assert validate_inputs(sig, {"x": np.zeros((2, 2, 2), np.int32)})["x"].shape == (2, 2, 2)


def test_big_endian_input_is_accepted_and_converted() -> None:
    sig = IOSignature((TensorSpec("x", "float32", (2,)),), ())
    x = np.array([1.5, -2.0], dtype=">f4")
    out = validate_inputs(sig, {"x": x})["x"]
    assert out.dtype.isnative
    assert out.tolist() == [1.5, -2.0]
