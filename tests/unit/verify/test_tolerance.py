"""Tolerance comparison: honest variation agrees, a precision downgrade does not."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from _verify_models import conv_model, fp16_weights, runner
from hypothesis import given
from hypothesis.extra import numpy as hnp
from onnx import helper

from veriml.core.errors import FormatError
from veriml.models.examples import build_mlp
from veriml.verify.tolerance import (
    UNIT_ROUNDOFF,
    OutputBounds,
    gamma,
    op_class,
    output_bounds,
    outputs_agree,
    reduction_length,
    referee_tolerance,
    tensors_agree,
    within_tolerance,
)

U32 = UNIT_ROUNDOFF["float32"]


@pytest.mark.parametrize(
    ("ops", "kind"),
    [
        (["Add", "Sub", "Mul", "Div", "Relu", "Max", "Min", "Clip", "Where", "Cast"], "exact"),
        (["Reshape", "Transpose", "Concat", "Gather", "Slice", "Equal", "Less"], "exact"),
        (["MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "ReduceSum"], "reduction"),
        (["ReduceMean", "AveragePool", "GlobalAveragePool", "Softmax", "LogSoftmax"], "reduction"),
        (["LayerNormalization", "BatchNormalization", "InstanceNormalization"], "reduction"),
        (["LpNormalization"], "reduction"),
        (
            ["Exp", "Log", "Tanh", "Sigmoid", "Erf", "Gelu", "Sqrt", "Pow", "Sin", "Cos"],
            "transcendental",
        ),
        (["Softplus"], "transcendental"),
        (["NonMaxSuppression", "If", "Loop", "MyCustomOp", ""], "unknown"),
    ],
)
def test_operator_classes(ops: list[str], kind: str) -> None:
    assert {op: op_class(op) for op in ops} == dict.fromkeys(ops, kind)


def test_operators_outside_the_default_domain_are_unknown() -> None:
    assert op_class("MatMul", "com.microsoft") == "unknown"
    assert op_class("MatMul", "ai.onnx") == "reduction"


def test_gamma_is_highams_and_has_no_bound_past_one() -> None:
    assert gamma(100, U32) == pytest.approx(100 * U32 / (1 - 100 * U32))
    assert gamma(1 << 24, U32) == math.inf
    assert gamma(0, U32) == 0


def test_reduction_lengths_follow_the_operator() -> None:
    shapes = {"a": [8, 300], "b": [300, 7], "x": [1, 3, 16, 16], "w": [8, 3, 5, 5]}
    assert reduction_length(helper.make_node("MatMul", ["a", "b"], ["c"]), shapes, 17) == 300
    gemm = helper.make_node("Gemm", ["b", "a", "bias"], ["c"], transA=1)
    assert reduction_length(gemm, shapes, 17) == 300 + 3
    conv = helper.make_node("Conv", ["x", "w"], ["c"])
    assert reduction_length(conv, shapes, 17) == 3 * 5 * 5
    summed = helper.make_node("ReduceSum", ["x", "axes"], ["c"])
    assert reduction_length(summed, shapes, 17, {"axes": np.array([2, 3])}) == 256
    assert reduction_length(summed, shapes, 17) == 3 * 16 * 16  # unknown axes: all of them
    einsum = helper.make_node("Einsum", ["a", "b"], ["c"], equation="ij,jk->ik")
    assert reduction_length(einsum, shapes, 17) == 300 + 1
    softmax = helper.make_node("Softmax", ["a"], ["c"], axis=1)
    assert reduction_length(softmax, shapes, 17) == 300 + 2
    unknown = helper.make_node("MatMul", ["q", "b"], ["c"])
    assert reduction_length(unknown, {"q": [None, None]}, 17) == 4096


def test_output_bounds_sum_the_operators() -> None:
    model = build_mlp((16, 32, 3))  # Gemm(16) Relu Gemm(32) Softmax(3)
    expected = 2 * gamma(16 + 3, U32) + 2 * gamma(32 + 3, U32)
    expected += 2 * gamma(3 + 2, U32) + 16 * U32  # Softmax: reduction plus exponential
    assert output_bounds(model).rtol == pytest.approx(expected)
    assert output_bounds(build_mlp((64, 64, 64, 3))).rtol > output_bounds(model).rtol


def test_float16_bounds_are_coarser_and_can_be_unbounded() -> None:
    model = build_mlp((16, 32, 3))
    assert output_bounds(model, "float16").rtol > 1000 * output_bounds(model).rtol
    with pytest.raises(FormatError):
        output_bounds(build_mlp((4096, 3)), "float16")  # K·u > 1: no bound exists
    with pytest.raises(FormatError):
        output_bounds(model, "int8")


MODELS = {
    "mlp-small": lambda: build_mlp((16, 32, 3), seed=1),
    "mlp-wide": lambda: build_mlp((128, 256, 256, 10), seed=2),
    "mlp-logits": lambda: build_mlp((64, 128, 10), seed=3, softmax=False),
    "conv": lambda: conv_model(seed=4),
}


def _inputs(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    dims = [d.dim_value or 8 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal(dims).astype(np.float32)
    return {model.graph.input[0].name: x}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_thread_counts_do_not_change_the_tolerance_verdict(name: str) -> None:
    model = MODELS[name]()
    bounds = output_bounds(model)
    inputs = _inputs(model, seed=7)
    results = [runner(model, threads).outputs(inputs) for threads in (1, 2, 4)]
    for other in results[1:]:
        assert outputs_agree(results[0], other, bounds)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_float16_weight_downgrade_is_caught_in_tolerance_mode(name: str) -> None:
    model = MODELS[name]()
    bounds = output_bounds(model)
    inputs = _inputs(model, seed=8)
    honest = runner(model).outputs(inputs)
    cheap = runner(fp16_weights(model)).outputs(inputs)
    assert not outputs_agree(honest, cheap, bounds)


def test_an_honest_reordering_of_the_outputs_reductions_agrees() -> None:
    # What another machine might compute: the same Gemm summed in another order.
    model = build_mlp((256, 10), seed=5, softmax=False)
    inputs = _inputs(model, seed=9)
    honest = runner(model).outputs(inputs)["logits"]
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    b = onnx.numpy_helper.to_array(model.graph.initializer[1])
    x = inputs["x"]
    reordered = np.zeros_like(honest)
    for k in reversed(range(w.shape[0])):  # sequential, backwards
        reordered += np.outer(x[:, k], w[k]).astype(np.float32)
    reordered += b
    assert not np.array_equal(reordered, honest)
    assert tensors_agree(honest, reordered, output_bounds(model))


def test_tensor_comparison_rules() -> None:
    bounds = OutputBounds(1e-6)
    a = np.array([1.0, np.nan, np.inf, -np.inf, 0.0], dtype=np.float32)
    assert tensors_agree(a, a.copy(), bounds)
    assert not tensors_agree(a, np.array([1.0, 0.0, np.inf, -np.inf, 0.0], np.float32), bounds)
    assert not tensors_agree(a, np.array([1.0, np.nan, -np.inf, -np.inf, 0.0], np.float32), bounds)
    assert not tensors_agree(a, a.astype(np.float64), bounds)
    assert not tensors_agree(a, a[:4], bounds)
    assert tensors_agree(np.array([1, 2]), np.array([1, 2]), bounds)
    assert not tensors_agree(np.array([1, 2]), np.array([1, 3]), OutputBounds(0.5))
    # The absolute part scales with the tensor's largest value: a cancellation guard.
    big = np.array([1000.0, 1e-3], np.float32)
    assert tensors_agree(big, np.array([1000.0, 1e-3 + 5e-4], np.float32), bounds)
    assert not tensors_agree(big, np.array([1000.0, 1e-3 + 5e-3], np.float32), bounds)
    assert not outputs_agree({"y": a}, {"z": a}, bounds)
    with pytest.raises(FormatError):
        OutputBounds(math.inf)


@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=5)))
def test_a_tensor_always_agrees_with_itself(value: np.ndarray) -> None:
    assert tensors_agree(value, value.copy(), OutputBounds(0.0))
    assert within_tolerance(value, value.copy(), np.zeros(value.shape))


def test_matmul_summation_orders_stay_within_the_referee_bound() -> None:
    rng = np.random.default_rng(11)
    a = rng.standard_normal((16, 4096)).astype(np.float32)
    b = rng.standard_normal((4096, 8)).astype(np.float32)
    node = helper.make_node("MatMul", ["a", "b"], ["c"])
    pairwise = a @ b  # numpy/BLAS blocked summation
    sequential = np.zeros((16, 8), np.float32)
    for k in range(a.shape[1]):
        sequential += np.outer(a[:, k], b[k]).astype(np.float32)
    assert not np.array_equal(pairwise, sequential)
    tolerance = referee_tolerance(node, {"a": a, "b": b}, pairwise, 0)
    exact = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    np.testing.assert_allclose(tolerance, 2 * gamma(4096, U32) * exact)
    assert within_tolerance(sequential, pairwise, tolerance)


@pytest.mark.parametrize("k", [16, 64, 256])
def test_a_float16_weight_is_outside_the_referee_bound_for_short_reductions(k: int) -> None:
    # The worst-case bound grows like K·u, a float16 weight's error like sqrt(K)·2^-12: on
    # random data they cross near K = 500 (docs/verification.md, "Comparison").
    rng = np.random.default_rng(k)
    a = rng.standard_normal((16, k)).astype(np.float32)
    b = rng.standard_normal((k, 8)).astype(np.float32)
    node = helper.make_node("MatMul", ["a", "b"], ["c"])
    reference = a @ b
    tolerance = referee_tolerance(node, {"a": a, "b": b}, reference, 0)
    assert not within_tolerance(a @ b.astype(np.float16).astype(np.float32), reference, tolerance)


def test_referee_bound_for_conv_uses_the_magnitude_convolution() -> None:
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    reference = runner_conv(node, x, w)
    tolerance = referee_tolerance(node, {"x": x, "w": w}, reference, 0)
    assert tolerance.shape == reference.shape
    # The centre element sums all 27 products: check it against a direct sum of |terms|.
    terms = np.abs(x[0, :, 3:6, 3:6].astype(np.float64) * w[1].astype(np.float64)).sum()
    assert tolerance[0, 1, 4, 4] == pytest.approx(2 * gamma(27, U32) * terms)


def runner_conv(node: onnx.NodeProto, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator

    graph = helper.make_graph(
        [node],
        "conv",
        [
            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x.shape)),
            helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, list(w.shape)),
        ],
        [onnx.ValueInfoProto(name="y")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return np.asarray(ReferenceEvaluator(model).run(None, {"x": x, "w": w})[0])


def test_referee_bound_for_reduce_sum_is_the_sum_of_magnitudes() -> None:
    x = np.random.default_rng(13).standard_normal((3, 50, 2)).astype(np.float32)
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)
    axes = np.array([1], np.int64)
    reference = x.sum(axis=1)
    tolerance = referee_tolerance(node, {"x": x, "axes": axes}, reference, 0, opset=17)
    expected = 2 * gamma(50, U32) * np.abs(x.astype(np.float64)).sum(axis=1)
    np.testing.assert_allclose(tolerance, expected)


def test_referee_bounds_of_the_other_classes() -> None:
    x = np.array([0.5, -2.0, 3.0], np.float32)
    assert not referee_tolerance(helper.make_node("Add", ["x", "x"], ["y"]), {"x": x}, x).any()
    assert not referee_tolerance(helper.make_node("Custom", ["x"], ["y"]), {"x": x}, x).any()
    tanh = np.tanh(x)
    tolerance = referee_tolerance(helper.make_node("Tanh", ["x"], ["y"]), {"x": x}, tanh)
    np.testing.assert_allclose(
        tolerance, 8 * np.spacing(np.abs(tanh)).astype(np.float64) + np.finfo(np.float32).tiny
    )
    softmax = np.exp(x) / np.exp(x).sum()
    node = helper.make_node("Softmax", ["x"], ["y"], axis=0)
    bound = referee_tolerance(node, {"x": x}, softmax.astype(np.float32))
    assert (bound > 0).all()
    assert (bound < 1e-5).all()
    ints = np.array([1, 2], np.int64)
    assert not referee_tolerance(helper.make_node("MatMul", ["a", "b"], ["c"]), {}, ints).any()
