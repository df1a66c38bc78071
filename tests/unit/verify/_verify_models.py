"""Models and trace surgery shared by the tolerance and dispute tests."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from veriml.core import Digest
from veriml.runtime import Profile, Runner, Trace, build_trace, reexecute_node

Array = np.ndarray[Any, Any]


def runner(model: onnx.ModelProto, threads: int = 1) -> Runner:
    return Runner(
        model,
        digest=Digest.of(model.SerializeToString()),
        profile=Profile(intra_op_threads=threads),
    )


def fp16_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every float32 weight rounded to float16 (the `fp16` cheat)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for init in copy.graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            value = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    return copy


def conv_model(seed: int = 0) -> onnx.ModelProto:
    """x[1,3,16,16] -> Conv -> Relu -> Conv -> GlobalAveragePool -> Flatten -> Gemm -> Softmax."""
    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        value = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        return numpy_helper.from_array(value, name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 5])],
        [
            weight("w1", 8, 3, 3, 3),
            weight("b1", 8),
            weight("w2", 16, 8, 3, 3),
            weight("w3", 16, 5),
            weight("b3", 5),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def propagate(
    model: onnx.ModelProto,
    values: Mapping[str, Array],
    node: int,
    change: Callable[[Array], Array],
    output: int = 0,
) -> Trace:
    """The trace of a run whose node ``node`` output number ``output`` was replaced by
    ``change(value)`` and whose later operators ran honestly on it (a consistent cheating
    trace)."""
    current = dict(values)
    out = model.graph.node[node].output[output]
    current[out] = change(current[out])
    for index in range(node + 1, len(model.graph.node)):
        current.update(reexecute_node(model, index, current))
    return build_trace(model, current)


def chain_model(layers: int, width: int = 16, seed: int = 0) -> onnx.ModelProto:
    """x[4, width] -> (MatMul -> Add -> Tanh) * layers: 3·layers operators whose signal
    survives to the end (no dead units), for bisection depth tests."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    current = "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        b = (rng.standard_normal(width) * 0.1).astype(np.float32)
        weights += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Tanh", [f"a{i}"], [f"t{i}"]),
        ]
        current = f"t{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, width])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
