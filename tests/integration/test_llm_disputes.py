"""Issue 5's policies applied to LLM answers on a real network: a node that swaps one token
(``wrong-output``) is not only outvoted or rejected, it is convicted and slashed. Three
llama.cpp nodes of three operators serve SmolLM2-135M, staked; node 0 cheats. A disagreement
(quorum dissent, a spot check that came out different, a failed prefill check) is settled by a
third operator's prefill check, and the conviction is in the log: challenge, verdict, slash,
reputation. The SDK verifies every answer, disputes included."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from _llm import make_smollm2_folder
from _logread import logged_entries
from veriml.client import Client, LocalNetwork, Watcher
from veriml.core.keys import generate_key, load_private_key
from veriml.ledger.entries import DisputeVerdictEntry, SlashEntry, parse_entry

pytestmark = pytest.mark.slow

STAKE = 1000
MESSAGES = [{"role": "user", "content": "Name three colours."}]
GREEDY = {"max_tokens": 12, "temperature": 0}


@contextlib.contextmanager
def _network(root: Path) -> Iterator[LocalNetwork]:
    folder = make_smollm2_folder(root / "smollm2", name="smollm2", version="1.0.0")
    generate_key("ec").save(root / "publisher.key")
    network = LocalNetwork(
        root / "net",
        nodes=3,
        port=0,
        byzantine={0: "wrong-output"},
        stake=STAKE,
        min_stake=1,
        start_timeout=120,
    )
    try:
        network.start()
        with Client(network.url, log_vkey=network.log_vkey) as client:
            client.publish(folder, root / "publisher.key")
        yield network
    finally:
        network.stop()


@pytest.fixture
def net(tmp_path: Path) -> Iterator[LocalNetwork]:
    """A fresh network per test: once convicted, the cheater's reputation puts it last in line
    for jobs, so each test starts before any conviction."""
    with _network(tmp_path) as network:
        yield network


def _ledger_entries(net: LocalNetwork) -> list[Any]:
    raw = logged_entries(net.url, net.log_vkey)
    kinds = ("verdict", "slash")
    return [parse_entry(data) for data in raw if json.loads(data)["type"] in kinds]


def _convicted(net: LocalNetwork, disputes: list[dict[str, Any]]) -> set[str]:
    """The losers of ``disputes``, checked against their logged verdicts."""
    verdicts = {e.dispute: e for e in _ledger_entries(net) if isinstance(e, DisputeVerdictEntry)}
    losers = set()
    for ref in disputes:
        logged = verdicts[ref["id"]]
        assert logged.winner == ref["winner"]
        assert logged.op_type == "prefill"
        assert "prefill-check" in logged.referee
        losers.add(ref["defendant"] if ref["winner"] == "challenger" else ref["challenger"])
    return losers


def test_a_watcher_prefill_checks_logged_completions_and_gets_the_cheater_slashed(
    net: LocalNetwork, tmp_path: Path
) -> None:
    """The watcher (issue 6 §3: "the watcher can use it too") re-checks logged completions
    with its own prefill check; each rejected one is challenged, the coordinator has another
    operator's node check it, and the cheater is convicted. Honest answers match."""
    cheater = net.nodes[0].node_id

    def ask(_: int) -> str:
        with Client(net.url, log_vkey=net.log_vkey) as client:
            reply = client.chat(
                "smollm2", MESSAGES, policy="none", verify=False, public=True, **GREEDY
            )
            return str(reply.verdict.agreeing[0])

    # Concurrent requests spread over the nodes by load (sequential ones would all go to the
    # node that has the model cached), so the cheater answers some of them.
    answered: set[str] = set()
    # The draw picks nodes at random: rounds until the cheater has answered (each round misses
    # it with probability about (2/3)^3, so eight rounds miss it about once in 15,000 runs).
    with ThreadPoolExecutor(max_workers=3) as pool:
        for _ in range(8):
            answered |= set(pool.map(ask, range(3)))
            if cheater in answered and len(answered) > 1:
                break
    watcher_key = generate_key()
    admin = load_private_key(net.home / "coordinator" / "coordinator.key", kind="ed25519")
    with Client(net.url, log_vkey=net.log_vkey, key=watcher_key) as client:
        client.deposit(watcher_key.key_id, 1000, admin)  # each challenge locks the rules' bond
        watcher = Watcher(client, sample=1.0, seed=1, cache_dir=tmp_path / "cache")
        with watcher:
            checked = watcher.poll()
    llm = [c for c in checked if c.result in ("match", "mismatch")]
    assert llm
    for c in llm:
        if c.node == cheater:
            assert c.result == "mismatch", c
            assert c.winner == "challenger", c
        else:
            assert c.result == "match", c
    assert cheater in answered
    assert [c for c in llm if c.result == "mismatch"]
    slashes = [e for e in _ledger_entries(net) if isinstance(e, SlashEntry)]
    assert {e.account for e in slashes} == {net.operator_id(net.nodes[0])}  # its operator pays
    accounts = httpx.get(net.url + "/v1/ledger/state", timeout=30).json()["accounts"]
    assert accounts[watcher_key.key_id]["balance"] > 1000  # every bond back, and the rewards


def test_llm_cheats_are_convicted_and_only_the_cheater_is_slashed(net: LocalNetwork) -> None:
    cheater = net.nodes[0].node_id
    assert cheater is not None
    operator = net.operator_id(net.nodes[0])  # a conviction slashes the node's operator
    with Client(net.url, log_vkey=net.log_vkey) as client:
        # prefill: when the cheater generates, the checker's failed check convicts it (first:
        # once convicted, its reputation puts it last in line to generate).
        # The SDK refuses a rejected answer (verification fails closed), so read it unverified.
        for _ in range(12):
            checked = client.chat("smollm2", MESSAGES, policy="prefill", verify=False, **GREEDY)
            if checked.verdict.outcome == "rejected":
                refs = checked.response["veriml"]["verdict"]["disputes"]
                assert _convicted(net, refs) == {cheater}
                break
        else:
            pytest.fail("the scheduler never had the cheater generate under prefill")
        # quorum:3/2: the two honest nodes agree; the cheater's dissent is prefill-checked by
        # the third operator and convicted.
        quorum = client.chat("smollm2", MESSAGES, policy="quorum:3/2", **GREEDY)
        assert quorum.verdict.outcome == "accepted"
        assert cheater not in quorum.verdict.agreeing
        assert _convicted(net, quorum.response["veriml"]["verdict"]["disputes"]) == {cheater}
    slashes = [e for e in _ledger_entries(net) if isinstance(e, SlashEntry)]
    assert slashes
    assert {e.account for e in slashes} == {operator}
    accounts = httpx.get(net.url + "/v1/ledger/state", timeout=30).json()["accounts"]
    assert accounts[operator]["stake"] < STAKE
    for node in net.nodes[1:]:
        honest = net.operator_id(node)
        assert accounts[honest]["stake"] == STAKE
        assert accounts[honest]["slashes"] == 0
