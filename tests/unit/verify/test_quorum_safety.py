"""Quorum safety: while honest nodes are a majority, no choice of byzantine answers (wrong,
colluding on one lie, or each different) and no order of arrival makes ``decide`` accept a
wrong output. With K > N/2, byzantine nodes (fewer than N/2) can never reach K together."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from veriml.core.digest import Digest
from veriml.verify.policy import Policy, decide

TRUE = {"y": Digest.of(b"the right answer")}


@st.composite
def quorum_round(draw: st.DrawFn) -> tuple[Policy, list[tuple[str, str, dict[str, Digest]]]]:
    n = draw(st.integers(1, 16))
    k = draw(st.integers(n // 2 + 1, n))
    byzantine = draw(st.integers(0, (n - 1) // 2))  # strictly fewer than the honest nodes
    collude = draw(st.booleans())
    answers = [(f"h{i}", f"op-h{i}", TRUE) for i in range(n - byzantine)]
    for i in range(byzantine):
        lie = b"collusion" if collude else draw(st.binary(min_size=1, max_size=8)) + bytes([i])
        answers.append((f"b{i}", f"op-b{i}", {"y": Digest.of(lie)}))
    # Some nodes may not answer at all (time-outs); arrival order is arbitrary.
    answers = draw(st.permutations(answers))
    dropped = draw(st.integers(0, len(answers) - 1))
    return Policy("quorum", n, k), list(answers[dropped:])


@given(quorum_round())
def test_quorum_never_accepts_a_wrong_output_while_honest_nodes_are_a_majority(
    case: tuple[Policy, list[tuple[str, str, dict[str, Digest]]]],
) -> None:
    policy, answers = case
    verdict = decide(policy, answers)
    if verdict.outcome == "accepted":
        assert dict(verdict.outputs) == TRUE
        assert all(node.startswith("h") for node in verdict.agreeing)
    honest_answered = sum(1 for node, _, _ in answers if node.startswith("h"))
    assert (verdict.outcome == "accepted") == (honest_answered >= policy.k)
