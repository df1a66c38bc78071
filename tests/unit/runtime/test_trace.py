"""Trace mode: bitwise-identical outputs, an RFC 9162 commitment, and a stable JSON form."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from _runtime_models import Model, runner_of
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper

from veriml.core.digest import Digest
from veriml.core.errors import FormatError, InvalidModelError, RootMismatchError
from veriml.core.tensors import tensor_digest
from veriml.runtime import Trace, TraceEntry, traced_model
from veriml.tlog.merkle import verify_inclusion


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 section 2.1.1, written out independently of veriml.tlog."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def test_traced_outputs_are_bitwise_identical_to_untraced(any_model: Model) -> None:
    model, inputs = any_model
    runner = runner_of(model)
    plain = runner.outputs(inputs)
    traced, _ = runner.traced(inputs)
    assert list(traced) == list(plain)
    for name in plain:
        assert plain[name].dtype == traced[name].dtype
        assert plain[name].tobytes() == traced[name].tobytes(), name


def test_trace_records_every_node_output_in_topological_order(any_model: Model) -> None:
    model, inputs = any_model
    _, trace = runner_of(model).traced(inputs)
    expected = [(i, o) for i, n in enumerate(model.graph.node) for o in n.output if o]
    assert [(e.node, e.output) for e in trace.entries] == expected
    assert trace.tensors is not None
    for entry in trace.entries:
        assert entry.op_type == model.graph.node[entry.node].op_type
        assert entry.digest == tensor_digest(trace.tensors[entry.output])


def test_trace_root_is_rfc9162_mth_over_raw_tensor_digests(any_model: Model) -> None:
    model, inputs = any_model
    _, trace = runner_of(model).traced(inputs, keep_tensors=False)
    assert trace.tensors is None
    assert trace.root.raw == _mth([e.digest.raw for e in trace.entries])
    assert trace.commitment.size == trace.size == len(trace.entries)


def test_every_entry_has_a_verifying_inclusion_proof(any_model: Model) -> None:
    model, inputs = any_model
    _, trace = runner_of(model).traced(inputs)
    for i in range(trace.size):
        proof = trace.inclusion_proof(i)
        verify_inclusion(trace.leaf_hash(i), i, trace.size, proof, trace.root.raw)


def test_the_traced_graph_is_the_original_plus_outputs(any_model: Model) -> None:
    model, _ = any_model
    traced = traced_model(model)
    assert list(traced.graph.node) == list(model.graph.node)
    assert [o.name for o in traced.graph.output][: len(model.graph.output)] == [
        o.name for o in model.graph.output
    ]
    assert len(model.graph.output) < len(traced.graph.output) or len(model.graph.node) == 1


entries = st.lists(
    st.builds(
        TraceEntry,
        node=st.integers(0, 10_000),
        op_type=st.sampled_from(["Conv", "Relu", "MatMul", "com.example.Op"]),
        name=st.text(max_size=8),
        inputs=st.lists(st.text(max_size=8), max_size=3).map(tuple),
        output=st.text(min_size=1, max_size=8),
        digest=st.binary(min_size=32, max_size=32).map(Digest),
    ),
    max_size=20,
)


@given(entries)
def test_trace_json_round_trips(items: list[TraceEntry]) -> None:
    trace = Trace(tuple(items))
    again = Trace.from_json(trace.to_json())
    assert again == trace
    assert again.root == trace.root


def test_a_trace_whose_stated_root_was_changed_is_refused() -> None:
    trace = Trace((TraceEntry(0, "Relu", "r", ("x",), "y", Digest.of(b"y")),))
    doc = trace.to_json() | {"root": Digest.of(b"other").to_text()}
    with pytest.raises(RootMismatchError, match="trace-root"):
        Trace.from_json(doc)


def test_a_trace_whose_entry_was_changed_no_longer_matches_its_root() -> None:
    trace = Trace(
        tuple(TraceEntry(i, "Relu", "", (), f"v{i}", Digest.of(b"%d" % i)) for i in range(5))
    )
    doc = trace.to_json()
    doc["entries"][3]["digest"] = Digest.of(b"forged").to_text()
    with pytest.raises(RootMismatchError):
        Trace.from_json(doc)


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"format": "other"},
        {"format": "veriml-trace/v1", "entries": "x", "size": 0, "root": ""},
        {"format": "veriml-trace/v1", "entries": [{"node": -1}], "size": 1, "root": ""},
        {"format": "veriml-trace/v1", "entries": [], "size": 3, "root": ""},
    ],
)
def test_malformed_trace_json_is_a_format_error(doc: object) -> None:
    with pytest.raises(FormatError):
        Trace.from_json(doc)


def test_a_sequence_valued_node_output_is_a_clear_error() -> None:
    nodes = [
        helper.make_node("SplitToSequence", ["x"], ["seq"], axis=0),
        helper.make_node("ConcatFromSequence", ["seq"], ["y"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    runner = runner_of(model)
    x = np.ones((2, 3), np.float32)
    assert runner.outputs({"x": x})["y"].shape == (2, 3)  # untraced runs are fine
    with pytest.raises(InvalidModelError, match="not a tensor") as info:
        runner.traced({"x": x})
    assert "op_type=SplitToSequence" in str(info.value)
