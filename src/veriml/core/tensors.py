"""Tensors: the canonical encoding that veriml hashes, and the JSON and ``.npy`` wire forms.

Canonical encoding (DESIGN.md, "Tensors")::

    b"veriml-tensor/v1\\n" + dtype + b"\\n" + ",".join(shape) + b"\\n" + raw LE C-order bytes

The SHA-256 of that encoding is the tensor digest. ``dtype`` is the NumPy name (``float32``,
``int64``, ``bool``, ...); a scalar's shape is the empty string.

JSON form: ``{"dtype": ..., "shape": [...], "data": nested lists}`` or, for exact bytes
(non-finite floats included), ``{"dtype": ..., "shape": [...], "b64": base64(raw LE bytes)}``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import tokenize
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from veriml.core.digest import Digest
from veriml.core.errors import InvalidTensorError

__all__ = [
    "DEFAULT_MAX_TENSOR_BYTES",
    "SUPPORTED_DTYPES",
    "canonical_tensor_bytes",
    "check_dtype",
    "tensor_digest",
    "tensor_from_canonical",
    "tensor_from_json",
    "tensor_from_npy",
    "tensor_to_json",
    "tensor_to_npy",
]

MAGIC = b"veriml-tensor/v1\n"
DEFAULT_MAX_TENSOR_BYTES = 1 << 30
MAX_RANK = 32

SUPPORTED_DTYPES: frozenset[str] = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    }
)

Array = npt.NDArray[Any]


def check_dtype(name: str) -> np.dtype[Any]:
    """The little-endian NumPy dtype for a supported dtype name, or :class:`InvalidTensorError`."""
    if name not in SUPPORTED_DTYPES:
        raise InvalidTensorError("unsupported tensor dtype", dtype=name)
    return np.dtype(name).newbyteorder("<")


def _dtype_name(array: Array) -> str:
    name = array.dtype.name
    if name not in SUPPORTED_DTYPES:
        raise InvalidTensorError("unsupported tensor dtype", dtype=str(array.dtype))
    return name


def _little_endian_c(array: Array) -> Array:
    le = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return np.ascontiguousarray(le)


def canonical_tensor_bytes(array: Array) -> bytes:
    """The canonical encoding of ``array`` (header plus raw little-endian C-order bytes)."""
    name = _dtype_name(array)
    header = MAGIC + name.encode() + b"\n" + ",".join(map(str, array.shape)).encode() + b"\n"
    return header + _little_endian_c(array).tobytes()


def tensor_digest(array: Array) -> Digest:
    """SHA-256 of the canonical encoding; does not copy the data when it is already LE C-order."""
    name = _dtype_name(array)
    header = MAGIC + name.encode() + b"\n" + ",".join(map(str, array.shape)).encode() + b"\n"
    body = _little_endian_c(array)
    h = hashlib.sha256(header)
    h.update(body.data if body.size else b"")
    return Digest(h.digest())


def tensor_from_canonical(data: bytes, *, max_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> Array:
    """Decode the canonical encoding (:func:`canonical_tensor_bytes`), sizes checked first.

    The encoding is self-describing and its SHA-256 is the tensor digest, so tensors stored by
    digest (a content-addressed blob store) are checked by hashing what was read.
    """
    if not data.startswith(MAGIC):
        raise InvalidTensorError("not a canonical tensor encoding (bad magic)")
    rest = data[len(MAGIC) :]
    dtype_end = rest.find(b"\n")
    shape_end = rest.find(b"\n", dtype_end + 1) if dtype_end >= 0 else -1
    if dtype_end < 0 or shape_end < 0 or shape_end > 64 + 32 * 24:
        raise InvalidTensorError("canonical tensor header is malformed")
    dtype = check_dtype(rest[:dtype_end].decode("ascii", "replace"))
    shape_text = rest[dtype_end + 1 : shape_end].decode("ascii", "replace")
    try:
        shape = [int(d) for d in shape_text.split(",")] if shape_text else []
    except ValueError as exc:
        raise InvalidTensorError(
            "canonical tensor shape is malformed", got=shape_text[:80]
        ) from exc
    dims = _check_shape(shape, max_bytes=max_bytes, itemsize=dtype.itemsize)
    if shape_text != ",".join(map(str, dims)):
        # int() also reads "03", "+3" and " 3": one tensor would have several encodings.
        raise InvalidTensorError("canonical tensor shape is not canonical", got=shape_text[:80])
    body = rest[shape_end + 1 :]
    if len(body) != math.prod(dims) * dtype.itemsize:
        raise InvalidTensorError(
            "canonical tensor body has the wrong length",
            expected=math.prod(dims) * dtype.itemsize,
            got=len(body),
        )
    _check_bools(body, dtype)
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _check_bools(raw: bytes, dtype: np.dtype[Any]) -> None:
    """A bool is the byte 0 or 1; any other byte would give one value a second digest."""
    if dtype.kind == "b" and raw and int(np.frombuffer(raw, dtype=np.uint8).max()) > 1:
        raise InvalidTensorError("a bool tensor holds a byte other than 0 and 1")


def _check_shape(shape: Any, *, max_bytes: int, itemsize: int) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or len(shape) > MAX_RANK:
        raise InvalidTensorError("tensor shape must be a list of at most 32 dimensions", got=shape)
    dims: list[int] = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise InvalidTensorError("tensor dimensions must be non-negative integers", got=shape)
        dims.append(d)
    # A zero dimension does not excuse the others: numpy cannot shape (0, 2**62, 2**62) either.
    extent = math.prod(d for d in dims if d)
    if extent * itemsize > max_bytes:
        raise InvalidTensorError(
            "tensor is larger than the limit", bytes=extent * itemsize, limit=max_bytes
        )
    return tuple(dims)


def tensor_from_json(obj: Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> Array:
    """Decode ``{"dtype","shape","data"}`` or ``{"dtype","shape","b64"}``; sizes checked first."""
    if not isinstance(obj, Mapping):
        raise InvalidTensorError("a JSON tensor is an object with dtype, shape and data or b64")
    unknown = set(obj) - {"dtype", "shape", "data", "b64"}
    if unknown:
        raise InvalidTensorError("JSON tensor has unknown members", members=sorted(unknown))
    dtype_name = obj.get("dtype")
    if not isinstance(dtype_name, str):
        raise InvalidTensorError("JSON tensor needs a string dtype")
    dtype = check_dtype(dtype_name)
    shape = _check_shape(obj.get("shape"), max_bytes=max_bytes, itemsize=dtype.itemsize)
    count = math.prod(shape)
    if ("data" in obj) == ("b64" in obj):
        raise InvalidTensorError("JSON tensor needs exactly one of data and b64")
    if "b64" in obj:
        text = obj["b64"]
        if not isinstance(text, str) or len(text) > 4 * (max_bytes // 3 + 1):
            raise InvalidTensorError("b64 must be a base64 string within the size limit")
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError as exc:  # binascii.Error, or a ValueError for non-ASCII text
            raise InvalidTensorError("b64 is not valid base64", reason=str(exc)) from exc
        if len(raw) != count * dtype.itemsize:
            raise InvalidTensorError(
                "b64 length does not match dtype and shape",
                expected=count * dtype.itemsize,
                got=len(raw),
            )
        _check_bools(raw, dtype)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    try:
        # A float beyond the dtype's range is refused like an integer beyond it, not made inf.
        with np.errstate(over="raise", invalid="raise"):
            array = np.array(obj["data"], dtype=dtype.newbyteorder("="))
    except (ValueError, TypeError, OverflowError, FloatingPointError) as exc:
        raise InvalidTensorError(
            "data does not fit dtype", dtype=dtype_name, reason=str(exc)
        ) from exc
    if array.size != count:
        raise InvalidTensorError("data does not match shape", shape=list(shape), got=array.size)
    return array.reshape(shape)


def tensor_to_json(array: Array, *, force_b64: bool = False) -> dict[str, Any]:
    """Encode as JSON: plain ``data`` when that round-trips exactly, else ``b64``."""
    name = _dtype_name(array)
    shape = list(array.shape)
    exact_as_data = not (array.dtype.kind == "f" and not bool(np.isfinite(array).all()))
    if force_b64 or not exact_as_data:
        raw = _little_endian_c(array).tobytes()
        return {"dtype": name, "shape": shape, "b64": base64.b64encode(raw).decode()}
    # float16/32 widen exactly to Python floats, and repr() round-trips the float64 value.
    return {"dtype": name, "shape": shape, "data": array.tolist()}


def tensor_from_npy(data: bytes, *, max_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> Array:
    """Read a ``.npy`` file's bytes. The header is checked before any array is allocated."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise InvalidTensorError("unsupported .npy version", version=version)
    # numpy re-tokenizes a header that does not parse, which can raise TokenError.
    except (ValueError, SyntaxError, EOFError, tokenize.TokenError) as exc:
        raise InvalidTensorError("not a valid .npy file", reason=str(exc)) from exc
    if dtype.hasobject or dtype.name not in SUPPORTED_DTYPES:
        raise InvalidTensorError("unsupported tensor dtype in .npy", dtype=str(dtype))
    shape = _check_shape(list(shape), max_bytes=max_bytes, itemsize=dtype.itemsize)
    expected = math.prod(shape) * dtype.itemsize
    body = data[stream.tell() :]
    if len(body) != expected:
        raise InvalidTensorError(
            ".npy data length does not match its header", expected=expected, got=len(body)
        )
    _check_bools(body, dtype)
    array = np.frombuffer(body, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    # astype(order="C") rather than ascontiguousarray, which turns 0-d arrays into 1-d.
    return array.astype(dtype.newbyteorder("="), order="C")


def tensor_to_npy(array: Array) -> bytes:
    """The ``.npy`` bytes of ``array``."""
    _dtype_name(array)
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
