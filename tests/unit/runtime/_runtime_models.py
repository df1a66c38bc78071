"""Tiny models built with onnx.helper, shared by the runtime and verify tests.

Each factory returns ``(model, inputs)``; the models cover a fused-in-optimised-mode path
(Conv+BatchNormalization), several inputs with a shared symbolic dimension and mixed dtypes,
and a control-flow node whose subgraphs read an outer-scope value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from veriml.core.digest import Digest
from veriml.models.examples import build_mlp
from veriml.runtime import Runner

Model = tuple[onnx.ModelProto, dict[str, np.ndarray]]


def _model(graph: onnx.GraphProto, opset: int = 17) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def mlp_model() -> Model:
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    return build_mlp((16, 32, 3)), {"x": x}


def conv_bn_model() -> Model:
    rng = np.random.default_rng(2)
    c = 8
    arrays = {
        "W": rng.standard_normal((c, 3, 3, 3)).astype(np.float32),
        "B": rng.standard_normal(c).astype(np.float32),
        "scale": rng.standard_normal(c).astype(np.float32),
        "bias": rng.standard_normal(c).astype(np.float32),
        "mean": rng.standard_normal(c).astype(np.float32),
        "var": (rng.random(c) + 0.5).astype(np.float32),
        "W2": rng.standard_normal((c * 14 * 14, 10)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("MatMul", ["f", "W2"], ["m"]),
        helper.make_node("Softmax", ["m"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(a, n) for n, a in arrays.items()],
    )
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    return _model(graph), {"x": x}


def multi_io_model() -> Model:
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("ReduceSum", ["s", "axes"], ["total"], keepdims=0),
        helper.make_node("Cast", ["total"], ["as_int"], to=TensorProto.INT64),
        helper.make_node("Mul", ["as_int", "k"], ["scaled"]),
        helper.make_node("Tanh", ["s"], ["t"]),
    ]
    graph = helper.make_graph(
        nodes,
        "multi_io",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 5]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 5]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info("scaled", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("t", TensorProto.FLOAT, ["n", 5]),
        ],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")],
    )
    inputs = {
        "a": (rng.standard_normal((3, 5)) * 10).astype(np.float32),
        "b": rng.standard_normal((3, 5)).astype(np.float32),
        "k": np.array([7], dtype=np.int64),
    }
    return _model(graph), inputs


def if_model() -> Model:
    """``If`` whose branches read ``h``, a value of the outer graph (not a branch input)."""
    then_graph = helper.make_graph(
        [helper.make_node("Mul", ["h", "h"], ["then_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [2, 3])],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["else_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [2, 3])],
    )
    nodes = [
        helper.make_node("Exp", ["x"], ["h"]),
        helper.make_node("ReduceMean", ["x"], ["mean"], keepdims=0),
        helper.make_node("Greater", ["mean", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph),
    ]
    graph = helper.make_graph(
        nodes,
        "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")],
    )
    x = np.linspace(-1, 2, 6, dtype=np.float32).reshape(2, 3)
    return _model(graph), {"x": x}


MODELS: dict[str, Callable[[], Model]] = {
    "mlp": mlp_model,
    "conv_bn": conv_bn_model,
    "multi_io": multi_io_model,
    "if": if_model,
}


def runner_of(model: onnx.ModelProto, **kwargs: Any) -> Runner:
    return Runner(model, digest=Digest.of(model.SerializeToString()), **kwargs)
