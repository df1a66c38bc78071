"""Input validation against a model's IO signature, before anything reaches the engine.

onnxruntime's own messages for a wrong dtype or shape are long and sometimes come after
allocation; these checks run first and name the input, what the model expects and what was given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from veriml.core.errors import InvalidInput
from veriml.core.tensors import SUPPORTED_DTYPES
from veriml.models.signature import IOSignature, TensorSpec

__all__ = ["validate_inputs"]

Array = npt.NDArray[Any]


def _shape_text(shape: tuple[Any, ...] | None) -> str:
    if shape is None:
        return "any"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def _check_one(spec: TensorSpec, value: object, symbols: dict[str, tuple[str, int]]) -> Array:
    if not isinstance(value, np.ndarray):
        raise InvalidInput(f"input {spec.name!r} must be a NumPy array", got=type(value).__name__)
    if value.dtype.name not in SUPPORTED_DTYPES:
        raise InvalidInput(
            f"input {spec.name!r} has an unsupported dtype", expected=spec.dtype, got=value.dtype
        )
    if value.dtype.name != spec.dtype:
        raise InvalidInput(
            f"input {spec.name!r} has the wrong dtype", expected=spec.dtype, got=value.dtype.name
        )
    if spec.shape is None:
        return np.ascontiguousarray(value)
    given = tuple(int(d) for d in value.shape)
    if len(given) != len(spec.shape):
        raise InvalidInput(
            f"input {spec.name!r} has the wrong rank",
            expected=f"{len(spec.shape)} {_shape_text(spec.shape)}",
            got=f"{len(given)} {_shape_text(given)}",
        )
    for axis, (want, got) in enumerate(zip(spec.shape, given, strict=True)):
        if isinstance(want, int) and want != got:
            raise InvalidInput(
                f"input {spec.name!r} has the wrong size on axis {axis}",
                expected=_shape_text(spec.shape),
                got=_shape_text(given),
            )
        if isinstance(want, str):
            seen = symbols.setdefault(want, (spec.name, got))
            if seen[1] != got:
                raise InvalidInput(
                    f"input {spec.name!r} disagrees with input {seen[0]!r} on dimension {want!r}",
                    expected=seen[1],
                    got=got,
                )
    # The engine and the digests both want native-order, C-contiguous memory.
    return np.ascontiguousarray(value.astype(value.dtype.newbyteorder("="), copy=False))


def validate_inputs(signature: IOSignature, inputs: Mapping[str, object]) -> dict[str, Array]:
    """Check ``inputs`` against ``signature``; return them in signature order, C-contiguous.

    Raises :class:`InvalidInput` naming the first input that is missing, unknown, of the wrong
    dtype, rank or static size, or whose symbolic dimension disagrees with another input's.
    """
    expected = [spec.name for spec in signature.inputs]
    unknown = sorted(set(inputs) - set(expected))
    if unknown:
        raise InvalidInput(
            "unknown input name", got=",".join(unknown), expected=",".join(expected) or "none"
        )
    missing = [name for name in expected if name not in inputs]
    if missing:
        raise InvalidInput("missing input", missing=",".join(missing))
    symbols: dict[str, tuple[str, int]] = {}
    return {spec.name: _check_one(spec, inputs[spec.name], symbols) for spec in signature.inputs}
