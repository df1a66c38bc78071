"""Inputs: reading tensor files, and validation against a model's IO signature before anything
reaches the engine.

onnxruntime's own messages for a wrong dtype or shape are long and sometimes come after
allocation; these checks run first and name the input, what the model expects and what was given.
Input files are ``.npy`` or JSON tensors (:mod:`veriml.core.tensors`), size-checked before they
are read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from veriml.core.canonical import parse_json_object
from veriml.core.errors import FormatError, InvalidInputError, InvalidTensorError
from veriml.core.tensors import (
    DEFAULT_MAX_TENSOR_BYTES,
    SUPPORTED_DTYPES,
    tensor_from_json,
    tensor_from_npy,
)
from veriml.models.signature import IOSignature, TensorSpec

__all__ = ["load_input_files", "validate_inputs"]

Array = npt.NDArray[Any]


def _shape_text(shape: tuple[Any, ...] | None) -> str:
    if shape is None:
        return "any"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _check_one(spec: TensorSpec, value: object, symbols: dict[str, tuple[str, int]]) -> Array:
    if not isinstance(value, np.ndarray):
        raise InvalidInputError(
            f"input {spec.name!r} must be a NumPy array", got=type(value).__name__
        )
    if value.dtype.name not in SUPPORTED_DTYPES:
        raise InvalidInputError(
            f"input {spec.name!r} has an unsupported dtype", expected=spec.dtype, got=value.dtype
        )
    if value.dtype.name != spec.dtype:
        raise InvalidInputError(
            f"input {spec.name!r} has the wrong dtype", expected=spec.dtype, got=value.dtype.name
        )
    if spec.shape is None:
        return np.ascontiguousarray(value)
    given = tuple(int(d) for d in value.shape)
    if len(given) != len(spec.shape):
        raise InvalidInputError(
            f"input {spec.name!r} has the wrong rank",
            expected=f"{len(spec.shape)} {_shape_text(spec.shape)}",
            got=f"{len(given)} {_shape_text(given)}",
        )
    for axis, (want, got) in enumerate(zip(spec.shape, given, strict=True)):
        if isinstance(want, int) and want != got:
            raise InvalidInputError(
                f"input {spec.name!r} has the wrong size on axis {axis}",
                expected=_shape_text(spec.shape),
                got=_shape_text(given),
            )
        if isinstance(want, str):
            seen = symbols.setdefault(want, (spec.name, got))
            if seen[1] != got:
                raise InvalidInputError(
                    f"input {spec.name!r} disagrees with input {seen[0]!r} on dimension {want!r}",
                    expected=seen[1],
                    got=got,
                )
    # The engine and the digests both want native-order, C-contiguous memory.
    return np.ascontiguousarray(value.astype(value.dtype.newbyteorder("="), copy=False))


def validate_inputs(signature: IOSignature, inputs: Mapping[str, object]) -> dict[str, Array]:
    """Check ``inputs`` against ``signature``; return them in signature order, C-contiguous.

    Raises :class:`InvalidInputError` naming the first input that is missing, unknown, of the wrong
    dtype, rank or static size, or whose symbolic dimension disagrees with another input's.
    """
    expected = [spec.name for spec in signature.inputs]
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise InvalidInputError(
            "unknown input name", got=",".join(unknown), expected=",".join(expected) or "none"
        )
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise InvalidInputError("missing input", missing=",".join(missing))
    symbols: dict[str, tuple[str, int]] = {}
    return {spec.name: _check_one(spec, inputs[spec.name], symbols) for spec in signature.inputs}


# A JSON tensor spends a few bytes per element on text; bound the file before reading it.
MAX_INPUT_FILE = 4 * DEFAULT_MAX_TENSOR_BYTES


def _read_bounded(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_INPUT_FILE:
            raise InvalidTensorError("input file is too large", path=str(path), size=size)
        return path.read_bytes()
    except OSError as exc:
        raise InvalidTensorError(
            "cannot read input file", path=str(path), reason=exc.strerror
        ) from exc


def _read_tensors(path: Path) -> Array | dict[str, Array]:
    """A ``.npy`` file, a JSON tensor, or a JSON object of ``name -> tensor``."""
    data = _read_bounded(path)
    if path.suffix.lower() == ".npy" or data.startswith(b"\x93NUMPY"):
        try:
            return tensor_from_npy(data)
        except InvalidTensorError as exc:
            raise InvalidTensorError(exc.message, path=str(path), **exc.evidence) from exc
    try:
        obj = parse_json_object(data, what=f"input file {path}")
        if "dtype" in obj:
            return tensor_from_json(obj)
        return {str(name): tensor_from_json(value) for name, value in obj.items()}
    except FormatError as exc:
        raise InvalidTensorError(exc.message, path=str(path), **exc.evidence) from exc


def load_input_files(specs: Sequence[str], input_names: Sequence[str]) -> dict[str, Array]:
    """Turn ``--input`` values (``FILE`` or ``NAME=FILE``) into named tensors.

    An unnamed tensor goes to the model's only input; a JSON file may hold several named ones.
    """
    inputs: dict[str, Array] = {}

    def put(name: str, value: Array) -> None:
        if name in inputs:
            raise InvalidInputError("input given twice", input=name)
        inputs[name] = value

    for spec in specs:
        name, sep, file = spec.partition("=")
        if sep and name in input_names:
            value = _read_tensors(Path(file))
            if isinstance(value, dict):
                raise InvalidInputError("NAME=FILE needs a file holding one tensor", input=name)
            put(name, value)
            continue
        value = _read_tensors(Path(spec))
        if isinstance(value, dict):
            for key, tensor in value.items():
                put(key, tensor)
        elif len(input_names) == 1:
            put(input_names[0], value)
        else:
            raise InvalidInputError(
                "the model has several inputs: use --input NAME=FILE",
                file=spec,
                inputs=",".join(input_names),
            )
    return inputs
