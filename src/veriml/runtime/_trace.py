"""Trace mode: every intermediate tensor of an ONNX graph, in topological order, committed to
by an RFC 9162 Merkle root (https://www.rfc-editor.org/rfc/rfc9162#section-2.1.1).

Leaves: one per node output, in graph node order (ONNX requires nodes to be topologically
sorted, and ``onnx.checker`` enforces it), then in the node's output order; optional outputs
with an empty name are skipped. The leaf *data* is the 32 raw bytes of the tensor digest
(:func:`veriml.core.tensor_digest`), so a leaf hash is ``SHA-256(0x00 || digest)`` and the
root is ``MTH`` over those leaves. Graph inputs are committed by the receipt's input digests
and initializers by the model digest, so they are not leaves.

Tracing runs the original graph with every node output added as a graph output, under the same
profile. With no graph rewriting (see :mod:`veriml.runtime._profile`) each node keeps its own
kernel, so the final outputs are bitwise the same as an untraced run.

JSON form (``veriml-trace/v1``)::

    {"format": "veriml-trace/v1", "root": "sha256:<hex>", "size": n,
     "entries": [{"node": i, "op_type": str, "name": str, "inputs": [str], "output": str,
                  "digest": "sha256:<hex>"}, ...]}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from veriml.core.digest import Digest
from veriml.core.errors import (
    Check,
    FormatError,
    InvalidModelError,
    InvalidTensorError,
    RootMismatchError,
)
from veriml.core.receipt import TraceCommitment
from veriml.core.tensors import tensor_digest
from veriml.tlog.merkle import inclusion_proof, leaf_hash, root_from_leaf_hashes

__all__ = ["TRACE_FORMAT", "Trace", "TraceEntry", "build_trace", "traced_model"]

TRACE_FORMAT = "veriml-trace/v1"
MAX_TRACE_ENTRIES = 1 << 20

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One recorded tensor: the ``output`` of graph node number ``node``."""

    node: int
    op_type: str
    name: str
    inputs: tuple[str, ...]
    output: str
    digest: Digest

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "name": self.name,
            "inputs": list(self.inputs),
            "output": self.output,
            "digest": self.digest.to_text(),
        }

    @classmethod
    def from_json(cls, obj: Any) -> TraceEntry:
        if not isinstance(obj, Mapping):
            raise FormatError("a trace entry is a JSON object")
        node, inputs, digest = obj.get("node"), obj.get("inputs"), obj.get("digest")
        texts = [obj.get(k) for k in ("op_type", "name", "output")]
        if isinstance(node, bool) or not isinstance(node, int) or node < 0:
            raise FormatError("trace entry node must be a non-negative integer", got=node)
        if not all(isinstance(t, str) for t in texts) or not isinstance(digest, str):
            raise FormatError("trace entry needs string op_type, name, output and digest")
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise FormatError("trace entry inputs must be a list of names")
        return cls(
            node,
            obj["op_type"],
            obj["name"],
            tuple(inputs),
            obj["output"],
            Digest.from_text(digest),
        )


@dataclass(frozen=True, slots=True)
class Trace:
    """The ordered record of a traced run and its Merkle commitment.

    ``tensors`` (optional) holds the recorded values by name: graph inputs and every node
    output; single-operator re-execution needs them, a commitment alone does not.
    """

    entries: tuple[TraceEntry, ...]
    tensors: Mapping[str, Array] | None = field(default=None, compare=False, repr=False)
    _leaf_hashes: tuple[bytes, ...] = field(init=False, repr=False, compare=False)
    root: Digest = field(init=False)

    def __post_init__(self) -> None:
        if len(self.entries) > MAX_TRACE_ENTRIES:
            raise FormatError("trace has too many entries", size=len(self.entries))
        hashes = tuple(leaf_hash(e.digest.raw) for e in self.entries)
        object.__setattr__(self, "_leaf_hashes", hashes)
        object.__setattr__(self, "root", Digest(bytes(root_from_leaf_hashes(hashes))))

    @property
    def size(self) -> int:
        return len(self.entries)

    @property
    def commitment(self) -> TraceCommitment:
        """What the receipt predicate records: ``{"root", "size"}``."""
        return TraceCommitment(self.root, self.size)

    def leaf_hash(self, index: int) -> bytes:
        """``SHA-256(0x00 || entries[index].digest.raw)``."""
        return self._leaf_hashes[index]

    def inclusion_proof(self, index: int) -> list[bytes]:
        """RFC 9162 inclusion proof of entry ``index`` against :attr:`root`.

        Check it with ``veriml.tlog.merkle.verify_inclusion(trace.leaf_hash(i), i, trace.size,
        proof, trace.root.raw)``.
        """
        return inclusion_proof(index, self.size, self._leaf_hashes)

    def for_node(self, node: int) -> list[TraceEntry]:
        """The entries recorded for graph node number ``node``, in output order."""
        return [e for e in self.entries if e.node == node]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": TRACE_FORMAT,
            "root": self.root.to_text(),
            "size": self.size,
            "entries": [e.to_json() for e in self.entries],
        }

    @classmethod
    def from_json(cls, obj: Any) -> Trace:
        """Parse the digest list; the stated root and size must be the recomputed ones."""
        if not isinstance(obj, Mapping) or obj.get("format") != TRACE_FORMAT:
            raise FormatError(f"a trace is a JSON object with format {TRACE_FORMAT!r}")
        raw = obj.get("entries")
        if not isinstance(raw, list) or len(raw) > MAX_TRACE_ENTRIES:
            raise FormatError("trace entries must be a list within the size limit")
        trace = cls(tuple(TraceEntry.from_json(e) for e in raw))
        if obj.get("size") != trace.size:
            raise FormatError(
                "trace size does not match its entries", size=obj.get("size"), entries=trace.size
            )
        stated = obj.get("root")
        if not isinstance(stated, str) or Digest.from_text(stated) != trace.root:
            raise RootMismatchError(
                "trace root does not match its entries",
                check=Check.TRACE_ROOT,
                expected=Digest.from_text(stated).raw if isinstance(stated, str) else b"",
                calculated=trace.root.raw,
            )
        return trace


def _node_outputs(graph: onnx.GraphProto) -> list[tuple[int, onnx.NodeProto, str]]:
    return [(i, node, out) for i, node in enumerate(graph.node) for out in node.output if out]


def traced_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs every node output (untyped: the engine
    infers the types, and the original graph is otherwise untouched)."""
    traced = onnx.ModelProto()
    traced.CopyFrom(model)
    present = {o.name for o in traced.graph.output}
    for _, _, name in _node_outputs(traced.graph):
        if name not in present:
            traced.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return traced


def build_trace(
    model: onnx.ModelProto,
    values: Mapping[str, object],
    *,
    keep_tensors: bool = True,
) -> Trace:
    """The trace of one run of ``model`` given every value it produced (and its inputs)."""
    entries: list[TraceEntry] = []
    for index, node, name in _node_outputs(model.graph):
        value = values.get(name)
        where = {"node": index, "op_type": node.op_type, "output": name}
        if value is None:
            raise InvalidModelError("traced run did not return a node output", **where)
        if not isinstance(value, np.ndarray):
            raise InvalidModelError(
                "node output is not a tensor; tracing supports tensors only (no sequences or maps)",
                got=type(value).__name__,
                **where,
            )
        try:
            digest = tensor_digest(value)
        except InvalidTensorError as exc:
            raise InvalidModelError(
                "node output has a dtype tensor digests do not cover", dtype=value.dtype, **where
            ) from exc
        entries.append(TraceEntry(index, node.op_type, node.name, tuple(node.input), name, digest))
    tensors = None
    if keep_tensors:
        tensors = {k: v for k, v in values.items() if isinstance(v, np.ndarray)}
    return Trace(tuple(entries), tensors)
