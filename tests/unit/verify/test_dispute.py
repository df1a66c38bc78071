"""Disputes: reveals are proven, bisection ends at the first wrong operator in O(log L) rounds,
and the referee re-executing that operator alone picks the honest party."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import pytest
from _verify_models import chain_model, conv_model, fp16_weights, propagate, runner
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from veriml.core import Digest
from veriml.core.errors import FormatError, VerificationError
from veriml.core.tensors import tensor_digest
from veriml.models.examples import build_mlp
from veriml.runtime import Trace, TraceEntry
from veriml.verify.dispute import Bisection, TraceLayout, check_reveal, referee

Array = np.ndarray[Any, Any]


def _honest(model: onnx.ModelProto, seed: int = 0) -> tuple[dict[str, Array], Trace]:
    dims = [d.dim_value or 4 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).standard_normal(dims).astype(np.float32)
    return runner(model).traced({model.graph.input[0].name: x})


def _outputs(model: onnx.ModelProto, trace: Trace) -> dict[str, Digest]:
    layout = TraceLayout.from_model(model)
    return {name: trace.entries[i].digest for name, i in layout.outputs.items()}


def _inputs(model: onnx.ModelProto, trace: Trace) -> dict[str, Digest]:
    assert trace.tensors is not None
    return {i.name: tensor_digest(trace.tensors[i.name]) for i in model.graph.input}


def _play(model: onnx.ModelProto, defendant: Trace, challenger: Trace) -> Bisection:
    """Drive a bisection to its end, checking every reveal against both commitments."""
    layout = TraceLayout.from_model(model)
    game = Bisection(
        layout,
        _outputs(model, defendant),
        _outputs(model, challenger),
        _inputs(model, defendant),
    )
    asked: list[int] = []
    while (index := game.next_query()) is not None:
        assert index not in asked, "an index is asked once"
        asked.append(index)
        for trace in (defendant, challenger):
            check_reveal(
                trace.commitment,
                layout,
                index,
                trace.entries[index],
                trace.inclusion_proof(index),
            )
        game.record(index, defendant.entries[index].digest, challenger.entries[index].digest)
    assert game.rounds == len(asked)
    return game


def _nudge(value: Array) -> Array:
    """A small wrong change that survives Relu and Softmax down to the output."""
    return (value * np.float32(1.01) + np.float32(0.01)).astype(value.dtype)


def _fan_in(model: onnx.ModelProto) -> int:
    return max(len(node.input) for node in model.graph.node)


def _bound(size: int, fan_in: int) -> int:
    # One output reveal, the halving, and the inputs of the operator it lands on.
    return 1 + math.ceil(math.log2(size)) + fan_in


# Layout and reveals --------------------------------------------------------------------------


def test_the_layout_matches_the_runtimes_traces() -> None:
    model = build_mlp((16, 32, 32, 3))
    _, trace = _honest(model)
    layout = TraceLayout.from_model(model)
    assert layout.size == trace.size
    for expected, entry in zip(layout.entries, trace.entries, strict=True):
        assert (expected.node, expected.op_type, expected.output, expected.inputs) == (
            entry.node,
            entry.op_type,
            entry.output,
            entry.inputs,
        )
    assert layout.outputs == {"probs": layout.size - 1}
    assert layout.graph_inputs == {"x"}
    assert "w0" in layout.initializers
    assert layout.producer["h0"] == 0


def test_honest_reveals_are_accepted_and_mutations_refused() -> None:
    model = build_mlp((16, 32, 3))
    _, trace = _honest(model)
    layout = TraceLayout.from_model(model)
    index = 2
    entry, proof = trace.entries[index], trace.inclusion_proof(index)
    check_reveal(trace.commitment, layout, index, entry, proof)
    forged = TraceEntry(
        entry.node, entry.op_type, entry.name, entry.inputs, entry.output, Digest.of(b"x")
    )
    renamed = TraceEntry(entry.node, "Relu", entry.name, entry.inputs, entry.output, entry.digest)
    flipped = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
    cases = [
        (trace.commitment, index, forged, proof),  # digest not the committed leaf
        (trace.commitment, index, renamed, proof),  # not the layout's operator
        (trace.commitment, index + 1, entry, proof),  # another index
        (trace.commitment, index, entry, flipped),  # modified-proof[0]-bit-0
        (trace.commitment, index, entry, proof[:-1]),  # truncated proof
        (type(trace.commitment)(trace.root, trace.size + 1), index, entry, proof),  # wrong size
        (trace.commitment, layout.size, entry, proof),  # out of range
    ]
    for commitment, at, revealed, path in cases:
        with pytest.raises(VerificationError) as info:
            check_reveal(commitment, layout, at, revealed, path)
        assert info.value.check == "reveal"


# Bisection -----------------------------------------------------------------------------------


@pytest.mark.parametrize("node", [0, 1, 2, 3, 4])
def test_bisection_finds_exactly_the_perturbed_operator(node: int) -> None:
    model = build_mlp((16, 32, 32, 3))
    _, honest = _honest(model)
    assert honest.tensors is not None
    cheat = propagate(model, honest.tensors, node, _nudge)
    layout = TraceLayout.from_model(model)
    for defendant, challenger in ((cheat, honest), (honest, cheat)):
        game = _play(model, defendant, challenger)
        assert game.early is None
        assert game.found == node  # one output per node: trace index == node index
        assert game.rounds <= _bound(layout.size, _fan_in(model))
        agreed = game.agreed_inputs()
        for name, digest in agreed.items():
            assert digest == tensor_digest(honest.tensors[name])


def _skip_model() -> onnx.ModelProto:
    """a = MatMul(x, W); r = Relu(a); s = Add(r, a); then a chain on s. A change to a's negative
    entries vanishes through Relu (r agrees again) but reaches the output through s."""
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W")
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Add", ["r", "a"], ["s0"]),
    ]
    for i in range(12):
        operand = "two" if i % 2 else "r"
        nodes.append(helper.make_node("Mul" if i % 2 else "Add", [f"s{i}", operand], [f"s{i + 1}"]))
    nodes.append(helper.make_node("Identity", ["s12"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "skip",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        [w, numpy_helper.from_array(np.float32(2.0), "two")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_bisection_survives_a_later_agreement_and_ends_where_inputs_agree() -> None:
    model = _skip_model()
    _, honest = _honest(model)
    assert honest.tensors is not None

    def negatives_down(value: Array) -> Array:
        return np.where(value < 0, value - 1, value).astype(np.float32)

    cheat = propagate(model, honest.tensors, 0, negatives_down)
    differs = [a.digest != b.digest for a, b in zip(honest.entries, cheat.entries, strict=True)]
    assert differs[0]
    assert not differs[1]  # Relu hid the change: the traces agree again at r
    assert differs[-1]
    game = _play(model, cheat, honest)
    assert game.found == 0
    layout = TraceLayout.from_model(model)
    assert game.rounds <= 2 * math.ceil(math.log2(layout.size)) + _fan_in(model)
    # Whatever path it took, the operator it names has agreeing inputs and a differing output.
    entry = layout.entries[game.found]
    assert cheat.entries[game.found].digest != honest.entries[game.found].digest
    for name in entry.reads:
        if name in layout.producer:
            index = layout.producer[name]
            assert cheat.entries[index].digest == honest.entries[index].digest


def test_a_later_operator_lands_on_the_input_that_differs() -> None:
    # A change at s5 (an Add reading s4 and r): the search must not blame s5's consumers.
    model = _skip_model()
    _, honest = _honest(model)
    assert honest.tensors is not None
    layout = TraceLayout.from_model(model)
    node = layout.producer["s5"]
    cheat = propagate(model, honest.tensors, node, _nudge)
    game = _play(model, cheat, honest)
    assert game.found == node


def test_a_long_model_needs_logarithmically_many_rounds() -> None:
    model = chain_model(22)  # 66 operators
    layout = TraceLayout.from_model(model)
    assert layout.size == 66
    _, honest = _honest(model)
    assert honest.tensors is not None
    for node in (0, 1, 17, 40, 63, layout.size - 1):
        cheat = propagate(model, honest.tensors, node, _nudge)
        game = _play(model, cheat, honest)
        assert game.found == node
        assert game.rounds <= 2 * math.ceil(math.log2(layout.size)) + _fan_in(model)


def test_a_multi_output_operator_is_found_by_its_trace_index() -> None:
    # Split has two outputs, so trace indices run ahead of node numbers after it.
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"]),
        helper.make_node("Split", ["m", "halves"], ["p", "q"], axis=1),
        helper.make_node("Tanh", ["q"], ["tq"]),
        helper.make_node("Add", ["p", "tq"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "split",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
        [
            numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W"),
            numpy_helper.from_array(np.array([4, 4], np.int64), "halves"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    layout = TraceLayout.from_model(model)
    assert [(e.node, e.output) for e in layout.entries] == [
        (0, "m"),
        (1, "p"),
        (1, "q"),
        (2, "tq"),
        (3, "y"),
    ]
    _, honest = _honest(model)
    assert honest.tensors is not None
    cheat = propagate(model, honest.tensors, 1, _nudge, output=1)
    game = _play(model, cheat, honest)
    assert game.found == layout.producer["q"] == 2
    decision = referee(
        model,
        layout,
        2,
        honest.tensors,
        cheat.entries[2].digest,
        honest.entries[2].digest,
        agreed=game.agreed_inputs(),
    )
    assert (decision.winner, decision.node_index, decision.op_type) == ("challenger", 1, "Split")
    assert set(decision.referee) == {"p", "q"}


def test_claims_that_agree_are_no_dispute() -> None:
    model = build_mlp((16, 32, 3))
    _, trace = _honest(model)
    outputs = _outputs(model, trace)
    game = Bisection(TraceLayout.from_model(model), outputs, outputs)
    assert (game.next_query(), game.early, game.rounds) == (None, ("defendant", "no-difference"), 0)


@pytest.mark.parametrize(
    ("defendant_lies", "challenger_lies", "winner"),
    [(True, False, "challenger"), (False, True, "defendant"), (True, True, "neither")],
)
def test_a_trace_that_does_not_repeat_its_claim_is_inconsistent(
    defendant_lies: bool, challenger_lies: bool, winner: str
) -> None:
    # The byzantine `wrong-output` node: its receipt's output changed, its trace did not.
    model = build_mlp((16, 32, 3))
    _, honest = _honest(model)
    layout = TraceLayout.from_model(model)
    real = _outputs(model, honest)
    game = Bisection(
        layout,
        {"probs": Digest.of(b"defendant's claim")} if defendant_lies else real,
        {"probs": Digest.of(b"challenger's claim")} if challenger_lies else real,
    )
    index = game.next_query()
    assert index == layout.outputs["probs"]
    # Both reveal the output their (honest) trace really holds.
    game.record(index, honest.entries[index].digest, honest.entries[index].digest)
    assert game.early == (winner, "inconsistent")
    assert game.next_query() is None


def test_a_forfeit_ends_the_game_and_records_are_in_order() -> None:
    model = build_mlp((16, 32, 3))
    _, honest = _honest(model)
    layout = TraceLayout.from_model(model)
    game = Bisection(layout, _outputs(model, honest), {"probs": Digest.of(b"x")})
    index = game.next_query()
    assert index is not None
    with pytest.raises(FormatError):
        game.record(index - 1, Digest.of(b"a"), Digest.of(b"a"))
    game.forfeit("defendant", "timeout")
    assert game.early == ("challenger", "timeout")
    assert game.next_query() is None
    with pytest.raises(FormatError):
        Bisection(layout, _outputs(model, honest), {"other": Digest.of(b"x")})


# Referee -------------------------------------------------------------------------------------


def _found(model: onnx.ModelProto, defendant: Trace, challenger: Trace) -> tuple[Bisection, int]:
    game = _play(model, defendant, challenger)
    assert game.found is not None
    return game, game.found


@pytest.mark.parametrize("cheat_is_defendant", [True, False])
def test_the_bitwise_referee_picks_the_honest_party(cheat_is_defendant: bool) -> None:
    model = build_mlp((16, 32, 32, 3))
    _, honest = _honest(model)
    assert honest.tensors is not None
    cheat = propagate(model, honest.tensors, 2, _nudge)
    defendant, challenger = (cheat, honest) if cheat_is_defendant else (honest, cheat)
    game, index = _found(model, defendant, challenger)
    layout = game.layout
    decision = referee(
        model,
        layout,
        index,
        honest.tensors,
        defendant.entries[index].digest,
        challenger.entries[index].digest,
        agreed=game.agreed_inputs(),
    )
    assert decision.winner == ("challenger" if cheat_is_defendant else "defendant")
    assert (decision.node_index, decision.op_type) == (2, "Gemm")
    assert decision.referee == {"h1": honest.entries[index].digest}


def test_the_referee_checks_inputs_against_the_agreed_digests() -> None:
    model = build_mlp((16, 32, 3))
    _, honest = _honest(model)
    assert honest.tensors is not None
    cheat = propagate(model, honest.tensors, 2, _nudge)
    game, index = _found(model, cheat, honest)
    tampered = dict(honest.tensors)
    name = next(iter(game.agreed_inputs()))
    tampered[name] = tampered[name] + 1
    args = (cheat.entries[index].digest, honest.entries[index].digest)
    with pytest.raises(VerificationError) as info:
        referee(model, game.layout, index, tampered, *args, agreed=game.agreed_inputs())
    assert info.value.check == "referee-input"
    with pytest.raises(VerificationError):
        referee(model, game.layout, index, honest.tensors, *args, agreed={})


def _reordered_gemm(model: onnx.ModelProto, node: int) -> Any:
    """What an honest machine summing in another order computes for Gemm ``node``."""
    gemm = model.graph.node[node]
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def change(_: Array, values: dict[str, Array]) -> Array:
        x, w, b = values[gemm.input[0]], weights[gemm.input[1]], weights[gemm.input[2]]
        out = np.zeros((x.shape[0], w.shape[1]), np.float32)
        for k in reversed(range(w.shape[0])):
            out += np.outer(x[:, k], w[k]).astype(np.float32)
        return (out + b).astype(np.float32)

    return change


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_the_tolerance_referee_clears_honest_parties_and_convicts_float16(name: str) -> None:
    model = build_mlp((64, 64, 3), seed=6) if name == "mlp" else conv_model(seed=6)
    _, honest = _honest(model, seed=1)
    assert honest.tensors is not None
    layout = TraceLayout.from_model(model)
    # Honest runs at other thread counts agree bitwise under ORT's pinned kernels...
    for threads in (2, 4):
        _, other = runner(model, threads).traced({"x": honest.tensors["x"]})
        game = _play(model, other, honest)
        assert game.early == ("defendant", "no-difference")
    # ...and an honest machine summing the last Gemm in another order is cleared ("none").
    gemm = max(i for i, n in enumerate(model.graph.node) if n.op_type == "Gemm")
    change = _reordered_gemm(model, gemm)
    reordered = propagate(model, honest.tensors, gemm, lambda v: change(v, honest.tensors))
    assert reordered.tensors is not None
    game, index = _found(model, reordered, honest)
    assert index == layout.producer[model.graph.node[gemm].output[0]]
    output = layout.entries[index].output
    decision = referee(
        model,
        layout,
        index,
        honest.tensors,
        reordered.entries[index].digest,
        honest.entries[index].digest,
        agreed=game.agreed_inputs(),
        mode="tolerance",
        defendant_value=reordered.tensors[output],
        challenger_value=honest.tensors[output],
    )
    assert decision.winner == "none"
    # The same party without the tensor it committed to loses.
    decision = referee(
        model,
        layout,
        index,
        honest.tensors,
        reordered.entries[index].digest,
        honest.entries[index].digest,
        agreed=game.agreed_inputs(),
        mode="tolerance",
    )
    assert decision.winner == "challenger"
    # A float16-weight node is convicted at the first operator that reads a weight.
    _, cheap = runner(fp16_weights(model)).traced({"x": honest.tensors["x"]})
    assert cheap.tensors is not None
    game, index = _found(model, cheap, honest)
    assert index == 0
    output = layout.entries[index].output
    decision = referee(
        model,
        layout,
        index,
        honest.tensors,
        cheap.entries[index].digest,
        honest.entries[index].digest,
        agreed=game.agreed_inputs(),
        mode="tolerance",
        defendant_value=cheap.tensors[output],
        challenger_value=honest.tensors[output],
    )
    assert decision.winner == "challenger"


def _skip_chain(length: int) -> onnx.ModelProto:
    """n0 = Neg(x); n_i = Add(n_{i-1}, n_{i//2}): every operator reads its predecessor and an
    earlier one, so differences can vanish and reappear along the trace."""
    nodes = [helper.make_node("Neg", ["x"], ["n0"])]
    for i in range(1, length):
        nodes.append(helper.make_node("Add", [f"n{i - 1}", f"n{i // 2}"], [f"n{i}"]))
    graph = helper.make_graph(
        nodes,
        "skip-chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(f"n{length - 1}", TensorProto.FLOAT, [2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@given(st.lists(st.booleans(), min_size=1, max_size=80))
def test_any_pattern_of_differences_ends_at_an_operator_with_agreeing_inputs(
    pattern: list[bool],
) -> None:
    pattern[-1] = True  # the outputs differ, or there is no dispute
    layout = TraceLayout.from_model(_skip_chain(len(pattern)))
    mine = [Digest.of(b"%d" % i) for i in range(len(pattern))]
    theirs = [Digest.of(b"other %d" % i) if d else mine[i] for i, d in enumerate(pattern)]
    last = layout.size - 1
    game = Bisection(layout, {f"n{last}": mine[last]}, {f"n{last}": theirs[last]}, {})
    asked: set[int] = set()
    while (index := game.next_query()) is not None:
        assert index not in asked
        asked.add(index)
        game.record(index, mine[index], theirs[index])
    assert game.found is not None
    assert pattern[game.found]
    for name in layout.entries[game.found].reads:
        if name in layout.producer:
            assert not pattern[layout.producer[name]]
