"""The policies LLM requests run under: token ids compare exactly, and ``prefill`` is decided
from the generating node and its checker (docs/llm.md, "Prefill check")."""

from __future__ import annotations

import pytest

from veriml.core.digest import Digest
from veriml.core.errors import FormatError
from veriml.verify.policy import Policy, Verdict, decide

OUT = {"completion": Digest.of(b"tokens")}
OTHER = {"completion": Digest.of(b"other tokens")}


def test_prefill_is_a_canonical_policy_of_one_generating_node() -> None:
    policy = Policy.parse("prefill")
    assert (str(policy), policy.kind, policy.nodes, policy.needed) == ("prefill", "prefill", 1, 1)
    assert str(Policy.parse("prefill,bitwise")) == "prefill"


def test_prefill_compares_no_tensors() -> None:
    with pytest.raises(FormatError):
        Policy.parse("prefill,tolerance")


def test_a_prefill_verdict_accepts_the_generation_its_checker_vouches_for() -> None:
    verdict = decide(Policy.parse("prefill"), [("gen", "op-a", OUT), ("chk", "op-b", OUT)])
    assert (verdict.outcome, verdict.agreeing, dict(verdict.outputs)) == (
        "accepted",
        ("gen", "chk"),
        OUT,
    )
    # It round-trips through the log entry's JSON (the ledger fold parses every entry).
    assert Verdict.from_json(verdict.to_json()) == verdict


@pytest.mark.parametrize(
    "answers",
    [
        [("gen", "op-a", OUT)],  # no checker answered
        [("gen", "op-a", OUT), ("chk", "op-b", OTHER)],  # the check refused a token
        [("gen", "op-a", OUT), ("chk", "op-a", OUT)],  # the generator's own operator
    ],
)
def test_a_prefill_verdict_without_an_independent_accepting_check_rejects(
    answers: list[tuple[str, str, dict[str, Digest]]],
) -> None:
    verdict = decide(Policy.parse("prefill"), answers)
    assert (verdict.outcome, verdict.agreeing) == ("rejected", ())
