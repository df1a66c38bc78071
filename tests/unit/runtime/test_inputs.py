"""Input validation: errors name the input, what was expected and what was given."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.errors import InvalidInputError, InvalidTensorError
from veriml.models import IOSignature, TensorSpec
from veriml.runtime import load_input_files, validate_inputs

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
    with pytest.raises(InvalidInputError, match=message) as info:
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


def _json_tensor(values: list[float], dtype: str = "float32") -> dict[str, object]:
    return {"dtype": dtype, "shape": [len(values)], "data": values}


def test_input_files_by_name_by_map_and_unnamed(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.array([1.0, 2.0], np.float32))
    (tmp_path / "k.json").write_text(json.dumps(_json_tensor([3], "int64")))
    (tmp_path / "both.json").write_text(
        json.dumps({"a": _json_tensor([4.0, 5.0]), "k": _json_tensor([6], "int64")})
    )
    named = load_input_files([f"a={tmp_path / 'a.npy'}", f"k={tmp_path / 'k.json'}"], ["a", "k"])
    assert named["a"].tolist() == [1.0, 2.0]
    assert named["k"].tolist() == [3]
    mapped = load_input_files([str(tmp_path / "both.json")], ["a", "k"])
    assert mapped["k"].dtype == np.int64
    single = load_input_files([str(tmp_path / "a.npy")], ["only"])
    assert list(single) == ["only"]


def test_a_path_with_an_equals_sign_is_a_path_unless_it_names_an_input(tmp_path: Path) -> None:
    path = tmp_path / "x=1.npy"
    np.save(path, np.zeros(2, np.float32))
    assert list(load_input_files([str(path)], ["x"])) == ["x"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["a.npy"], "several inputs"),
        (["a=a.npy", "a=a.npy"], "given twice"),
        (["a=both.json"], "one tensor"),
        (["missing.npy"], "cannot read"),
        (["bad.json"], "not valid JSON"),
        (["short.npy"], "does not match its header"),
    ],
)
def test_bad_input_files_are_named_errors(tmp_path: Path, files: list[str], message: str) -> None:
    np.save(tmp_path / "a.npy", np.zeros(2, np.float32))
    (tmp_path / "both.json").write_text(json.dumps({"a": _json_tensor([1.0, 2.0])}))
    (tmp_path / "bad.json").write_text('{"dtype": "float32", "shape": [2], "data": [1,')
    (tmp_path / "short.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:-3])
    specs = [
        f"{f.split('=')[0]}={tmp_path / f.split('=')[1]}" if "=" in f else str(tmp_path / f)
        for f in files
    ]
    with pytest.raises((InvalidInputError, InvalidTensorError), match=message):
        load_input_files(specs, ["a", "k"])
