"""Issue 6 §3 on a real network: nodes that cheat on LLM completions are caught by the prefill
check. Three llama.cpp nodes of three operators serve SmolLM2-135M: node 0 swaps one token in
the middle of every completion (``wrong-output``), node 1 answers with another computation's
completion (``substitute``: another seed at temperature 1, standing for a smaller or cheaper
model), node 2 is honest. Each cheat signs its lie correctly, so only the check can tell."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from _llm import make_smollm2_folder
from veriml.client import Client, LocalNetwork
from veriml.core.completion import open_completion
from veriml.core.dsse import Envelope
from veriml.core.keys import VerifyingKey, generate_key
from veriml.protocol.prefill_check import open_prefill_check

pytestmark = pytest.mark.slow

TIMEOUT = 300
PROMPTS = [
    "Name three colours.",
    "What is the capital of France?",
    "Count from one to five.",
    "Say hello in Spanish.",
    "Name a large animal.",
    "What do bees make?",
    "Name a planet.",
    "What colour is grass?",
]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    root = tmp_path_factory.mktemp("llm-cheats")
    folder = make_smollm2_folder(root / "smollm2", name="smollm2", version="1.0.0")
    generate_key("ec").save(root / "publisher.key")
    network = LocalNetwork(
        root / "net",
        nodes=3,
        port=0,
        byzantine={0: "wrong-output", 1: "substitute"},
        start_timeout=120,
    )
    try:
        network.start()
        with Client(network.url, log_vkey=network.log_vkey) as client:
            client.publish(folder, root / "publisher.key")
        yield network
    finally:
        network.stop()


def _keys(net: LocalNetwork) -> dict[str, VerifyingKey]:
    nodes = httpx.get(net.url + "/v1/nodes").json()["nodes"]
    return {n["node_id"]: VerifyingKey.from_pem(n["public_key"].encode()) for n in nodes}


def _chat(net: LocalNetwork, prompt: str, policy: str) -> dict[str, Any]:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 12,
        "temperature": 0,
        "veriml": {"policy": policy},
    }
    response = httpx.post(net.url + "/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_the_prefill_check_rejects_every_cheat_and_accepts_every_honest_completion(
    net: LocalNetwork,
) -> None:
    """Every completion is checked by another operator's node (checks are honest: the
    byzantine modes lie only when they generate). A cheat is rejected, and the wrong-output
    node's swap is caught at the middle token where it swapped. Each cheater generates until
    its first conviction; after that its reputation puts it last in line."""
    modes = {
        net.nodes[0].node_id: "wrong-output",
        net.nodes[1].node_id: "substitute",
        net.nodes[2].node_id: "honest",
    }
    keys = _keys(net)
    seen: dict[str, int] = {}
    for prompt in PROMPTS * 3:
        veriml = _chat(net, prompt, "prefill")["veriml"]
        generator, checker = (n["id"] for n in veriml["nodes"])
        assert generator != checker
        # The generator's receipt is well signed whatever it did...
        open_completion(Envelope.from_json(veriml["receipts"][0]), keys[generator])
        check = open_prefill_check(Envelope.from_json(veriml["receipts"][1]), keys[checker])
        mode = modes[generator]
        seen[mode] = seen.get(mode, 0) + 1
        # ...and the verdict follows the check: every cheat rejected, the truth accepted.
        if mode == "honest":
            assert check.accepted, (prompt, check.report)
            assert veriml["verdict"]["outcome"] == "accepted"
        else:
            assert not check.accepted, (mode, prompt, check.report)
            assert check.report["first_failure"] is not None
            assert veriml["verdict"]["outcome"] == "rejected"
            assert [d["defendant"] for d in veriml["verdict"]["disputes"]] == [generator]
        if mode == "wrong-output":
            assert check.report["first_failure"] == len(veriml["completion_tokens"]) // 2
        if len(seen) == 3 and seen["honest"] >= 2:
            break
    assert set(seen) == {"wrong-output", "substitute", "honest"}, seen
