"""The result file of ``veriml run``: outputs plus the signed receipt (docs/receipts.md).

JSON form::

    {
      "outputs": {name: {"dtype", "shape", "data"} | {"dtype", "shape", "b64"}},
      "receipt": {"payloadType", "payload" (base64), "signatures": [{"keyid", "sig"}]},
      "inputs":  {name: tensor JSON},          # optional: lets a verifier re-execute
      "trace":   {"format": "veriml-trace/v1", "root", "size", "entries": [...]}  # optional
    }

Tensor JSON is :func:`veriml.core.tensor_to_json`; the envelope is DSSE
(https://github.com/secure-systems-lab/dsse/blob/master/envelope.md) over an in-toto
Statement v1 with predicate type ``https://veriml.dev/inference/v1``
(:mod:`veriml.core.receipt`). Parsing a result file proves nothing: use
:func:`veriml.verify.verify_receipt`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy.typing as npt

from veriml.core.canonical import parse_json_object
from veriml.core.dsse import Envelope, Statement
from veriml.core.errors import Check, FormatError, VerificationError
from veriml.core.receipt import PREDICATE_TYPE, InferencePredicate
from veriml.core.tensors import tensor_from_json, tensor_to_json
from veriml.runtime._trace import Trace

__all__ = ["MAX_RESULT_BYTES", "RawResult", "RunResult", "read_result_file"]

MAX_RESULT_BYTES = 1 << 30
# Outputs up to this many elements are written as readable "data"; larger ones as "b64".
_DATA_ELEMENTS = 4096

Array = npt.NDArray[Any]


def _tensor_json(array: Array) -> dict[str, Any]:
    return tensor_to_json(array, force_b64=array.size > _DATA_ELEMENTS)


def _tensors(obj: Any, what: str) -> dict[str, Array]:
    if not isinstance(obj, Mapping):
        raise FormatError(f"result {what} must be an object of name -> tensor")
    return {str(name): tensor_from_json(value) for name, value in obj.items()}


@dataclass(frozen=True, slots=True)
class RawResult:
    """A result file parsed but not yet trusted: nothing here has been checked."""

    outputs: Mapping[str, Array]
    receipt: Envelope
    inputs: Mapping[str, Array] | None = None
    trace: Trace | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RawResult:
        if not isinstance(obj, Mapping):
            raise FormatError("a result file is a JSON object")
        unknown = set(obj) - {"outputs", "receipt", "inputs", "trace"}
        if unknown:
            raise FormatError("result file has unknown members", members=",".join(sorted(unknown)))
        if "outputs" not in obj or "receipt" not in obj:
            raise FormatError("result file needs outputs and receipt")
        return cls(
            outputs=_tensors(obj["outputs"], "outputs"),
            receipt=Envelope.from_json(obj["receipt"]),
            inputs=_tensors(obj["inputs"], "inputs") if "inputs" in obj else None,
            trace=Trace.from_json(obj["trace"]) if "trace" in obj else None,
        )


def read_result_file(path: Path) -> RawResult:
    """Read and parse a result file, bounding its size before reading it."""
    try:
        size = path.stat().st_size
        if size > MAX_RESULT_BYTES:
            raise FormatError("result file is too large", path=str(path), size=size)
        data = path.read_bytes()
    except OSError as exc:
        raise FormatError("cannot read result file", path=str(path), reason=exc.strerror) from exc
    return RawResult.from_json(parse_json_object(data, what=f"result file {path}"))


@dataclass(frozen=True, slots=True)
class RunResult:
    """What :func:`veriml.runtime.run` returns: outputs, the signed receipt, its predicate,
    and the trace when tracing was on. ``inputs`` are kept so a verifier can re-execute."""

    outputs: Mapping[str, Array]
    receipt: Envelope
    predicate: InferencePredicate
    trace: Trace | None = None
    inputs: Mapping[str, Array] | None = field(default=None, repr=False)

    def to_json(self, *, include_inputs: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "outputs": {name: _tensor_json(a) for name, a in self.outputs.items()},
            "receipt": self.receipt.to_json(),
        }
        if include_inputs and self.inputs is not None:
            out["inputs"] = {name: _tensor_json(a) for name, a in self.inputs.items()}
        if self.trace is not None:
            out["trace"] = self.trace.to_json()
        return out

    def to_bytes(self, *, include_inputs: bool = True) -> bytes:
        return (json.dumps(self.to_json(include_inputs=include_inputs), indent=1) + "\n").encode()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RunResult:
        """Parse a result file. This does **not** verify the signature or any digest."""
        raw = RawResult.from_json(obj)
        statement = Statement.from_bytes(raw.receipt.payload)
        if statement.predicate_type != PREDICATE_TYPE:
            raise VerificationError(
                "receipt is not an inference receipt",
                check=Check.PREDICATE_TYPE,
                expected=PREDICATE_TYPE,
                got=statement.predicate_type,
            )
        return cls(
            outputs=raw.outputs,
            receipt=raw.receipt,
            predicate=InferencePredicate.from_json(statement.predicate),
            trace=raw.trace,
            inputs=raw.inputs,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> RunResult:
        if len(data) > MAX_RESULT_BYTES:
            raise FormatError("result file is too large", size=len(data))
        return cls.from_json(parse_json_object(data, what="result file"))
