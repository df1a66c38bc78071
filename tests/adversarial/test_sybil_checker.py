"""Red team: a Sybil checker cannot get an honest LLM node convicted (docs/threat-model.md §1).

Three llama.cpp nodes of three bonded operators serve SmolLM2-135M. Node 2's operator is the
attacker: its node answers honestly but signs a rejection of every completion it is asked to
prefill-check. Before, one signed rejection convicted the generator; now a rejection convicts
no one until a node of yet another operator confirms it, so:

- under ``prefill``, a completion the liar rejects is checked again by the third operator,
  who accepts it: no dispute, no slash, and the honest generator keeps its stake;
- nothing the liar signed earns it a reward.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from _llm import make_smollm2_folder
from _logread import logged_entries
from veriml.client import Client, LocalNetwork
from veriml.core.keys import generate_key
from veriml.ledger.entries import parse_entry

pytestmark = pytest.mark.slow

STAKE = 1000
MESSAGES = [{"role": "user", "content": "Name three colours."}]
GREEDY = {"max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    root = tmp_path_factory.mktemp("sybil-checker")
    folder = make_smollm2_folder(root / "smollm2", name="smollm2", version="1.0.0")
    generate_key("ec").save(root / "publisher.key")
    with LocalNetwork(
        root / "net",
        nodes=3,
        port=0,
        byzantine={2: "false-check"},
        stake=STAKE,
        witnesses=0,
        start_timeout=120,
    ) as network:
        with Client(network.url, log_vkey=network.log_vkey) as client:
            client.publish(folder, root / "publisher.key")
        yield network


def _logged_types(net: LocalNetwork) -> list[str]:
    raw = logged_entries(net.url, net.log_vkey)
    return [type(parse_entry(data)).__name__ for data in raw]


def test_a_lying_checker_convicts_no_honest_generator(net: LocalNetwork) -> None:
    liar = str(net.nodes[2].node_id)
    checked_by_liar: list[dict[str, Any]] = []
    with Client(net.url, log_vkey=net.log_vkey) as client:
        for attempt in range(12):  # until the liar is drawn as the first checker
            reply = client.chat(
                "smollm2",
                MESSAGES,
                policy="prefill",
                verify=False,
                request_id=f"sybil-check-{attempt}",
                **GREEDY,
            )
            veriml = reply.response["veriml"]
            nodes = [n["id"] for n in veriml["nodes"]]
            if nodes[0] != liar and liar in nodes[1:]:
                checked_by_liar.append(veriml)
                break
    assert checked_by_liar, "the liar was never drawn to check an honest generator"
    verdict = checked_by_liar[0]["verdict"]
    assert not verdict.get("disputes"), verdict  # nobody convicted on one operator's word
    types = _logged_types(net)
    assert "SlashEntry" not in types, types
    assert "RewardEntry" not in types, types
    accounts = httpx.get(net.url + "/v1/ledger/state", timeout=30).json()["accounts"]
    for node in net.nodes:
        assert accounts[net.operator_id(node)]["stake"] == STAKE
