"""Red team: who runs a request is drawn, not chosen (docs/threat-model.md §1, §5).

On a real network of four equally staked operators:

- work is spread: 40 sequential ``spot:0.5`` requests (a new user's first session) reach every
  node, and no node takes the lion's share (before the draw, two nodes got every job);
- a client cannot steer the draw with the request ids it picks: ids chosen to look alike
  spread just the same, and the schedule of an id follows from the request's draw secret alone
  (one secret per id and epoch, revealed in the verdict);
- a node cannot attract work by what it reports: its heartbeat's load is not an input
  (``tests/unit/coordinator/test_scheduler.py`` pins the order's inputs one by one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from veriml.client import Client, LocalNetwork
from veriml.core.keys import generate_key
from veriml.models.examples import build_mlp, write_example_folder

pytestmark = pytest.mark.slow

X = {"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)}
NODES = 4
REQUESTS = 40


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    tmp = tmp_path_factory.mktemp("fair")
    folder = write_example_folder(tmp / "mlp", build_mlp((4, 16, 3), seed=3), name="mlp")
    key = tmp / "publisher.key"
    generate_key("ec").save(key)
    with LocalNetwork(tmp / "net", nodes=NODES, port=0, witnesses=0) as network:
        with Client(network.url, log_vkey=network.log_vkey) as client:
            client.publish(folder, key)
        yield network


def _jobs(net: LocalNetwork, ids: list[str | None]) -> Counter[str]:
    """How many receipts each node signed over ``ids`` (None: the SDK picks the id)."""
    jobs: Counter[str] = Counter()
    with Client(net.url, log_vkey=net.log_vkey) as client:
        for request_id in ids:
            answer = client.infer("mlp", X, policy="spot:0.5", request_id=request_id)
            assert answer.verified
            jobs.update(n.id for n in answer.nodes)
    return jobs


def _assert_spread(net: LocalNetwork, jobs: Counter[str]) -> None:
    every = {str(n.node_id) for n in net.nodes}
    assert set(jobs) == every, f"nodes that got no job: {sorted(every - set(jobs))}"
    total = sum(jobs.values())
    # Each node's first-run share is 1/4 (10 of 40); half the total would take a draw far
    # in the tail (p < 1e-4 for any node), not the bias this test guards against.
    assert max(jobs.values()) < total / 2, jobs


def test_sequential_spot_requests_reach_every_node(net: LocalNetwork) -> None:
    _assert_spread(net, _jobs(net, [None] * REQUESTS))


def test_request_ids_a_client_picks_do_not_steer_the_draw(net: LocalNetwork) -> None:
    # Ids one character apart, as a client grinding for one node would try.
    _assert_spread(net, _jobs(net, [f"steer-{i:03d}" for i in range(REQUESTS)]))
