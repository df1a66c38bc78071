"""Tolerance comparison: per-operator floating-point error bounds instead of one global epsilon.

``docs/verification.md`` ("Comparison") states the model; this module computes it.

Every ONNX operator falls in one class (:func:`op_class`):

- **exact**: one correctly rounded IEEE 754 operation per element (``Add``, ``Mul``, ``Div``,
  ``Relu``, ``Max``, ``Cast``...) or pure data movement and comparison. The result does not
  depend on threads or hardware: bound 0.
- **reduction**: a sum of K products (``MatMul``, ``Gemm``, ``Conv``, ``ReduceSum``,
  ``Softmax``...). Summed in any order in floating point, each result is within
  ``γ_K · Σ|terms|`` of the exact sum, ``γ_K = K·u / (1 − K·u)`` (Higham, *Accuracy and
  Stability of Numerical Algorithms*, 2nd ed., §3.1, Lemma 3.1 and eq. (3.5)), so two results
  differ by at most ``2·γ_K · Σ|terms|``. Normalising operators (``Softmax``,
  ``LayerNormalization``...) also evaluate an exponential or a square root, so they add the
  transcendental bound.
- **transcendental**: libm functions (``Exp``, ``Tanh``, ``Erf``...), not correctly rounded;
  implementations stay within 4 ulp of the exact value, so two differ by at most 8 ulp
  (``16·u`` relative).
- **unknown**: everything else, bound 0, so an operator we have not analysed never hides a
  difference.

Two uses:

- :func:`output_bounds` bounds a whole model's outputs (quorum and spot votes, watchers) from
  static shapes: the first-order sum of the per-operator relative bounds.
- :func:`referee_tolerance` bounds one operator's output from its actual inputs (the dispute
  referee): ``2·γ_K · op(|inputs|)`` evaluated in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from veriml.core.errors import ExecutionError, FormatError, InvalidModelError

__all__ = [
    "UNIT_ROUNDOFF",
    "OpClass",
    "OutputBounds",
    "gamma",
    "op_class",
    "output_bounds",
    "outputs_agree",
    "reduction_length",
    "referee_tolerance",
    "tensors_agree",
    "within_tolerance",
]

Array = npt.NDArray[Any]
OpClass = Literal["exact", "reduction", "transcendental", "unknown"]
Shapes = Mapping[str, Sequence[int | None] | None]

UNIT_ROUNDOFF: Final[Mapping[str, float]] = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}
UNKNOWN_DIM: Final = 4096
"""What an unknown (symbolic) dimension counts as in a static reduction length."""
TRANSCENDENTAL_ULPS: Final = 4
"""How far from the exact value a libm function may be; two of them differ by twice this."""

_EXACT: Final = frozenset(
    {
        # Correctly rounded arithmetic, one operation per element (IEEE 754 §5.4).
        "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Reciprocal", "Relu", "LeakyRelu", "PRelu",
        "Max", "Min", "Clip", "Where", "Cast", "CastLike", "Floor", "Ceil", "Round", "Sign",
        "Mod", "BitShift", "Dropout", "Identity",
        # Comparisons and logic.
        "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor",
        "IsNaN", "IsInf", "ArgMax", "ArgMin", "ReduceMax", "ReduceMin", "MaxPool",
        "GlobalMaxPool", "TopK",
        # Data movement.
        "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice",
        "Gather", "GatherElements", "GatherND", "Scatter", "ScatterElements", "ScatterND",
        "Expand", "Tile", "Pad", "Shape", "Size", "Constant", "ConstantOfShape", "Range",
        "DepthToSpace", "SpaceToDepth", "OneHot", "NonZero", "Trilu", "ReverseSequence",
        "Compress", "EyeLike",
    }
)  # fmt: skip
_LINEAR: Final = frozenset(
    {
        # Sums of products of input elements: op(|inputs|) is exactly Σ|terms|.
        "MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "ReduceSum", "ReduceMean",
        "ReduceL1", "ReduceSumSquare", "AveragePool", "GlobalAveragePool", "Sum", "Mean",
    }
)  # fmt: skip
_NORMALISING: Final = frozenset(
    {
        # A reduction followed by exp/log/sqrt and a division: scale-free results.
        "Softmax", "LogSoftmax", "LayerNormalization", "BatchNormalization",
        "InstanceNormalization", "LpNormalization", "ReduceL2", "ReduceLogSumExp", "LpPool",
        "GlobalLpPool",
    }
)  # fmt: skip
_TRANSCENDENTAL: Final = frozenset(
    {
        "Exp", "Log", "Tanh", "Sigmoid", "Erf", "Gelu", "Sqrt", "Pow", "Sin", "Cos", "Tan",
        "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Softplus",
        "Softsign", "Elu", "Selu", "Celu", "Mish", "HardSigmoid", "HardSwish", "ThresholdedRelu",
    }
)  # fmt: skip
_DEFAULT_DOMAINS: Final = frozenset({"", "ai.onnx"})


def op_class(op_type: str, domain: str = "") -> OpClass:
    """The error class of an ONNX operator (default domain only; others are ``unknown``).

    >>> op_class("MatMul"), op_class("Relu"), op_class("Tanh"), op_class("MyOp")
    ('reduction', 'exact', 'transcendental', 'unknown')
    """
    if domain not in _DEFAULT_DOMAINS:
        return "unknown"
    if op_type in _EXACT:
        return "exact"
    if op_type in _LINEAR or op_type in _NORMALISING:
        return "reduction"
    if op_type in _TRANSCENDENTAL:
        return "transcendental"
    return "unknown"


def gamma(k: int, u: float) -> float:
    """Higham's ``γ_K = K·u / (1 − K·u)``; infinite when ``K·u >= 1`` (no bound exists)."""
    ku = k * u
    return math.inf if ku >= 1 else ku / (1 - ku)


def _unit_roundoff(dtype: str) -> float:
    try:
        return UNIT_ROUNDOFF[dtype]
    except KeyError:
        raise FormatError(
            "no unit roundoff for this dtype", dtype=dtype, known="|".join(UNIT_ROUNDOFF)
        ) from None


# Reduction lengths -------------------------------------------------------------------------


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _prod(values: Sequence[int]) -> int:
    return math.prod(max(v, 1) for v in values)


class _Shapes:
    """Static dims by name; an unknown dim counts as :data:`UNKNOWN_DIM`."""

    def __init__(self, shapes: Shapes, constants: Mapping[str, Array]) -> None:
        self.shapes, self.constants = shapes, constants

    def rank(self, name: str) -> int | None:
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)

    def dim(self, name: str, axis: int) -> int:
        shape = self.shapes.get(name)
        if shape is None or not -len(shape) <= axis < len(shape):
            return UNKNOWN_DIM
        value = shape[axis]
        return UNKNOWN_DIM if value is None else value

    def dims(self, name: str, axes: Sequence[int] | None = None) -> int:
        """The product of the dims at ``axes`` (all when None); unknown rank: one unknown dim."""
        rank = self.rank(name)
        if rank is None:
            return UNKNOWN_DIM
        chosen = range(rank) if axes is None else axes
        return _prod([self.dim(name, a) for a in chosen])

    def axes_input(self, node: onnx.NodeProto, opset: int, since: int) -> list[int] | None:
        """A Reduce* node's axes: the attribute before opset ``since``, else the 2nd input."""
        if opset < since:
            axes = _attr(node, "axes", None)
            return None if axes is None else list(axes)
        if len(node.input) < 2 or not node.input[1]:
            return None
        value = self.constants.get(node.input[1])
        return None if value is None else [int(a) for a in value.reshape(-1)]


_AXES_AS_INPUT: Final[Mapping[str, int]] = {
    "ReduceSum": 13,
    "ReduceMean": 18,
    "ReduceL1": 18,
    "ReduceL2": 18,
    "ReduceSumSquare": 18,
    "ReduceLogSumExp": 18,
}


def reduction_length(
    node: onnx.NodeProto, shapes: Shapes, opset: int, constants: Mapping[str, Array] | None = None
) -> int:
    """K for a reduction operator: how many terms (and extra roundings) one result sums.

    ``shapes`` maps tensor names to dims (None for an unknown dim or rank); ``constants`` holds
    small integer tensors such as a ``ReduceSum`` node's ``axes`` input.
    """
    s = _Shapes(shapes, constants or {})
    op, inputs = node.op_type, list(node.input)
    has = [bool(name) for name in inputs]
    if op == "MatMul":
        return s.dim(inputs[0], -1)
    if op == "Gemm":
        k = s.dim(inputs[0], 0 if _attr(node, "transA", 0) else 1)
        return k + (3 if len(has) > 2 and has[2] else 1)  # alpha, beta·C and the addition
    if op in ("Conv", "ConvTranspose"):
        # Conv weights are [M, C/group, k...]; ConvTranspose weights [C, M/group, k...].
        bias = 1 if len(has) > 2 and has[2] else 0
        rank = s.rank(inputs[1])
        if rank is None:
            return UNKNOWN_DIM + bias
        spatial = _prod([s.dim(inputs[1], a) for a in range(2, rank)])
        if op == "Conv":
            return s.dim(inputs[1], 1) * spatial + bias
        return max(s.dim(inputs[1], 0) // int(_attr(node, "group", 1)), 1) * spatial + bias
    if op == "Einsum":
        return _einsum_length(str(_attr(node, "equation", b"").decode()), inputs, s)
    if op in _AXES_AS_INPUT:
        axes = s.axes_input(node, opset, _AXES_AS_INPUT[op])
        if axes is None and _attr(node, "noop_with_empty_axes", 0):
            return 1
        extra = 0 if op in ("ReduceSum", "ReduceL1", "ReduceSumSquare") else 2
        return s.dims(inputs[0], axes) + extra
    if op in ("AveragePool", "LpPool"):
        return _prod(list(_attr(node, "kernel_shape", []))) + 2
    if op in ("GlobalAveragePool", "GlobalLpPool"):
        rank = s.rank(inputs[0])
        return (UNKNOWN_DIM if rank is None else s.dims(inputs[0], range(2, rank))) + 2
    if op in ("Softmax", "LogSoftmax"):
        if opset >= 13:
            return s.dim(inputs[0], int(_attr(node, "axis", -1))) + 2
        axis, rank = int(_attr(node, "axis", 1)), s.rank(inputs[0])
        if rank is None:
            return UNKNOWN_DIM + 2
        return s.dims(inputs[0], range(axis % rank, rank)) + 2
    if op == "LayerNormalization":
        axis, rank = int(_attr(node, "axis", -1)), s.rank(inputs[0])
        n = UNKNOWN_DIM if rank is None else s.dims(inputs[0], range(axis % rank, rank))
        return 2 * n + 6  # mean, variance, then subtract, add eps, sqrt, divide, scale, shift
    if op == "InstanceNormalization":
        rank = s.rank(inputs[0])
        n = UNKNOWN_DIM if rank is None else s.dims(inputs[0], range(2, rank))
        return 2 * n + 6
    if op == "BatchNormalization":
        return 6  # inference form: subtract, add eps, sqrt, divide, scale, shift
    if op == "LpNormalization":
        return s.dim(inputs[0], int(_attr(node, "axis", -1))) + 2
    if op in ("Sum", "Mean"):
        return len(inputs) + (1 if op == "Mean" else 0)
    raise FormatError("not a reduction operator", op_type=op)


def _einsum_length(equation: str, inputs: Sequence[str], s: _Shapes) -> int:
    """Product of the contracted (summed) index sizes, plus one rounding per extra operand."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if not arrow:
        letters = "".join(t.replace("...", "") for t in terms)
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    sizes: dict[str, int] = {}
    for term, name in zip(terms, inputs, strict=False):
        head, ellipsis, tail = term.partition("...")
        for position, letter in enumerate(head):
            sizes[letter] = max(sizes.get(letter, 1), s.dim(name, position))
        if ellipsis:
            for position, letter in enumerate(reversed(tail)):
                sizes[letter] = max(sizes.get(letter, 1), s.dim(name, -1 - position))
    contracted = [size for letter, size in sizes.items() if letter not in rhs]
    return _prod(contracted) + max(len(terms) - 1, 0)


# Whole-model bounds --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutputBounds:
    """Relative tolerance for every output of one model; the absolute part is derived per pair
    of tensors as ``rtol · max(|a|, |b|)`` over the whole tensor (a cancellation guard)."""

    rtol: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.rtol) or self.rtol < 0:
            raise FormatError("output bounds need a finite rtol >= 0", rtol=self.rtol)


def _opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in _DEFAULT_DOMAINS:
            return int(entry.version)
    raise InvalidModelError("model imports no default-domain opset")


_SMALL_CONSTANT: Final = 64


def _external(tensor: onnx.TensorProto) -> bool:
    return bool(tensor.data_location == onnx.TensorProto.EXTERNAL)


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its large initializers replaced by typed graph inputs: shape inference
    needs their shapes, not their values, and copying a model's weights would cost its size."""
    skeleton = onnx.ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph, source = skeleton.graph, model.graph
    graph.node.extend(source.node)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    declared = {v.name for v in source.input}
    graph.input.extend(source.input)
    for init in source.initializer:
        if math.prod(init.dims) <= _SMALL_CONSTANT and not _external(init):
            graph.initializer.append(init)
        elif init.name not in declared:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    return skeleton


def _static_shapes(
    model: onnx.ModelProto,
) -> tuple[dict[str, list[int | None] | None], dict[str, Array]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(_skeleton(model))
    except (onnx.shape_inference.InferenceError, ValueError):
        inferred = model  # shape inference is best effort: unknown dims count as UNKNOWN_DIM
    graph = inferred.graph
    shapes: dict[str, list[int | None] | None] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if not tensor.HasField("shape"):
            shapes.setdefault(info.name, None)
            continue
        shapes[info.name] = [
            d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim
        ]
    constants: dict[str, Array] = {}
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
        small = math.prod(init.dims) <= _SMALL_CONSTANT and not _external(init)
        if small and init.data_type == onnx.TensorProto.INT64:
            constants[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = _attr(node, "value", None)
            if isinstance(value, onnx.TensorProto) and value.data_type == onnx.TensorProto.INT64:
                constants[node.output[0]] = numpy_helper.to_array(value)
    return shapes, constants


def output_bounds(model: onnx.ModelProto, dtype: str = "float32") -> OutputBounds:
    """The relative tolerance on ``model``'s outputs: the sum over its nodes of ``2·γ_K`` per
    reduction (plus ``16·u`` for normalising ones) and ``16·u`` per transcendental, with K from
    static shapes (``onnx.shape_inference``; unknown dims count as 4096).

    It is a first-order bound assuming each operator's condition number is near 1: honest runs
    of well-conditioned float32 models stay far below it, a float16 downgrade far above.
    Raises :class:`FormatError` when no finite bound exists (``K·u >= 1``).
    """
    u = _unit_roundoff(dtype)
    opset = _opset(model)
    shapes, constants = _static_shapes(model)
    transcendental = 2 * TRANSCENDENTAL_ULPS * 2 * u
    rtol = 0.0
    for node in model.graph.node:
        kind = op_class(node.op_type, node.domain)
        if kind == "transcendental":
            rtol += transcendental
        elif kind == "reduction":
            k = reduction_length(node, shapes, opset, constants)
            rtol += 2 * gamma(k, u) + (transcendental if node.op_type in _NORMALISING else 0.0)
    if not math.isfinite(rtol) or rtol >= 1:
        raise FormatError(
            "tolerance mode cannot bound this model's outputs", dtype=dtype, rtol=rtol
        )
    return OutputBounds(rtol)


# Comparison ----------------------------------------------------------------------------------


def _special_values_match(a: Array, b: Array) -> bool:
    """NaN only matches NaN at the same place; infinities must be equal."""
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return False
    inf_a, inf_b = np.isinf(a), np.isinf(b)
    return bool(np.array_equal(inf_a, inf_b) and np.array_equal(a[inf_a], b[inf_b]))


def tensors_agree(a: Array, b: Array, bounds: OutputBounds) -> bool:
    """Whether two output tensors agree: same dtype and shape, integers and booleans equal, NaN
    and infinities at the same places, and every finite pair within ``atol + rtol·max(|a|, |b|)``
    where ``atol = rtol ·`` the largest such magnitude in the tensor."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if not np.issubdtype(a.dtype, np.floating):
        return bool(np.array_equal(a, b))
    if not _special_values_match(a, b):
        return False
    finite = np.isfinite(a)
    x, y = a[finite].astype(np.float64), b[finite].astype(np.float64)
    if x.size == 0:
        return True
    magnitude = np.maximum(np.abs(x), np.abs(y))
    atol = bounds.rtol * float(magnitude.max())
    return bool(np.all(np.abs(x - y) <= atol + bounds.rtol * magnitude))


def outputs_agree(a: Mapping[str, Array], b: Mapping[str, Array], bounds: OutputBounds) -> bool:
    """Whether two answers' outputs have the same names and every pair of tensors agrees."""
    return set(a) == set(b) and all(tensors_agree(a[name], b[name], bounds) for name in a)


def within_tolerance(value: Array, reference: Array, tolerance: Array) -> bool:
    """Whether ``value`` is the ``reference`` up to a per-element ``tolerance`` (same dtype and
    shape; NaN and infinities exactly where the reference has them)."""
    if value.dtype != reference.dtype or value.shape != reference.shape:
        return False
    if not np.issubdtype(reference.dtype, np.floating):
        return bool(np.array_equal(value, reference))
    if not _special_values_match(value, reference):
        return False
    finite = np.isfinite(reference)
    diff = np.abs(value[finite].astype(np.float64) - reference[finite].astype(np.float64))
    return bool(np.all(diff <= np.broadcast_to(tolerance, reference.shape)[finite]))


# Referee bounds ------------------------------------------------------------------------------


def _on_magnitudes(
    node: onnx.NodeProto, inputs: Mapping[str, Array], output_index: int, opset: int
) -> Array:
    """The node evaluated in float64 on the absolute values of its float inputs (and of Gemm's
    alpha and beta): for a sum of products, every result is then Σ|terms|."""
    from onnx.reference import ReferenceEvaluator

    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for attribute in copy.attribute:
        if copy.op_type == "Gemm" and attribute.name in ("alpha", "beta"):
            attribute.f = abs(attribute.f)
    feeds: dict[str, Array] = {}
    infos = []
    for name in dict.fromkeys(n for n in node.input if n):
        if name not in inputs:
            raise FormatError("the referee bound needs every input of the node", input=name)
        value = np.asarray(inputs[name])
        if np.issubdtype(value.dtype, np.floating):
            value = np.abs(value.astype(np.float64))
        feeds[name] = value
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        infos.append(helper.make_tensor_value_info(name, elem, list(value.shape)))
    outputs = [onnx.ValueInfoProto(name=o) for o in node.output if o]
    graph = helper.make_graph([copy], "magnitudes", infos, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as exc:  # the reference runtime raises arbitrary Python errors
        raise ExecutionError(
            "cannot evaluate the operator on magnitudes",
            op_type=node.op_type,
            reason=str(exc)[:300],
        ) from exc
    values: list[Any] = list(results)
    return np.asarray(values[output_index], dtype=np.float64)


def referee_tolerance(
    node: onnx.NodeProto,
    inputs: Mapping[str, Array],
    reference: Array,
    output_index: int = 0,
    *,
    opset: int = 17,
) -> Array:
    """Per-element tolerance (float64, the reference's shape) for output ``output_index`` of
    ``node`` given its actual ``inputs`` (initializers included) and the referee's result.

    - exact and unknown operators, and non-float outputs: 0;
    - sums of products (MatMul, Gemm, Conv, ReduceSum...): ``2·γ_K · op(|inputs|)``, the
      Higham bound with the sum of absolute terms computed in float64;
    - normalising reductions (Softmax, LayerNormalization...): ``(2·γ_K + 16·u) · (|ref| +
      max|ref|)``, their results being scale-free;
    - transcendental: ``8 ulp`` of the reference, plus the dtype's smallest normal number.
    """
    reference = np.asarray(reference)
    zero = np.zeros(reference.shape, dtype=np.float64)
    kind = op_class(node.op_type, node.domain)
    if kind in ("exact", "unknown") or not np.issubdtype(reference.dtype, np.floating):
        return zero
    u = _unit_roundoff(str(reference.dtype))
    tiny = float(np.finfo(reference.dtype).tiny)
    magnitude = np.abs(reference.astype(np.float64))
    transcendental = 2 * TRANSCENDENTAL_ULPS * 2 * u
    if kind == "transcendental":
        ulp = np.spacing(np.abs(reference)).astype(np.float64)
        return 2 * TRANSCENDENTAL_ULPS * ulp + tiny
    shapes = {name: list(np.asarray(value).shape) for name, value in inputs.items()}
    constants = {
        name: np.asarray(value)
        for name, value in inputs.items()
        if np.asarray(value).dtype == np.int64 and np.asarray(value).size <= 64
    }
    k = reduction_length(node, shapes, opset, constants)
    if node.op_type in _NORMALISING:
        top = float(magnitude[np.isfinite(magnitude)].max(initial=0.0))
        return (2 * gamma(k, u) + transcendental) * (magnitude + top) + tiny
    terms = _on_magnitudes(node, inputs, output_index, opset)
    return np.broadcast_to(2 * gamma(k, u) * terms, reference.shape).astype(np.float64)
