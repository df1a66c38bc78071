"""Runs with signed receipts: what the receipt says, the result file, and session reuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from _runtime_models import Model, conv_bn_model, mlp_model, multi_io_model, runner_of
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from veriml.core.digest import Digest
from veriml.core.dsse import Statement
from veriml.core.errors import FormatError, InvalidInputError, InvalidModelError, KeyFileError
from veriml.core.keys import SigningKey, generate_key
from veriml.core.receipt import PREDICATE_TYPE, request_digest, sign_receipt
from veriml.core.tensors import tensor_digest
from veriml.models import ModelPackage
from veriml.models.examples import write_example_folder
from veriml.runtime import Profile, RunResult, canonical_request, run, runner_for


@pytest.fixture(scope="module")
def node_key() -> SigningKey:
    return generate_key("ed25519")


def affine_model() -> onnx.ModelProto:
    """y = 2x + 1, whose float32 results are exact on every machine."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["m"]),
            helper.make_node("Add", ["m", "one"], ["y"]),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_known_answer_output_digest(node_key: SigningKey) -> None:
    # y = 2 * [1, 2, 3] + 1 = [3, 5, 7] (float32). Reproduce the digest independently with:
    #   python3 -c "import hashlib,struct; print(hashlib.sha256(b'veriml-tensor/v1\nfloat32\n3\n'
    #     + struct.pack('<3f', 3, 5, 7)).hexdigest())"
    result = runner_of(affine_model()).run({"x": np.array([1, 2, 3], np.float32)}, key=node_key)
    statement = Statement.from_bytes(result.receipt.payload)
    assert [(s.name, s.digest.hex) for s in statement.subjects] == [
        ("y", "651a12fbd12d406ac23e2b3232013b4208cce05cff31289648c8a6e68f4ac116")
    ]


def test_receipt_signs_outputs_model_inputs_runtime_and_node(
    any_model: Model, node_key: SigningKey
) -> None:
    model, inputs = any_model
    runner = runner_of(model)
    result = runner.run(inputs, key=node_key, policy="spot:0.1", request_id="req-1")
    result.receipt.verify([node_key.public])
    statement = Statement.from_bytes(result.receipt.payload)
    assert statement.predicate_type == PREDICATE_TYPE
    assert {s.name: s.digest for s in statement.subjects} == {
        n: tensor_digest(a) for n, a in result.outputs.items()
    }
    p = result.predicate
    assert statement.predicate == p.to_json()
    assert p.model_digest == runner.digest
    assert p.inputs == {n: tensor_digest(a) for n, a in inputs.items()}
    assert p.request_id == "req-1"
    assert p.request_digest == request_digest(canonical_request(runner.digest, p.inputs, p.policy))
    assert p.node_id == node_key.key_id
    assert p.policy == "spot:0.1"
    assert p.runtime["graph_optimization_level"] == "ORT_DISABLE_ALL"
    assert p.trace is None
    assert p.started <= p.finished


def test_traced_receipt_commits_to_the_trace_root(node_key: SigningKey) -> None:
    model, inputs = conv_bn_model()
    runner = runner_of(model)
    traced = runner.run(inputs, key=node_key, trace=True)
    plain = runner.run(inputs, key=node_key)
    assert traced.trace is not None
    assert traced.trace.tensors is None
    assert traced.predicate.trace == traced.trace.commitment
    assert {n: a.tobytes() for n, a in traced.outputs.items()} == {
        n: a.tobytes() for n, a in plain.outputs.items()
    }


def test_request_ids_are_unique_by_default(node_key: SigningKey) -> None:
    model, inputs = mlp_model()
    runner = runner_of(model)
    a = runner.run(inputs, key=node_key).predicate
    b = runner.run(inputs, key=node_key).predicate
    assert a.request_id != b.request_id
    assert a.request_digest == b.request_digest


def test_result_json_round_trips_exactly(any_model: Model, node_key: SigningKey) -> None:
    model, inputs = any_model
    result = runner_of(model).run(inputs, key=node_key, trace=True)
    again = RunResult.from_bytes(result.to_bytes())
    assert again.receipt == result.receipt
    assert again.predicate == result.predicate
    assert again.trace == result.trace
    for name, array in result.outputs.items():
        assert again.outputs[name].dtype == array.dtype
        assert again.outputs[name].tobytes() == array.tobytes()
    assert again.inputs is not None
    assert set(again.inputs) == set(inputs)
    assert "inputs" not in result.to_json(include_inputs=False)


def test_result_file_has_outputs_and_a_dsse_receipt(node_key: SigningKey) -> None:
    model, inputs = multi_io_model()
    doc = json.loads(runner_of(model).run(inputs, key=node_key).to_bytes())
    assert set(doc) == {"outputs", "receipt", "inputs"}
    assert set(doc["outputs"]) == {"scaled", "t"}
    assert doc["outputs"]["scaled"]["dtype"] == "int64"
    assert set(doc["receipt"]) == {"payloadType", "payload", "signatures"}
    assert doc["receipt"]["payloadType"] == "application/vnd.in-toto+json"


def test_bad_inputs_are_refused_before_running(node_key: SigningKey) -> None:
    model, _ = mlp_model()
    with pytest.raises(InvalidInputError, match="'x' has the wrong dtype"):
        runner_of(model).run({"x": np.zeros((1, 16), np.float64)}, key=node_key)


def test_receipts_need_an_ed25519_node_key_and_a_policy() -> None:
    model, inputs = mlp_model()
    runner = runner_of(model)
    with pytest.raises(KeyFileError, match="Ed25519"):
        runner.run(inputs, key=generate_key("ec"))
    with pytest.raises(FormatError, match="policy"):
        runner.run(inputs, key=generate_key(), policy="")


def test_non_tensor_model_outputs_are_refused_when_the_runner_is_built() -> None:
    graph = helper.make_graph(
        [helper.make_node("SplitToSequence", ["x"], ["seq"], axis=0)],
        "seq_out",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InvalidModelError, match="not a tensor"):
        runner_of(model)


def test_run_reuses_one_runner_per_model_digest_and_profile(
    tmp_path: Path, node_key: SigningKey
) -> None:
    model, inputs = mlp_model()
    package = ModelPackage.load(write_example_folder(tmp_path / "m", model, name="mlp"))
    first = run(package, inputs, key=node_key)
    assert runner_for(package) is runner_for(tmp_path / "m")
    assert runner_for(package, Profile(intra_op_threads=2)) is not runner_for(package)
    again = run(tmp_path / "m", inputs, key=node_key)
    assert first.predicate.model_digest == again.predicate.model_digest == package.digest
    assert first.outputs["probs"].tobytes() == again.outputs["probs"].tobytes()


def test_model_digest_in_receipt_is_the_folder_digest(tmp_path: Path, node_key: SigningKey) -> None:
    from veriml.models import model_digest

    model, inputs = mlp_model()
    folder = write_example_folder(tmp_path / "m", model, name="mlp")
    result = run(folder, inputs, key=node_key)
    assert result.predicate.model_digest == model_digest(folder)
    assert isinstance(result.predicate.model_digest, Digest)


_HYPOTHESIS_KEY = generate_key("ed25519")
_DTYPES = ["bool", "int8", "int32", "int64", "uint8", "uint64", "float16", "float32", "float64"]


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.sampled_from(_DTYPES).flatmap(
            lambda dt: hnp.arrays(np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3))
        ),
        min_size=1,
        max_size=3,
    )
)
def test_result_file_round_trips_any_outputs_bit_for_bit(outputs: dict[str, np.ndarray]) -> None:
    key = _HYPOTHESIS_KEY
    model, inputs = mlp_model()
    base = runner_of(model).run(inputs, key=key).predicate
    digests = {name: tensor_digest(a) for name, a in outputs.items()}
    result = RunResult(outputs, sign_receipt(digests, base, key), base)
    again = RunResult.from_bytes(result.to_bytes())
    assert set(again.outputs) == set(outputs)
    for name, array in outputs.items():
        assert again.outputs[name].dtype == array.dtype
        assert again.outputs[name].shape == array.shape
        assert tensor_digest(again.outputs[name]) == digests[name]


def test_a_package_runner_keeps_no_python_copy_of_the_weights(tmp_path: Path) -> None:
    # A node holds many models: the weights must live once, in ONNX Runtime.
    from veriml.models import ModelPackage
    from veriml.models.examples import build_mlp, write_example_folder
    from veriml.runtime import Runner

    package = ModelPackage.load(
        write_example_folder(tmp_path / "m", build_mlp((8, 16, 3)), name="m")
    )
    runner = Runner.for_package(package)
    assert runner._model is None
    # Tracing loads the model again, once, after checking the folder did not change.
    x = {"x": np.ones((1, 8), np.float32)}
    outputs, trace = runner.traced(x)
    assert trace.size > 0
    np.testing.assert_array_equal(outputs["probs"], runner.outputs(x)["probs"])


def test_tracing_refuses_a_package_folder_changed_after_loading(tmp_path: Path) -> None:
    from veriml.core.errors import InvalidModelError
    from veriml.models import ModelPackage
    from veriml.models.examples import build_mlp, write_example_folder
    from veriml.runtime import Runner

    folder = write_example_folder(tmp_path / "m", build_mlp((8, 16, 3)), name="m")
    runner = Runner.for_package(ModelPackage.load(folder))
    onnx.save_model(build_mlp((8, 16, 3), seed=99), folder / "model.onnx")
    with pytest.raises(InvalidModelError, match="changed"):
        runner.traced({"x": np.ones((1, 8), np.float32)})
