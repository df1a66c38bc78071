"""veriml's sampler matches a direct NumPy reading of docs/llm.md, tie rules included."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veriml.core.completion import Sampling
from veriml.core.errors import ExecutionError
from veriml.runtime.llm import draw, sample, token_interval


def reference_draw(seed: int, step: int) -> float:
    data = b"veriml-sample/v1\n" + seed.to_bytes(8, "big") + step.to_bytes(4, "big")
    return (int.from_bytes(hashlib.sha256(data).digest()[:8], "big") >> 11) / 2.0**53


def reference_sample(logits: np.ndarray, s: Sampling, step: int) -> int:
    """The documented algorithm written out with plain loops (slow, obvious)."""
    if s.temperature == 0:
        best = 0
        for i, v in enumerate(logits):
            if v > logits[best]:
                best = i
        return best
    z = [float(v) / s.temperature for v in logits]
    order = sorted(range(len(z)), key=lambda i: (-z[i], i))
    if s.top_k:
        order = order[: s.top_k]
    e = [float(np.exp(z[i] - z[order[0]])) for i in order]
    c, total = [], 0.0
    for x in e:
        total += x
        c.append(total)
    n = next((k + 1 for k, v in enumerate(c) if v / c[-1] >= s.top_p), len(c))
    u = reference_draw(s.seed, step)
    for k in range(n):
        if c[k] / c[n - 1] > u:
            return order[k]
    raise AssertionError("u < 1 always falls inside the nucleus")


def test_draw_is_the_documented_hash() -> None:
    assert draw(1234, 0) == reference_draw(1234, 0)
    assert draw(2**64 - 1, 2**32 - 1) == reference_draw(2**64 - 1, 2**32 - 1)
    values = [draw(7, step) for step in range(2000)]
    assert all(0.0 <= u < 1.0 for u in values)
    assert 0.45 < float(np.mean(values)) < 0.55
    assert draw(7, 0) != draw(8, 0)


def test_greedy_takes_the_lowest_id_among_equal_maxima() -> None:
    logits = np.array([0.5, 3.0, 1.0, 3.0, -2.0], dtype=np.float32)
    assert sample(logits, Sampling(0.0, 1.0, 0, 1), 0) == 1


def test_top_k_ties_keep_the_lower_id() -> None:
    # Ids 1 and 3 tie for the second place; top_k=2 keeps id 1, so id 3 is never drawn.
    logits = np.array([5.0, 4.0, -9.0, 4.0], dtype=np.float32)
    s = Sampling(1.0, 1.0, 2, 0)
    picks = {sample(logits, Sampling(1.0, 1.0, 2, seed), 0) for seed in range(300)}
    assert picks == {0, 1}
    assert not token_interval(logits, s, 3).kept


def test_top_p_keeps_the_shortest_prefix_reaching_p() -> None:
    # probabilities ~ [0.665, 0.245, 0.090]: top_p 0.6 keeps only the first token.
    logits = np.log(np.array([0.665, 0.245, 0.090]))
    assert {sample(logits, Sampling(1.0, 0.6, 0, seed), 3) for seed in range(200)} == {0}
    assert {sample(logits, Sampling(1.0, 0.95, 0, seed), 3) for seed in range(400)} == {0, 1, 2}


@settings(max_examples=150, deadline=None)
@given(
    logits=st.lists(
        st.floats(-30, 30, allow_nan=False, width=32) | st.sampled_from([1.5, 1.5, 0.0]),
        min_size=1,
        max_size=40,
    ),
    temperature=st.sampled_from([0.0, 0.1, 0.7, 1.0, 2.0]),
    top_p=st.sampled_from([0.05, 0.5, 0.9, 1.0]),
    top_k=st.integers(0, 8),
    seed=st.integers(0, 2**53 - 1),
    step=st.integers(0, 1000),
)
def test_sample_matches_the_reference(
    logits: list[float], temperature: float, top_p: float, top_k: int, seed: int, step: int
) -> None:
    array = np.array(logits, dtype=np.float32)
    s = Sampling(temperature, top_p, top_k, seed)
    token = sample(array, s, step)
    assert token == reference_sample(array, s, step)
    if temperature:
        interval = token_interval(array, s, token)
        assert interval.low <= draw(seed, step) < interval.high


def test_sampling_a_real_vocabulary_row_is_reproducible() -> None:
    logits = np.random.default_rng(0).standard_normal(49152).astype(np.float32) * 4
    s = Sampling(0.8, 0.95, 40, 99)
    tokens = [sample(logits, s, step) for step in range(20)]
    assert tokens == [sample(logits.copy(), s, step) for step in range(20)]
    assert len(set(tokens)) > 1


@pytest.mark.parametrize("bad", [np.array([1.0, np.nan]), np.array([np.inf, 0.0]), np.zeros(0)])
def test_unusable_logits_are_an_execution_error(bad: np.ndarray) -> None:
    with pytest.raises(ExecutionError):
        sample(bad, Sampling(0.0, 1.0, 0, 0), 0)


def test_fast_float32_order_is_the_stable_order() -> None:
    from veriml.runtime.llm.sampler import _order

    rng = np.random.default_rng(1)
    row = rng.integers(-20, 20, 49152).astype(np.float32) / 4  # many ties
    row[[5, 9]] = [-0.0, 0.0]
    row[7] = -np.inf
    expected = np.argsort(-row.astype(np.float64), kind="stable")
    assert np.array_equal(_order(row), expected)
    assert np.array_equal(_order(row.astype(np.float64)), expected)
