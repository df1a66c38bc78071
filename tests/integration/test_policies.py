"""The verification policies on a real local network (``veriml serve`` processes), with
byzantine nodes: every detection ends in a slash entry (of the stake of the cheater's
operator), no honest node's operator is slashed, and forged or replayed receipts are refused
before any vote (so no dispute is opened for them)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from _logread import logged_entries
from veriml.client import Client, LocalNetwork
from veriml.core.dsse import Envelope, Statement
from veriml.core.keys import generate_key
from veriml.core.receipt import InferencePredicate
from veriml.core.tensors import tensor_to_json
from veriml.ledger.entries import (
    ChallengeEntry,
    DisputeVerdictEntry,
    ReputationEntry,
    SlashEntry,
    parse_entry,
)
from veriml.models.examples import build_mlp, write_example_folder
from veriml.verify.policy import Policy, spot_checked, spot_commitment

pytestmark = pytest.mark.slow

X = np.array([[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, 3.0]], dtype=np.float32)
STAKE = 1000


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("policies")
    generate_key("ec").save(root / "publisher.key")
    return write_example_folder(root / "mlp", build_mlp((4, 8, 8, 3), seed=4), name="mlp")


def network(
    home: Path,
    folder: Path,
    *,
    nodes: int,
    byzantine: dict[int, str],
    env: dict[str, str] | None = None,
) -> LocalNetwork:
    net = LocalNetwork(
        home,
        nodes=nodes,
        port=0,
        byzantine=byzantine,
        env=env,
        stake=STAKE,
        min_stake=1,
        start_timeout=60,
    )
    try:
        net.start()
        with Client(net.url, log_vkey=net.log_vkey) as client:
            client.publish(folder, folder.parent / "publisher.key")
    except BaseException:
        net.stop()
        raise
    return net


@pytest.fixture(scope="module")
def wrong_output(
    tmp_path_factory: pytest.TempPathFactory, model_folder: Path
) -> Iterator[LocalNetwork]:
    """Three nodes of three operators; node 0 adds one ulp to its first output."""
    home = tmp_path_factory.mktemp("trio")
    net = network(home / "net", model_folder, nodes=3, byzantine={0: "wrong-output"})
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, model_folder: Path) -> Iterator[LocalNetwork]:
    """Two nodes: whichever answers first, the other checks it, and one of them cheats. Each
    conviction costs the cheater 100 reputation; the floor is lowered so that however often
    these tests convict it, the rules never take it off the schedule (there is no other
    checker)."""
    home = tmp_path_factory.mktemp("pair")
    net = network(
        home / "net",
        model_folder,
        nodes=2,
        byzantine={0: "wrong-output"},
        env={"VERIML_MIN_REPUTATION": str(-(10**9))},
    )
    try:
        yield net
    finally:
        net.stop()


def infer(net: LocalNetwork, policy: str) -> dict[str, Any]:
    response = httpx.post(
        f"{net.url}/v1/inferences",
        json={"model": "mlp", "inputs": {"x": tensor_to_json(X)}, "policy": policy},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def log_entries(net: LocalNetwork) -> list[Any]:
    """Every ledger entry of the coordinator's log, read through its tiles."""
    raw = logged_entries(net.url, net.log_vkey)
    kinds = ("challenge", "verdict", "slash", "reputation")
    return [parse_entry(data) for data in raw if json.loads(data)["type"] in kinds]


def predicate(receipt: dict[str, Any]) -> InferencePredicate:
    statement = Statement.from_bytes(Envelope.from_json(receipt).payload)
    return InferencePredicate.from_json(statement.predicate)


def check_only_cheater_convicted(
    net: LocalNetwork,
    answer: dict[str, Any],
    cheater: str,
    *,
    reasons: tuple[str, ...] = ("referee",),
    others: frozenset[str] = frozenset(),
) -> None:
    """The answer's disputes are logged, each convicts the cheater (or one of ``others``,
    fellow cheaters) for one of ``reasons``, and nobody else is convicted. A conviction costs
    the loser reputation (a node's) and stake (its operator's: each node here has its own)."""
    cheaters = others | {cheater}
    operator = {str(node.node_id): net.operator_id(node) for node in net.nodes}
    cheating_operators = {operator[c] for c in cheaters}
    disputes = answer["verdict"]["disputes"]
    assert disputes
    entries = log_entries(net)
    verdicts = {e.dispute: e for e in entries if isinstance(e, DisputeVerdictEntry)}
    slashes = [e for e in entries if isinstance(e, SlashEntry)]
    for ref in disputes:
        loser = ref["defendant"] if ref["winner"] == "challenger" else ref["challenger"]
        assert loser in cheaters, ref
        verdict = verdicts[ref["id"]]
        assert verdict.winner == ref["winner"]
        assert verdict.reason in reasons
        assert any(s.dispute == ref["id"] and s.account == operator[loser] for s in slashes)
    assert {s.account for s in slashes} <= cheating_operators
    assert all(s.amount > 0 for s in slashes)  # staked: a conviction costs real stake
    losses = [e for e in entries if isinstance(e, ReputationEntry) and e.delta < 0]
    assert {e.account for e in losses} <= cheaters
    state = httpx.get(f"{net.url}/v1/ledger/state", timeout=30).json()
    for node in net.nodes:
        account = state["accounts"][operator[str(node.node_id)]]
        if node.node_id in cheaters:
            assert account["stake"] < STAKE
        else:
            assert account["stake"] == STAKE
            assert account["slashes"] == 0


def test_spot_1_checks_every_answer_and_a_wrong_output_is_disputed_and_slashed(
    pair: LocalNetwork,
) -> None:
    cheater = pair.nodes[0].node_id
    assert cheater is not None
    for _ in range(2):  # the cheater as the primary, or as the checker: convicted either way
        answer = infer(pair, "spot:1")
        verdict = answer["verdict"]
        assert verdict["outcome"] == "accepted"
        assert verdict["spot"]["checked"] is True
        assert {n["id"] for n in answer["nodes"]} == {n.node_id for n in pair.nodes}
        assert len(verdict["agreeing"]) == 1
        assert cheater not in verdict["agreeing"]
        # The request's revealed draw secret decides the check, and it is the one every job
        # committed to, inside every receipt.
        secret = bytes.fromhex(verdict["draw"]["secret"])
        assert spot_checked(Policy.parse("spot:1"), secret)
        commitment = spot_commitment(secret)
        assert all(predicate(r).spot == commitment for r in answer["receipts"])
        check_only_cheater_convicted(pair, answer, cheater)


def test_spot_check_rate_follows_p_and_unchecked_answers_are_accepted_alone(
    pair: LocalNetwork,
) -> None:
    answer = infer(pair, "spot:0.0001")
    verdict = answer["verdict"]
    assert verdict["spot"]["checked"] is False
    assert len(answer["receipts"]) == 1
    assert "disputes" not in verdict


def test_quorum_outvotes_a_wrong_node_and_its_dissent_is_slashed(
    wrong_output: LocalNetwork,
) -> None:
    cheater = wrong_output.nodes[0].node_id
    assert cheater is not None
    answer = infer(wrong_output, "quorum:3/2")
    verdict = answer["verdict"]
    assert verdict["outcome"] == "accepted"
    assert len(verdict["agreeing"]) == 2
    assert cheater not in verdict["agreeing"]
    assert [d["defendant"] for d in verdict["disputes"]] == [cheater]
    assert verdict["disputes"][0]["winner"] == "challenger"
    check_only_cheater_convicted(wrong_output, answer, cheater)
    state = httpx.get(f"{wrong_output.url}/v1/ledger/state", timeout=30).json()
    assert state["accounts"][cheater]["reputation"] <= -100
    assert not state["disputes"]  # settled before the inference was logged


def test_optimistic_answers_carry_a_trace_and_a_final_time(wrong_output: LocalNetwork) -> None:
    answer = infer(wrong_output, "optimistic:10m")
    assert answer["verdict"]["outcome"] == "accepted"
    assert "final_after" in answer["verdict"]
    assert predicate(answer["receipts"][0]).trace is not None


@pytest.mark.parametrize("mode", ["impersonate", "replay"])
def test_forged_and_replayed_receipts_are_refused_before_any_vote(
    tmp_path: Path, model_folder: Path, mode: str
) -> None:
    net = network(tmp_path / "net", model_folder, nodes=3, byzantine={0: mode})
    try:
        cheater = net.nodes[0].node_id
        for attempt in range(3):
            answer = infer(net, "quorum:3/2")
            assert answer["verdict"]["outcome"] == "accepted"
            assert "disputes" not in answer["verdict"]
            if mode == "impersonate" or attempt > 0:  # a replaying node's first answer is honest
                assert cheater not in [n["id"] for n in answer["nodes"]]
        # Refused at the receipt check: never a vote, so never a challenge in the log.
        assert not [e for e in log_entries(net) if isinstance(e, ChallengeEntry)]
    finally:
        net.stop()


def test_tolerance_mode_accepts_honest_nodes_on_other_thread_counts_and_convicts_fp16(
    tmp_path: Path, model_folder: Path
) -> None:
    net = LocalNetwork(
        tmp_path / "net",
        nodes=3,
        port=0,
        byzantine={0: "fp16"},
        threads={1: 1, 2: 4},
        stake=STAKE,
        min_stake=1,
        start_timeout=60,
    )
    try:
        net.start()
        with Client(net.url, log_vkey=net.log_vkey) as client:
            client.publish(model_folder, model_folder.parent / "publisher.key")
        cheater = net.nodes[0].node_id
        assert cheater is not None
        answer = infer(net, "quorum:3/2,tolerance")
        verdict = answer["verdict"]
        assert verdict["mode"] == "tolerance"
        assert verdict["outcome"] == "accepted"
        assert cheater not in verdict["agreeing"]
        # Every answer's outputs come back, so a client can recompute the comparison.
        assert [a["node"] for a in answer["answers"]] == [n["id"] for n in answer["nodes"]]
        check_only_cheater_convicted(net, answer, cheater)
    finally:
        net.stop()


@pytest.mark.parametrize(
    ("mode", "reasons"),
    [("substitute", ("referee",)), ("lazy", ("inconsistent", "invalid-proof", "timeout"))],
)
def test_quorum_convicts_a_substituting_or_lazy_node(
    tmp_path: Path, model_folder: Path, mode: str, reasons: tuple[str, ...]
) -> None:
    net = network(tmp_path / "net", model_folder, nodes=3, byzantine={0: mode})
    try:
        cheater = net.nodes[0].node_id
        assert cheater is not None
        answer = infer(net, "quorum:3/2")
        assert answer["verdict"]["outcome"] == "accepted"
        assert cheater not in answer["verdict"]["agreeing"]
        check_only_cheater_convicted(net, answer, cheater, reasons=reasons)
    finally:
        net.stop()


def test_colluders_are_outvoted_by_an_honest_majority_and_each_is_slashed(
    tmp_path: Path, model_folder: Path
) -> None:
    net = network(tmp_path / "net", model_folder, nodes=5, byzantine={0: "collude", 1: "collude"})
    try:
        colluders = {net.nodes[0].node_id, net.nodes[1].node_id}
        assert None not in colluders
        answer = infer(net, "quorum:5/3")
        verdict = answer["verdict"]
        assert verdict["outcome"] == "accepted"
        assert len(verdict["agreeing"]) == 3
        assert not colluders & set(verdict["agreeing"])
        assert {d["defendant"] for d in verdict["disputes"]} == colluders
        first, second = sorted(str(c) for c in colluders)
        check_only_cheater_convicted(net, answer, first, others=frozenset({second}))
    finally:
        net.stop()


def test_spot_half_detects_exactly_the_checked_cheats_and_each_ends_in_a_slash(
    pair: LocalNetwork,
) -> None:
    """Every request of the pair involves the cheater (as primary or as checker), so every
    checked request is a detection and every unchecked one is a cheat that escaped when the
    cheater answered. Over n requests the detections follow Binomial(n, P): the count stays
    within 4.5 sigma of n*P, and each detection is one slash of the cheater in the log."""
    cheater = pair.nodes[0].node_id
    # Each conviction halves the cheater's stake; below the minimum it would get no jobs and a
    # drawn check would find no checker. Enough stake for every conviction this test can cause.
    pair.fund_nodes(1 << 40, pair.nodes[:1])
    time.sleep(1.5)  # the coordinator reads node lists through a one-second cache
    slashes_before = sum(isinstance(e, SlashEntry) for e in log_entries(pair))
    n, p = 24, 0.5
    checked = 0
    for _ in range(n):
        verdict = infer(pair, "spot:0.5")["verdict"]
        if verdict["spot"]["checked"]:
            checked += 1
            assert cheater not in verdict["agreeing"]
            assert len(verdict["disputes"]) == 1
        else:
            assert "disputes" not in verdict
    slashes = [e for e in log_entries(pair) if isinstance(e, SlashEntry)]
    assert len(slashes) - slashes_before == checked
    assert {e.account for e in slashes} == {pair.operator_id(pair.nodes[0])}
    sigma = (n * p * (1 - p)) ** 0.5
    assert abs(checked - n * p) <= 4.5 * sigma
