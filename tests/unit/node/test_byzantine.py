"""The byzantine harness tells exactly the lie docs/verification.md's table names, with a
trace that agrees with the lie where the table says it does, and the honest node is untouched."""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
import onnx
import pytest
from _node_harness import SignedModel, inputs_for
from onnx import numpy_helper

from veriml.core.digest import Digest
from veriml.core.errors import FormatError, SignatureError, VerificationError
from veriml.core.keys import SigningKey, generate_key
from veriml.core.tensors import tensor_digest
from veriml.models import ModelPackage
from veriml.node import BYZANTINE_MODES, NodeConfig
from veriml.node._byzantine import Behaviour, Impersonate, behaviour_for
from veriml.protocol.jobs import Job
from veriml.runtime import Runner, RunResult, Trace, runner_for
from veriml.verify import verify_receipt

Array = Any


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return generate_key("ed25519")


@pytest.fixture
def runner(signed_model: SignedModel) -> Runner:
    return runner_for(signed_model.folder)


def _job(runner: Runner, *, trace: bool, request_id: str | None = None) -> Job:
    return Job(
        job_id=str(uuid.uuid4()),
        node_id="n",
        request_id=request_id or str(uuid.uuid4()),
        model=runner.digest,
        inputs={},
        policy="quorum:3/2",
        issued_at="2026-01-01T00:00:00Z",
        expires_at="2026-01-01T00:01:00Z",
        trace=trace,
    )


def _run(mode: str | None, runner: Runner, key: SigningKey, *, trace: bool) -> RunResult:
    return behaviour_for(mode, key).run(runner, _job(runner, trace=trace), inputs_for(3))


def _digests(outputs: dict[str, Array] | Any) -> dict[str, Digest]:
    return {name: tensor_digest(a) for name, a in outputs.items()}


def _assert_consistent(result: RunResult, *, keeps_node_outputs: bool = True) -> Trace:
    """The receipt commits to the trace, the trace's output entries are the receipt's outputs
    and every kept tensor hashes to its entry: what a bisection would find revealed."""
    trace = result.trace
    assert trace is not None
    assert result.predicate.trace is not None
    assert result.predicate.trace.root == trace.root
    assert result.predicate.trace.size == trace.size
    by_output = {e.output: e.digest for e in trace.entries}
    for name, digest in _digests(result.outputs).items():
        assert by_output[name] == digest
    tensors = trace.tensors or {}
    if keeps_node_outputs:
        for entry in trace.entries:
            assert tensor_digest(tensors[entry.output]) == entry.digest
    return trace


def test_the_modes_are_the_documented_table_and_an_unknown_mode_is_refused(
    key: SigningKey,
) -> None:
    assert BYZANTINE_MODES == (
        "wrong-output",
        "lazy",
        "substitute",
        "fp16",
        "replay",
        "impersonate",
        "collude",
        "false-check",
    )
    assert [behaviour_for(m, key).mode for m in BYZANTINE_MODES] == list(BYZANTINE_MODES)
    assert type(behaviour_for(None, key)) is Behaviour
    with pytest.raises(FormatError):
        behaviour_for("lying", key)


def test_node_config_refuses_an_unknown_mode_and_bad_thread_counts(tmp_path: Any) -> None:
    base = {
        "coordinator_url": "http://127.0.0.1:1",
        "key_path": tmp_path / "k",
        "operator_key": tmp_path / "operator.key",
        "home": tmp_path,
        "coordinator_key": tmp_path / "coordinator.pub",
    }
    assert NodeConfig(**base).byzantine is None
    assert NodeConfig(**base, threads=4).profile.intra_op_threads == 4
    with pytest.raises(FormatError):
        NodeConfig(**base, byzantine="lying")
    for threads in (0, 257):
        with pytest.raises(FormatError):
            NodeConfig(**base, threads=threads)


@pytest.mark.parametrize("trace", [False, True])
def test_the_honest_behaviour_is_the_runner_itself(
    runner: Runner, key: SigningKey, trace: bool
) -> None:
    result = _run(None, runner, key, trace=trace)
    assert _digests(result.outputs) == _digests(runner.outputs(inputs_for(3)))
    verify_receipt(result, node_key=key.public, inputs=inputs_for(3))
    if trace:
        _assert_consistent(result)
    body = json.loads(behaviour_for(None, key).answer(result))
    assert body == json.loads(json.dumps(result.to_json(include_inputs=False)))


def test_wrong_output_adds_one_ulp_to_the_first_element_and_its_trace_agrees(
    runner: Runner, key: SigningKey
) -> None:
    honest = _run(None, runner, key, trace=True)
    lie = _run("wrong-output", runner, key, trace=True)
    (name,) = honest.outputs
    expected = honest.outputs[name].copy()
    expected.reshape(-1)[0] = np.nextafter(expected.reshape(-1)[0], np.float32(np.inf))
    assert lie.outputs[name].dtype == np.float32
    np.testing.assert_array_equal(lie.outputs[name], expected)
    assert _digests(lie.outputs) != _digests(honest.outputs)
    verify_receipt(lie, node_key=key.public, inputs=inputs_for(3))  # a well-signed lie
    trace = _assert_consistent(lie)
    assert honest.trace is not None
    changed = [
        i
        for i, (a, b) in enumerate(zip(trace.entries, honest.trace.entries, strict=True))
        if a != b
    ]
    assert changed == [trace.size - 1]  # only the output's own entry: the last operator
    assert trace.root != honest.trace.root


def test_an_untraced_lie_has_no_trace(runner: Runner, key: SigningKey) -> None:
    lie = _run("wrong-output", runner, key, trace=False)
    assert lie.trace is None
    assert lie.predicate.trace is None
    verify_receipt(lie, node_key=key.public, inputs=inputs_for(3))


def test_colluders_tell_the_same_lie_one_added_to_the_first_element(runner: Runner) -> None:
    first = _run("collude", runner, generate_key("ed25519"), trace=True)
    second = _run("collude", runner, generate_key("ed25519"), trace=False)
    honest = runner.outputs(inputs_for(3))
    assert _digests(first.outputs) == _digests(second.outputs) != _digests(honest)
    (name,) = honest
    delta = first.outputs[name] - honest[name]
    assert delta.reshape(-1)[0] == pytest.approx(1.0)
    assert not delta.reshape(-1)[1:].any()
    _assert_consistent(first)


def test_lazy_answers_random_tensors_of_the_right_shape_and_a_made_up_trace(
    runner: Runner, key: SigningKey
) -> None:
    honest = _run(None, runner, key, trace=True)
    lazy = _run("lazy", runner, key, trace=True)
    again = _run("lazy", runner, key, trace=False)
    for name, value in honest.outputs.items():
        assert lazy.outputs[name].shape == value.shape == again.outputs[name].shape
        assert lazy.outputs[name].dtype == value.dtype
        assert not np.array_equal(lazy.outputs[name], value)
        assert not np.array_equal(lazy.outputs[name], again.outputs[name])
    verify_receipt(lazy, node_key=key.public, inputs=inputs_for(3))
    trace = _assert_consistent(lazy, keeps_node_outputs=False)
    assert honest.trace is not None
    assert [(e.node, e.output) for e in trace.entries] == [
        (e.node, e.output) for e in honest.trace.entries
    ]
    outputs = set(honest.outputs)
    for made_up, real in zip(trace.entries, honest.trace.entries, strict=True):
        if made_up.output not in outputs:
            assert made_up.digest != real.digest
    assert set(trace.tensors or {}) == {"x"}  # nothing but the graph inputs is kept
    assert again.trace is None


def test_lazy_never_runs_the_model_when_the_signature_gives_the_shapes(
    runner: Runner, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("the lazy node ran the model")

    monkeypatch.setattr(runner, "_run", refuse)
    lazy = _run("lazy", runner, key, trace=True)
    assert {name: a.shape for name, a in lazy.outputs.items()} == {"probs": (2, 3)}


def _altered(package: ModelPackage, change: Any) -> Runner:
    model = package.load_proto()
    for init in model.graph.initializer:
        if change(init):
            break
    return Runner(model, digest=package.digest, files_digest=package.files_digest)


def test_substitute_runs_the_model_with_its_first_weight_zeroed_under_the_real_digest(
    runner: Runner, key: SigningKey, signed_model: SignedModel
) -> None:
    def zero_first(init: onnx.TensorProto) -> bool:
        array = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(np.zeros_like(array), init.name))
        return True

    cheap = _altered(ModelPackage.load(signed_model.folder), zero_first)
    result = _run("substitute", runner, key, trace=True)
    assert result.predicate.model_digest == signed_model.digest
    assert _digests(result.outputs) == _digests(cheap.outputs(inputs_for(3)))
    assert _digests(result.outputs) != _digests(runner.outputs(inputs_for(3)))
    verify_receipt(result, node_key=key.public, inputs=inputs_for(3))
    _assert_consistent(result)  # a real trace of the cheaper model


def test_fp16_runs_with_weights_rounded_to_half_precision(
    runner: Runner, key: SigningKey, signed_model: SignedModel
) -> None:
    model = ModelPackage.load(signed_model.folder).load_proto()
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
        init.CopyFrom(numpy_helper.from_array(array, init.name))
    rounded = Runner(model, digest=runner.digest, files_digest=runner.files_digest)
    result = _run("fp16", runner, key, trace=True)
    honest = runner.outputs(inputs_for(3))
    assert _digests(result.outputs) == _digests(rounded.outputs(inputs_for(3)))
    assert _digests(result.outputs) != _digests(honest)
    for name, value in honest.items():  # close, as a precision downgrade is
        np.testing.assert_allclose(result.outputs[name], value, rtol=0.05, atol=1e-3)
    _assert_consistent(result)


def test_replay_answers_each_job_with_the_previous_answer(runner: Runner, key: SigningKey) -> None:
    replay = behaviour_for("replay", key)
    answers = []
    for seed in (1, 2, 3):
        result = replay.run(
            runner, _job(runner, trace=False, request_id=f"r{seed}"), inputs_for(seed)
        )
        answers.append((result, replay.answer(result)))
    honest = [Behaviour(key).answer(result) for result, _ in answers]
    assert [body for _, body in answers] == [honest[0], honest[0], honest[1]]
    replayed = RunResult.from_json(json.loads(answers[1][1]))
    assert replayed.predicate.request_id == "r1"  # bound to another request: the check fails
    verify_receipt(replayed, node_key=key.public, inputs=inputs_for(1))


def test_impersonate_signs_with_a_throwaway_key_but_names_the_real_node(
    runner: Runner, key: SigningKey
) -> None:
    behaviour = behaviour_for("impersonate", key)
    assert isinstance(behaviour, Impersonate)
    result = behaviour.run(runner, _job(runner, trace=True), inputs_for(3))
    assert result.predicate.node_id == key.key_id
    assert _digests(result.outputs) == _digests(runner.outputs(inputs_for(3)))
    with pytest.raises((SignatureError, VerificationError)):
        verify_receipt(result, node_key=key.public, inputs=inputs_for(3))
    # The signature is a real one, by a key nobody registered; it names the wrong node for it.
    result.receipt.verify([behaviour.impostor.public])
    with pytest.raises(SignatureError):
        verify_receipt(result, node_key=behaviour.impostor.public, inputs=inputs_for(3))
    assert behaviour.impostor.key_id != key.key_id
