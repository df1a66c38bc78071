"""The minimum-stake rule in a real local network: nodes of unstaked operators get no jobs;
once ``LocalNetwork(stake=...)`` has deposited and staked for their operators (signed by the
coordinator's admin key and each operator's own key), they answer, the ledger shows every
stake, and a client that asks for more stake than an operator has refuses its answer."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from veriml.client import Client, LocalNetwork
from veriml.core.errors import VerificationError
from veriml.core.keys import generate_key
from veriml.core.tensors import tensor_to_json
from veriml.models.examples import build_mlp, write_example_folder

pytestmark = pytest.mark.slow

X = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)


def test_nodes_need_the_minimum_stake_to_receive_jobs(tmp_path: Path) -> None:
    folder = write_example_folder(tmp_path / "mlp", build_mlp((4, 8, 3), seed=1), name="mlp")
    generate_key("ec").save(tmp_path / "publisher.key")
    body = {"model": "mlp", "inputs": {"x": tensor_to_json(X)}, "policy": "none"}
    with LocalNetwork(
        tmp_path / "home", nodes=2, port=0, stake=0, min_stake=100, node_args=("--heartbeat", "1")
    ) as net:
        with Client(net.url, log_vkey=net.log_vkey) as client:
            client.publish(folder, tmp_path / "publisher.key")
        refused = httpx.post(f"{net.url}/v1/inferences", json=body, timeout=60)
        assert refused.status_code == 503, refused.text  # registered and live, but unstaked
        net.fund_nodes(250, net.nodes[:1])
        state = httpx.get(f"{net.url}/v1/ledger/state").json()
        staked = {a for a, acct in state["accounts"].items() if acct["stake"] == 250}
        assert staked == {net.operator_id(net.nodes[0])}  # the stake is the operator's
        deadline = time.monotonic() + 10  # the coordinator caches node lookups for a second
        while True:
            answer = httpx.post(f"{net.url}/v1/inferences", json=body, timeout=60)
            if answer.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert answer.status_code == 200, answer.text
        assert [n["id"] for n in answer.json()["nodes"]] == [net.nodes[0].node_id]
        with Client(net.url, log_vkey=net.log_vkey) as client:
            result = client.infer("mlp", {"x": X})  # verified end to end
        assert "bonds" in result.verified
        # A client may ask for more stake than the network's rule: 250 is not enough for 300.
        with (
            Client(net.url, log_vkey=net.log_vkey, min_stake=300) as client,
            pytest.raises(VerificationError) as refused_by_client,
        ):
            client.infer("mlp", {"x": X})
        assert refused_by_client.value.check == "bonds"


def test_a_staked_network_funds_every_node(tmp_path: Path) -> None:
    with LocalNetwork(
        tmp_path / "home", nodes=2, port=0, stake=500, min_stake=100, node_args=("--heartbeat", "1")
    ) as net:
        accounts = httpx.get(f"{net.url}/v1/ledger/state").json()["accounts"]
        operators = {net.operator_id(node) for node in net.nodes}
        assert len(operators) == 2  # each node its own operator
        for operator in operators:
            assert accounts[operator]["stake"] == 500
            assert accounts[operator]["balance"] == 0
