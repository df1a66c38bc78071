"""Models no one here wrote, each run, traced and verified.

- scikit-learn pipelines trained on datasets scikit-learn ships (iris, digits), converted with
  skl2onnx (``zipmap=False`` so classifiers output tensors, not maps);
- node test models of the ONNX project: its own generators in ``onnx.backend.test.case.node``
  (the source of ``onnx/backend/test/data/node``, which this onnx wheel does not ship), and
  PyTorch-exported models that do ship as ``onnx/backend/test/data/pytorch-*/*/model.onnx``
  with ``test_data_set_0/*.pb`` inputs and expected outputs (lifted from opset 6 to 13 by
  ONNX's version converter, as onnxruntime runs opset 7 and up).

For each: the untraced outputs equal the traced ones bitwise, they agree with the expected
outputs the model's authors recorded, several single nodes re-execute bitwise, and the receipt
verifies with re-execution.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import pytest
from onnx import numpy_helper

from veriml.core.keys import SigningKey, generate_key
from veriml.models import ModelPackage
from veriml.runtime import check_node, run, runner_for
from veriml.verify import verify_receipt

ONNX_TEST_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"

# Node test cases by name, and the onnx.backend.test.case.node module that generates each.
NODE_CASES = {
    "test_conv_with_strides_padding": "conv",
    "test_matmul_3d": "matmul",
    "test_gemm_all_attributes": "gemm",
    "test_relu": "relu",
    "test_softmax_axis_1_expanded": "softmax",
    "test_lstm_defaults": "lstm",
    "test_gru_with_initial_bias": "gru",
    "test_reduce_sum_keepdims_random": "reducesum",
    "test_resize_upsample_scales_linear": "resize",
    "test_layer_normalization_4d_axis1_expanded": "layernormalization",
    "test_batchnorm_example": "batch_normalization",
}
PYTORCH_MODELS = [
    "pytorch-converted/test_Conv2d_groups",
    "pytorch-converted/test_BatchNorm2d_eval",
    "pytorch-converted/test_Linear",
    "pytorch-converted/test_MaxPool2d",
    "pytorch-converted/test_PixelShuffle",
    "pytorch-converted/test_AvgPool2d",
    "pytorch-operator/test_operator_addmm",
    "pytorch-operator/test_operator_convtranspose",
]


@dataclass(frozen=True)
class Case:
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    rtol: float = 1e-3
    atol: float = 1e-6


@pytest.fixture(scope="module")
def node_key() -> SigningKey:
    return generate_key("ed25519")


@pytest.fixture(scope="module")
def node_cases() -> dict[str, Case]:
    with warnings.catch_warnings():
        # The generators compute reference outputs with NumPy and warn on purpose-made edge
        # cases (overflowing casts); those are not our concern here.
        warnings.simplefilter("ignore")
        for module in sorted(set(NODE_CASES.values())):
            importlib.import_module(f"onnx.backend.test.case.node.{module}")
    from onnx.backend.test.case import node

    found: dict[str, Case] = {}
    for case in node._NodeTestCases:
        if case.name in NODE_CASES and case.name not in found:
            (inputs, outputs), *_ = case.data_sets
            model = case.model
            init = {i.name for i in model.graph.initializer}
            names = [v.name for v in model.graph.input if v.name not in init]
            found[case.name] = Case(
                model,
                dict(zip(names, (np.asarray(a) for a in inputs), strict=True)),
                {o.name: np.asarray(a) for o, a in zip(model.graph.output, outputs, strict=True)},
                rtol=case.rtol,
                atol=case.atol,
            )
    assert set(found) == set(NODE_CASES)
    return found


def _pb(path: Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def pytorch_case(rel: str) -> Case:
    folder = ONNX_TEST_DATA / rel
    # These were exported at opset 6, below what onnxruntime supports (7+): lift them with
    # ONNX's own version converter, then check against the outputs recorded at export time.
    model = onnx.version_converter.convert_version(onnx.load(folder / "model.onnx"), 13)
    data = folder / "test_data_set_0"
    init = {i.name for i in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in init]
    inputs = {n: _pb(data / f"input_{i}.pb") for i, n in enumerate(names)}
    expected = {o.name: _pb(data / f"output_{i}.pb") for i, o in enumerate(model.graph.output)}
    return Case(model, inputs, expected)


def _sklearn_iris() -> Case:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    model = to_onnx(pipe, x[:1], options={id(pipe): {"zipmap": False}}, target_opset=17)
    return Case(model, {"X": x[:10]}, {"label": pipe.predict(x[:10])})


def _sklearn_digits() -> Case:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    forest = RandomForestClassifier(n_estimators=5, max_depth=6, random_state=0).fit(x, y)
    model = to_onnx(forest, x[:1], options={id(forest): {"zipmap": False}}, target_opset=17)
    return Case(model, {"X": x[:20]}, {"label": forest.predict(x[:20])})


def _exercise(case: Case, tmp_path: Path, key: SigningKey) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save_model(case.model, folder / "model.onnx")
    package = ModelPackage.load(folder)

    result = run(package, case.inputs, key=key, trace=True, keep_tensors=True)
    plain = runner_for(package).outputs(case.inputs)

    # Traced and untraced runs agree bitwise.
    assert list(plain) == list(result.outputs)
    for name, array in plain.items():
        assert array.dtype == result.outputs[name].dtype
        assert array.tobytes() == result.outputs[name].tobytes(), name
    # The outputs are the ones the model's authors recorded.
    for name, expected in case.expected.items():
        got = result.outputs[name]
        if expected.dtype.kind in "iub":
            np.testing.assert_array_equal(got, expected.astype(got.dtype))
        else:
            np.testing.assert_allclose(got, expected, rtol=case.rtol, atol=max(case.atol, 1e-5))
    # Single operators re-execute bitwise: first, middle and last node.
    trace = result.trace
    assert trace is not None
    assert trace.size >= len(case.model.graph.node)
    count = len(case.model.graph.node)
    for index in sorted({0, count // 2, count - 1}):
        check_node(package.load_proto(), trace, index)
    # The receipt verifies, including a bitwise re-execution against the trace root.
    verified = verify_receipt(result.to_json(), node_key=key.public, model=package, reexecute=True)
    assert verified.reexecuted
    assert verified.predicate.trace == trace.commitment


@pytest.mark.parametrize("name", sorted(NODE_CASES))
def test_onnx_node_test_model(
    name: str, node_cases: dict[str, Case], tmp_path: Path, node_key: SigningKey
) -> None:
    _exercise(node_cases[name], tmp_path, node_key)


@pytest.mark.parametrize("rel", PYTORCH_MODELS)
def test_onnx_shipped_pytorch_model(rel: str, tmp_path: Path, node_key: SigningKey) -> None:
    _exercise(pytorch_case(rel), tmp_path, node_key)


@pytest.mark.parametrize("make", [_sklearn_iris, _sklearn_digits], ids=["iris", "digits"])
def test_scikit_learn_model(make: object, tmp_path: Path, node_key: SigningKey) -> None:
    _exercise(make(), tmp_path, node_key)  # type: ignore[operator]
