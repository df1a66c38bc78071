from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from veriml.core import (
    canonical_tensor_bytes,
    tensor_digest,
    tensor_from_json,
    tensor_from_npy,
    tensor_to_json,
    tensor_to_npy,
)
from veriml.core.errors import InvalidTensorError
from veriml.core.tensors import SUPPORTED_DTYPES


def test_known_answer_float32_vector() -> None:
    # Reproduce with:
    #   printf 'veriml-tensor/v1\nfloat32\n2\n\x00\x00\x80\x3f\x00\x00\x00\x40' | sha256sum
    digest = tensor_digest(np.array([1.0, 2.0], dtype=np.float32))
    assert digest.hex == "3af402f0afba5a4346774400909349871462b625449167428babb4cd2b95ea3c"


def test_known_answer_empty_int64_matrix() -> None:
    # Reproduce with:  printf 'veriml-tensor/v1\nint64\n0,3\n' | sha256sum
    digest = tensor_digest(np.zeros((0, 3), dtype=np.int64))
    assert digest.hex == "ff63451ce17f8cded8e5f33c16913d0c1b7189802fd14fbeb5a5798925a773db"


def test_scalar_has_an_empty_shape_line() -> None:
    assert canonical_tensor_bytes(np.array(True)) == b"veriml-tensor/v1\nbool\n\n\x01"


def test_digest_ignores_memory_layout_and_byte_order() -> None:
    base = np.arange(12, dtype=np.int32).reshape(3, 4)
    fortran = np.asfortranarray(base)
    big_endian = base.astype(">i4")
    assert tensor_digest(base) == tensor_digest(fortran) == tensor_digest(big_endian)
    assert tensor_digest(base) != tensor_digest(base.reshape(4, 3))
    assert tensor_digest(base) != tensor_digest(base.astype(np.int64))


arrays = st.sampled_from(sorted(SUPPORTED_DTYPES)).flatmap(
    lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
)


@given(arrays)
def test_json_round_trip_is_bitwise(array: np.ndarray) -> None:
    encoded = json.loads(json.dumps(tensor_to_json(array)))
    decoded = tensor_from_json(encoded)
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    assert tensor_digest(decoded) == tensor_digest(array)


@given(arrays)
def test_b64_and_npy_round_trips_are_bitwise(array: np.ndarray) -> None:
    assert tensor_digest(tensor_from_json(tensor_to_json(array, force_b64=True))) == tensor_digest(
        array
    )
    assert tensor_digest(tensor_from_npy(tensor_to_npy(array))) == tensor_digest(array)


def test_non_finite_floats_are_written_as_b64() -> None:
    array = np.array([np.nan, np.inf, -0.0], dtype=np.float32)
    encoded = tensor_to_json(array)
    assert "b64" in encoded
    assert tensor_digest(tensor_from_json(encoded)) == tensor_digest(array)


@pytest.mark.parametrize(
    ("obj", "match"),
    [
        ({"dtype": "float32", "shape": [2], "data": [1.0]}, "shape"),
        ({"dtype": "complex64", "shape": [1], "data": [1]}, "dtype"),
        ({"dtype": "float32", "shape": [-1], "data": []}, "non-negative"),
        ({"dtype": "float32", "shape": [1], "data": ["x"]}, "dtype"),
        ({"dtype": "int8", "shape": [1], "data": [1000]}, "dtype"),
        ({"dtype": "float32", "shape": [1], "b64": "AAAA"}, "length"),
        ({"dtype": "float32", "shape": [1], "b64": "not base64!"}, "base64"),
        ({"dtype": "float32", "shape": [1], "data": [1], "b64": "AAAAAA=="}, "exactly one"),
        ({"dtype": "float32", "shape": [1], "data": [1], "extra": 1}, "unknown"),
        ({"dtype": "float32", "shape": [1 << 40], "data": []}, "limit"),
    ],
)
def test_malformed_json_tensors_are_rejected_with_a_reason(
    obj: dict[str, object], match: str
) -> None:
    with pytest.raises(InvalidTensorError, match=match):
        tensor_from_json(obj)


def test_npy_header_is_checked_before_allocation() -> None:
    # A 100-byte file whose header claims a 2**40-element array must not allocate it.
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)}
    )
    with pytest.raises(InvalidTensorError, match="limit"):
        tensor_from_npy(buf.getvalue() + b"\x00" * 16)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x93NUMPY", tensor_to_npy(np.zeros(4, np.float32))[:-3], b"PK\x03\x04"],
)
def test_truncated_or_foreign_npy_is_rejected(data: bytes) -> None:
    with pytest.raises(InvalidTensorError):
        tensor_from_npy(data)


def test_object_arrays_are_refused() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidTensorError):
        tensor_from_npy(buf.getvalue())
