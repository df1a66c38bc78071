"""A byzantine node in a real local network (``veriml serve`` processes under ``LocalNetwork``):
it registers and serves like any node, says in its log that it cheats, and its answers differ
from the honest nodes', which agree with each other and with a local run."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from veriml.client import Client, LocalNetwork
from veriml.core.dsse import Envelope, Statement
from veriml.core.keys import generate_key
from veriml.core.tensors import tensor_digest, tensor_to_json
from veriml.models.examples import build_mlp, write_example_folder
from veriml.runtime import runner_for

pytestmark = pytest.mark.slow

X = np.array([[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, 3.0]], dtype=np.float32)


def _outputs(receipt: object) -> dict[str, str]:
    statement = Statement.from_bytes(Envelope.from_json(receipt).payload)
    return {s.name: s.digest.to_text() for s in statement.subjects}


def test_a_wrong_output_node_disagrees_with_the_honest_nodes(tmp_path: Path) -> None:
    folder = write_example_folder(tmp_path / "mlp", build_mlp((4, 8, 3), seed=2), name="mlp")
    generate_key("ec").save(tmp_path / "publisher.key")
    expected = {
        name: tensor_digest(a).to_text() for name, a in runner_for(folder).outputs({"x": X}).items()
    }
    with LocalNetwork(
        tmp_path / "home",
        nodes=3,
        port=0,
        byzantine={0: "wrong-output"},
        node_args=("--heartbeat", "1"),
        start_timeout=60,
    ) as net:
        with Client(net.url, log_vkey=net.log_vkey) as client:
            client.publish(folder, tmp_path / "publisher.key")
        cheater = net.nodes[0].node_id
        answers: dict[str, dict[str, str]] = {}
        for _ in range(2):  # every node answers a quorum of three
            response = httpx.post(
                f"{net.url}/v1/inferences",
                json={"model": "mlp", "inputs": {"x": tensor_to_json(X)}, "policy": "quorum:3/2"},
                timeout=120,
            )
            assert response.status_code == 200, response.text
            answer = response.json()
            for node, receipt in zip(answer["nodes"], answer["receipts"], strict=True):
                answers.setdefault(node["id"], _outputs(receipt))
                assert answers[node["id"]] == _outputs(receipt)  # each node is consistent
            assert cheater not in answer["verdict"]["agreeing"]
        log_text = net.nodes[0].log_path.read_text(errors="replace")
    assert set(answers) == {n.node_id for n in net.nodes}
    honest = [outputs for node_id, outputs in answers.items() if node_id != cheater]
    assert honest == [expected, expected]
    assert answers[cheater] != expected
    assert set(answers[cheater]) == set(expected)  # the same outputs, one value off
    assert "BYZANTINE" in log_text
    assert "wrong-output" in log_text
