"""Disputes: what the referee costs against a full re-execution, and how many rounds the
bisection takes as the trace grows (goals: docs/verification.md, "Disputes").

**Referee time ÷ one full re-execution** (``dispute_referee_ratio``, goal ≤ 0.05). The model
is a generated chain of MatMul → Add → Relu layers (width 512, float32, batch 32), so every
operator is real work and the weights (1 MiB per layer) are not trivially small:

- (a) *one full re-execution*, what a verifier without disputes does: build a session for the
  model package under the verifiable profile and run it (``veriml.runtime.Runner``, session
  creation included);
- (b) *the referee*: ``veriml.verify.dispute.referee`` on one MatMul in the middle of the
  chain, the most expensive operator class there (its one-node model and session built
  inside, on the recorded input tensors, digest comparison included).

Both are timed in interleaved rounds, best round of each. ``warm_run_ms`` is the run alone on
a session built beforehand and ``referee_vs_warm_run_ratio`` the referee against it (for
information: a verifier that keeps every model loaded). ``dispute_referee_ratio`` is for the
192-operator chain (64 layers); ``referee_ratio_51_ops`` is the same for a 17-layer chain and
is for information: when the compute is spread evenly over k MatMuls, one of them is 1/k of a
full run, so a 51-operator chain of equal layers cannot get below 1/17 ≈ 6 % whatever the
referee does; real models have many more operators than the 50 the goal names.

**Rounds** (``dispute_rounds_per_log2L``, goal ≤ 2: O(log L)). For chains of L operators
(L = 16, 64, 256, 1024; width 8), the honest trace comes from a real traced run; the
cheater's is the same up to a random operator j and differs from j on, as a wrong value
propagates down a chain. ``veriml.verify.dispute.Bisection`` is driven between them until it
names the operator (checked: it must name j); ``rounds_L<L>`` is the worst round count over
the trials and ``messages_L<L>`` = 2 × rounds (one query, one reveal per party per round).
``dispute_rounds_per_log2L`` = max over L of rounds ÷ ⌈log₂ L⌉.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from veriml.core.digest import Digest
from veriml.core.tensors import tensor_digest
from veriml.models import ModelPackage
from veriml.models.examples import write_example_folder
from veriml.runtime import Runner, Trace
from veriml.verify.dispute import Bisection, TraceLayout, referee

CYCLE = ("MatMul", "Add", "Relu")


def chain_model(operators: int, width: int, *, seed: int = 0) -> onnx.ModelProto:
    """A chain ``x[batch, width] -> y[batch, width]`` of ``operators`` nodes cycling through
    MatMul (a seeded ``width × width`` weight), Add (a seeded bias) and Relu."""
    if operators < 1:
        raise ValueError("a chain needs at least one operator")
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    current = "x"
    for i in range(operators):
        op = CYCLE[i % len(CYCLE)]
        out = "y" if i == operators - 1 else f"t{i}"
        if op == "MatMul":
            w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
            initializers.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [out], name=f"op{i}"))
        elif op == "Add":
            b = (rng.standard_normal(width) * 0.1).astype(np.float32)
            initializers.append(numpy_helper.from_array(b, f"b{i}"))
            nodes.append(helper.make_node("Add", [current, f"b{i}"], [out], name=f"op{i}"))
        else:
            nodes.append(helper.make_node("Relu", [current], [out], name=f"op{i}"))
        current = out
    graph = helper.make_graph(
        nodes,
        f"chain{operators}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _interleaved_best(
    candidate: Callable[[], object], baseline: Callable[[], object], *, rounds: int
) -> tuple[float, float]:
    """Best (candidate, baseline) seconds per call over ``rounds`` alternating calls."""
    best_c = best_b = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        baseline()
        best_b = min(best_b, time.perf_counter() - t0)
        t0 = time.perf_counter()
        candidate()
        best_c = min(best_c, time.perf_counter() - t0)
    return best_c, best_b


def _referee_ratio(
    tmp: Path, layers: int, width: int, batch: int, *, rounds: int
) -> dict[str, Any]:
    """(b) the referee on a middle MatMul ÷ (a) a full re-execution with its session."""
    model = chain_model(3 * layers, width)
    folder = write_example_folder(tmp / f"chain{layers}", model, name=f"chain{layers}")
    package = ModelPackage.load(folder)
    model = package.load_proto()
    x = {"x": np.random.default_rng(1).standard_normal((batch, width)).astype(np.float32)}
    outputs, trace = Runner(package).traced(x)
    assert trace.tensors is not None
    layout = TraceLayout.from_model(model)
    index = 3 * (layers // 2)  # a MatMul: entry i is node i in a chain
    entry = layout.entries[index]
    assert entry.op_type == "MatMul", entry
    inputs = {name: trace.tensors[name] for name in entry.inputs if name in trace.tensors}
    # What bisection agreed on; the referee checks every tensor against it (timed).
    agreed = {name: tensor_digest(value) for name, value in inputs.items()}
    honest = trace.entries[index].digest
    wrong = Digest.of(b"a cheater's claim")

    def full() -> object:
        # What a verifier without disputes does: a session for the package, then the run.
        again = Runner(package).outputs(x)
        assert tensor_digest(again["y"]) == tensor_digest(outputs["y"])
        return again

    def judge() -> object:
        decision = referee(model, layout, index, inputs, wrong, honest, agreed=agreed)
        assert decision.winner == "challenger", decision
        return decision

    warm = Runner(package)

    def run_only() -> object:
        return warm.outputs(x)

    judge()  # the one-node model once, so neither side pays a first-call cost
    referee_s, full_s = _interleaved_best(judge, full, rounds=rounds)
    _, run_s = _interleaved_best(judge, run_only, rounds=rounds)
    return {
        "operators": 3 * layers,
        "full_ms": full_s * 1e3,
        "run_ms": run_s * 1e3,
        "referee_ms": referee_s * 1e3,
    }


def _perturbed(trace: Trace, first: int) -> list[Digest]:
    """The cheater's trace digests: the honest ones before ``first``, different ones after."""
    return [
        e.digest if i < first else Digest.of(b"perturbed\n" + e.digest.raw)
        for i, e in enumerate(trace.entries)
    ]


def _rounds(length: int, trials: int, rng: np.random.Generator) -> int:
    """The worst bisection round count over ``trials`` random first-differing operators."""
    model = chain_model(length, 8, seed=length)
    layout = TraceLayout.from_model(model)
    x = {"x": np.random.default_rng(2).standard_normal((2, 8)).astype(np.float32)}
    digest = Digest.of(model.SerializeToString())
    _, trace = Runner(model, digest=digest).traced(x, keep_tensors=False)
    assert layout.size == trace.size == length
    honest = [e.digest for e in trace.entries]
    input_digests = {name: tensor_digest(value) for name, value in x.items()}
    worst = 0
    for first in rng.choice(length, size=min(trials, length), replace=False).tolist():
        cheat = _perturbed(trace, first)
        bisection = Bisection(
            layout,
            {name: cheat[i] for name, i in layout.outputs.items()},
            {name: honest[i] for name, i in layout.outputs.items()},
            input_digests=input_digests,
        )
        while (index := bisection.next_query()) is not None:
            bisection.record(index, cheat[index], honest[index])
        if bisection.found != first or bisection.early is not None:
            raise AssertionError(
                f"bisection over L={length} named {bisection.found} (early "
                f"{bisection.early}), the first wrong operator is {first}"
            )
        worst = max(worst, bisection.rounds)
    return worst


def run(quick: bool) -> dict[str, Any]:
    rounds = 5 if quick else 25
    trials = 8 if quick else 64
    with tempfile.TemporaryDirectory(prefix="veriml-bench-dispute-") as tmp_name:
        tmp = Path(tmp_name)
        large = _referee_ratio(tmp, 64, 512, 32, rounds=rounds)
        small = _referee_ratio(tmp, 17, 512, 32, rounds=rounds)
    rng = np.random.default_rng(0)
    lengths = (16, 64, 256, 1024)
    per_length = {length: _rounds(length, trials, rng) for length in lengths}
    per_log = max(r / math.ceil(math.log2(length)) for length, r in per_length.items())
    return {
        "description": (
            f"Referee ÷ full re-execution on a chain of {large['operators']} operators "
            "(MatMul → Add → Relu, width 512, batch 32, float32; full = session for the "
            "package + run, referee = one MatMul as a one-node model, session included; "
            f"best of {rounds} interleaved rounds). Bisection between an honest trace and one "
            f"wrong from a random operator on ({trials} trials per length, worst case shown)."
        ),
        "full_reexecution_ms": large["full_ms"],
        "referee_ms": large["referee_ms"],
        "warm_run_ms": large["run_ms"],
        "dispute_referee_ratio": large["referee_ms"] / large["full_ms"],
        "referee_vs_warm_run_ratio": large["referee_ms"] / large["run_ms"],
        "referee_ratio_51_ops": small["referee_ms"] / small["full_ms"],
        **{f"rounds_L{length}": r for length, r in per_length.items()},
        **{f"messages_L{length}": 2 * r for length, r in per_length.items()},
        "dispute_rounds_per_log2L": per_log,
        "goals_max": {"dispute_referee_ratio": 0.05, "dispute_rounds_per_log2L": 2.0},
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
