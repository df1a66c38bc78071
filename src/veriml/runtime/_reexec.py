"""Single-operator re-execution: rebuild one node of a graph as a model of its own and run it
on recorded inputs. The dispute referee (DESIGN.md, "Dispute") relies on this: once bisection
over two traces finds the first node whose inputs agree and whose output differs, only that
node is re-run.

The one-node model keeps the original opsets, IR version, model-local functions, the node's
attributes, and the initializers it reads (as initializers, so the engine treats constant
weights exactly as in the full graph). Other inputs, including outer-scope values a subgraph
attribute (If/Loop/Scan) reads, become graph inputs fed from the recorded tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper

from veriml.core.errors import Check, ExecutionError, InvalidInputError, ReexecutionMismatchError
from veriml.core.tensors import tensor_digest
from veriml.runtime._profile import ORT_ERRORS, Profile, create_session
from veriml.runtime._trace import Trace

__all__ = ["Engine", "check_node", "node_model", "reexecute_node"]

Engine = Literal["onnxruntime", "reference"]
Array = npt.NDArray[Any]


def _graph_free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads that it does not define: its outer-scope dependencies."""
    defined = {v.name for v in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        used.update(_attribute_free_names(node))
        defined.update(n for n in node.output if n)
    used.update(o.name for o in graph.output)
    return used - defined


def _attribute_free_names(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for attr in node.attribute:
        graphs: Iterable[onnx.GraphProto] = [attr.g] if attr.HasField("g") else list(attr.graphs)
        for g in graphs:
            names |= _graph_free_names(g)
    return names


def node_model(
    model: onnx.ModelProto, node_index: int, values: Mapping[str, Array]
) -> tuple[onnx.ModelProto, dict[str, Array]]:
    """The one-node model for ``model.graph.node[node_index]`` and the feeds to run it with.

    ``values`` holds recorded tensors by name; it must cover every input of the node that is
    not an initializer of ``model``.
    """
    graph = model.graph
    if not 0 <= node_index < len(graph.node):
        raise InvalidInputError("no such node in the graph", node=node_index, nodes=len(graph.node))
    node = graph.node[node_index]
    initializers = {init.name: init for init in graph.initializer}
    needed = [n for n in node.input if n]
    needed += sorted(_attribute_free_names(node) - set(needed))
    inputs: list[onnx.ValueInfoProto] = []
    inits: list[onnx.TensorProto] = []
    feeds: dict[str, Array] = {}
    for name in dict.fromkeys(needed):
        if name in initializers:
            inits.append(initializers[name])
            continue
        value = values.get(name)
        if not isinstance(value, np.ndarray):
            raise InvalidInputError(
                "re-execution needs a recorded tensor that is missing",
                node=node_index,
                op_type=node.op_type,
                input=name,
            )
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        inputs.append(helper.make_tensor_value_info(name, elem, list(value.shape)))
        feeds[name] = value
    outputs = [onnx.ValueInfoProto(name=o) for o in node.output if o]
    single = helper.make_graph([node], f"node{node_index}", inputs, outputs, inits)
    rebuilt = helper.make_model(
        single,
        opset_imports=list(model.opset_import),
        ir_version=model.ir_version,
        functions=list(model.functions),
    )
    return rebuilt, feeds


def reexecute_node(
    model: onnx.ModelProto,
    node_index: int,
    values: Mapping[str, Array],
    *,
    engine: Engine = "onnxruntime",
    profile: Profile | None = None,
) -> dict[str, Array]:
    """Run node ``node_index`` alone on recorded ``values``; return its outputs by name.

    ``engine="onnxruntime"`` uses the verifiable profile and is bitwise comparable with a
    traced run under the same profile; ``engine="reference"`` uses ONNX's reference semantics
    (``onnx.reference.ReferenceEvaluator``), the independent arbiter across hardware.
    """
    single, feeds = node_model(model, node_index, values)
    names = [o.name for o in single.graph.output]
    if engine == "reference":
        from onnx.reference import ReferenceEvaluator

        try:
            results = ReferenceEvaluator(single).run(None, feeds)
        except Exception as exc:  # the reference runtime raises arbitrary Python errors
            raise ExecutionError(
                "reference evaluator failed on the node", node=node_index, reason=str(exc)[:300]
            ) from exc
    else:
        session = create_session(
            single.SerializeToString(), profile or Profile(), what=f"node {node_index}"
        )
        try:
            results = session.run(None, feeds)
        except ORT_ERRORS as exc:
            raise ExecutionError(
                "onnxruntime failed on the node", node=node_index, reason=str(exc)[:300]
            ) from exc
    return {name: np.asarray(value) for name, value in zip(names, results, strict=True)}


def check_node(
    model: onnx.ModelProto,
    trace: Trace,
    node_index: int,
    *,
    engine: Engine = "onnxruntime",
    profile: Profile | None = None,
) -> None:
    """Re-execute one traced node and require bitwise equality with every recorded output.

    Raises :class:`ReexecutionMismatchError` (``check="node"``) naming the node and output whose
    digest differs. The trace must keep its tensors.
    """
    if trace.tensors is None:
        raise InvalidInputError("single-node re-execution needs a trace that kept its tensors")
    recorded = trace.for_node(node_index)
    if not recorded:
        raise InvalidInputError("the trace has no outputs for this node", node=node_index)
    outputs = reexecute_node(model, node_index, trace.tensors, engine=engine, profile=profile)
    for entry in recorded:
        calculated = tensor_digest(outputs[entry.output])
        if calculated != entry.digest:
            raise ReexecutionMismatchError(
                "re-executed node output differs from the recorded one",
                check=Check.NODE,
                node=node_index,
                op_type=entry.op_type,
                output=entry.output,
                expected=entry.digest,
                calculated=calculated,
            )
