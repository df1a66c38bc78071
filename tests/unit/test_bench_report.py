"""The benchmark report and the pieces of the dispute benchmark that are pure enough to test:
how goals render (minimums and, for costs, maximums), the generated chain models, and that
the bisection the benchmark drives names the first wrong operator in O(log L) rounds."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from benchmarks.__main__ import _markdown
from benchmarks.bench_dispute import CYCLE, _rounds, chain_model


def _report(result: dict[str, Any]) -> dict[str, Any]:
    machine = {"platform": "test", "cpus": 2, "python": "3.11"}
    return {"started": "now", "machine": machine, "benchmarks": {"x": result}}


def _row(markdown: str, measure: str) -> list[str]:
    line = next(ln for ln in markdown.splitlines() if ln.startswith(f"| {measure} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_a_maximum_goal_is_met_at_or_below_it_and_a_minimum_at_or_above() -> None:
    result = {
        "cheap_ratio": 0.05,
        "costly_ratio": 3.3,
        "fast_ratio": 1.0,
        "slow_ratio": 0.4,
        "plain": 7,
        "goals": {"fast_ratio": 1.0, "slow_ratio": 1.0},
        "goals_max": {"cheap_ratio": 0.05, "costly_ratio": 3.2},
    }
    markdown = _markdown(_report(result))
    assert _row(markdown, "cheap_ratio")[2:] == ["≤ 0.05", "yes"]
    assert _row(markdown, "costly_ratio")[2:] == ["≤ 3.2", "**no**"]
    assert _row(markdown, "fast_ratio")[2:] == ["≥ 1.0", "yes"]
    assert _row(markdown, "slow_ratio")[2:] == ["≥ 1.0", "**no**"]
    assert _row(markdown, "plain")[2:] == ["", ""]
    # The goal mappings are not measures.
    assert "| goals" not in markdown


@pytest.mark.parametrize("operators", [1, 2, 51])
def test_a_chain_has_the_operators_asked_for_cycling_matmul_add_relu(operators: int) -> None:
    model = chain_model(operators, 4)
    ops = [node.op_type for node in model.graph.node]
    assert ops == [CYCLE[i % 3] for i in range(operators)]
    assert [o.name for o in model.graph.output] == ["y"]


@pytest.mark.parametrize("length", [16, 64])
def test_bisection_finds_the_first_wrong_operator_in_logarithmic_rounds(length: int) -> None:
    # _rounds raises unless every trial names exactly the operator where the traces part.
    rounds = _rounds(length, trials=12, rng=np.random.default_rng(length))
    assert math.ceil(math.log2(length)) <= rounds <= 2 * math.ceil(math.log2(length))
