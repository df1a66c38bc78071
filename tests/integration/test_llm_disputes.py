"""Issue 5's policies applied to LLM answers on a real network: a node that swaps one token
(``wrong-output``) is not only outvoted or rejected, it is convicted and slashed. Three
llama.cpp nodes of three operators serve SmolLM2-135M, staked; node 0 cheats. A disagreement
(quorum dissent, a spot check that came out different, a failed prefill check) is settled by a
third operator's prefill check, and the conviction is in the log: challenge, verdict, slash,
reputation. The SDK verifies every answer, disputes included."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from _llm import make_smollm2_folder
from veriml.client import Client, LocalNetwork
from veriml.core.keys import generate_key
from veriml.ledger.entries import DisputeVerdictEntry, SlashEntry, parse_entry
from veriml.tlog import LogClient, NoteVerifier

pytestmark = pytest.mark.slow

STAKE = 1000
MESSAGES = [{"role": "user", "content": "Name three colours."}]
GREEDY = {"max_tokens": 12, "temperature": 0}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    root = tmp_path_factory.mktemp("llm-disputes")
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


def _ledger_entries(net: LocalNetwork) -> list[Any]:
    verifier = NoteVerifier.from_vkey(net.log_vkey)
    with LogClient(net.url + "/log/", verifier) as log:
        signed = log.checkpoint()
        reader = log.hash_reader(signed)
        raw: list[bytes] = []
        bundle = 0
        while len(raw) < signed.checkpoint.size:
            raw += reader.read_entry_bundle(bundle)
            bundle += 1
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


def test_llm_cheats_are_convicted_and_only_the_cheater_is_slashed(net: LocalNetwork) -> None:
    cheater = net.nodes[0].node_id
    assert cheater is not None
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
    assert {e.account for e in slashes} == {cheater}
    accounts = httpx.get(net.url + "/v1/ledger/state", timeout=30).json()["accounts"]
    assert accounts[cheater]["stake"] < STAKE
    for node in net.nodes[1:]:
        assert accounts[node.node_id]["stake"] == STAKE
        assert accounts[node.node_id]["slashes"] == 0
