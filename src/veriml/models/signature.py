"""A model's IO signature: input and output names, dtypes and shapes (with symbolic dims)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import onnx

from veriml.core.errors import InvalidModelError

__all__ = ["Dim", "IOSignature", "TensorSpec", "io_signature"]

# A dimension is a fixed size, a symbolic name ("batch"), or None when the model leaves it open.
Dim = int | str | None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output: its name, NumPy dtype name, and shape (``None`` if rank unknown)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": None if self.shape is None else list(self.shape),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> TensorSpec:
        shape = obj.get("shape")
        return cls(
            name=str(obj["name"]),
            dtype=str(obj["dtype"]),
            shape=None if shape is None else tuple(shape),
        )


@dataclass(frozen=True, slots=True)
class IOSignature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> IOSignature:
        return cls(
            inputs=tuple(TensorSpec.from_json(s) for s in obj["inputs"]),
            outputs=tuple(TensorSpec.from_json(s) for s in obj["outputs"]),
        )


def _spec(value: onnx.ValueInfoProto, where: str) -> TensorSpec:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise InvalidModelError(
            f"{where} {value.name!r} is not a tensor; only tensor inputs and outputs are supported",
            kind=kind,
        )
    tensor = value.type.tensor_type
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    except (KeyError, ValueError) as exc:
        raise InvalidModelError(
            f"{where} {value.name!r} has an unsupported element type", elem_type=tensor.elem_type
        ) from exc
    if not tensor.HasField("shape"):
        return TensorSpec(value.name, dtype, None)
    dims: list[Dim] = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorSpec(value.name, dtype, tuple(dims))


def io_signature(model: onnx.ModelProto) -> IOSignature:
    """The IO signature of a model graph; initializers listed as inputs are not inputs."""
    initializers = {init.name for init in model.graph.initializer}
    return IOSignature(
        inputs=tuple(_spec(v, "input") for v in model.graph.input if v.name not in initializers),
        outputs=tuple(_spec(v, "output") for v in model.graph.output),
    )
