"""What each verification policy costs relative to ``none``, in node compute and in latency
(goals: docs/verification.md, "Comparison"): ``quorum:3/2`` ≤ 3.2× compute, ``spot:0.1`` ≤
1.15× compute.

A local network (a coordinator and three nodes of distinct operators, as ``veriml up`` starts
them; SQLite) serves a seeded MLP 256-1024-1024-10 (batch 4, float32), so a job runs a model
of about 10 MFLOP besides its HTTP, JSON and receipt work. The policies are measured in
interleaved rounds (``none``, ``quorum:3/2``, ``spot:0.1``, then again), so drift on this
shared machine hits them alike; each round sends every policy the same requests, one after
another (for latency) and then a batch at concurrency 8.

- **Node compute**: the user + system CPU time of the three node processes
  (``/proc/<pid>/stat``), summed over the measured requests, less what idle nodes spend in
  the same time (heartbeats; measured before the rounds: ``nodes_idle_cpu_ms_per_s``), per
  request. It counts every job a policy causes (a spot check's second execution included)
  and nothing of the coordinator's. ``<policy>_compute_ratio`` = that ÷ the same for
  ``none``: ``quorum:3/2`` runs three jobs where ``none`` runs one, ``spot:0.1`` one plus
  a check one time in ten, so about 3 and 1.1 are expected.
- **Latency**: the client's p50 over the sequential requests (coordinator, nodes, log
  inclusion); ``<policy>_latency_ratio`` = p50 ÷ ``none``'s p50.
- ``<policy>_jobs_per_request``: receipts per answer, the count the compute ratio should
  follow; ``spot_0_1_checked_fraction``: the share of ``spot:0.1`` answers whose revealed
  secret drew a check (binomial: its standard error is √(0.09/n)).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from veriml.client import Client, LocalNetwork
from veriml.core.keys import generate_key
from veriml.core.tensors import tensor_to_json
from veriml.models.examples import build_mlp, write_example_folder

POLICIES = ("none", "quorum:3/2", "spot:0.1")
CONCURRENCY = 8
SIZES = (256, 1024, 1024, 10)
BATCH = 4


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (``/proc/<pid>/stat``), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_cpu(net: LocalNetwork, seconds: float) -> float:
    """CPU seconds per second the nodes spend with no request in flight (heartbeats)."""
    pids = [n.pid for n in net.nodes]
    before = sum(_cpu_seconds(p) for p in pids)
    t0 = time.perf_counter()
    time.sleep(seconds)
    return (sum(_cpu_seconds(p) for p in pids) - before) / (time.perf_counter() - t0)


def _key(policy: str) -> str:
    """``quorum:3/2`` -> ``quorum_3_2``, ``spot:0.1`` -> ``spot_0_1``: result field names."""
    return policy.replace(":", "_").replace("/", "_").replace(".", "_")


@dataclass
class _Tally:
    """What one policy cost over every round."""

    requests: int = 0
    node_cpu: float = 0.0
    jobs: int = 0
    checked: int = 0
    batch_seconds: float = 0.0
    batch_requests: int = 0
    latencies: list[float] = field(default_factory=list)

    def count(self, answers: Sequence[dict[str, Any]]) -> None:
        self.requests += len(answers)
        for answer in answers:
            self.jobs += len(answer["receipts"])
            spot = answer["verdict"].get("spot")
            self.checked += bool(spot and spot["checked"])


def _sequential(
    client: httpx.Client, body: dict[str, Any], count: int
) -> tuple[list[dict[str, Any]], list[float]]:
    """``count`` requests one after another: the answers and each one's latency (seconds)."""
    answers, latencies = [], []
    for _ in range(count):
        t0 = time.perf_counter()
        response = client.post("/v1/inferences", json=body)
        response.raise_for_status()
        latencies.append(time.perf_counter() - t0)
        answers.append(response.json())
    return answers, latencies


async def _concurrent(url: str, body: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """``count`` requests at concurrency CONCURRENCY: the answers."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    answers: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        queue = iter(range(count))

        async def worker() -> None:
            for _ in queue:
                response = await client.post("/v1/inferences", json=body)
                response.raise_for_status()
                answers.append(response.json())

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return answers


def _round(
    net: LocalNetwork,
    client: httpx.Client,
    bodies: dict[str, dict[str, Any]],
    tallies: dict[str, _Tally],
    sequential: int,
    concurrent: int,
    idle: float,
) -> None:
    """One round: every policy, the same requests, its node CPU time measured around them
    (less ``idle`` CPU seconds per second, what the nodes spend without requests)."""
    pids = [n.pid for n in net.nodes]
    for policy in POLICIES:
        tally = tallies[policy]
        before = sum(_cpu_seconds(p) for p in pids)
        started = time.perf_counter()
        answers, latencies = _sequential(client, bodies[policy], sequential)
        t0 = time.perf_counter()
        batch = asyncio.run(_concurrent(net.url, bodies[policy], concurrent))
        done = time.perf_counter()
        tally.batch_seconds += done - t0
        spent = sum(_cpu_seconds(p) for p in pids) - before
        tally.node_cpu += max(0.0, spent - idle * (done - started))
        tally.batch_requests += len(batch)
        tally.latencies += latencies
        tally.count(answers + batch)


def run(quick: bool) -> dict[str, Any]:
    rounds, sequential, concurrent = (2, 15, 15) if quick else (6, 60, 60)
    with tempfile.TemporaryDirectory(prefix="veriml-bench-policies-") as tmp_name:
        tmp = Path(tmp_name)
        folder = write_example_folder(tmp / "mlp", build_mlp(SIZES, seed=0), name="mlp")
        key = tmp / "publisher.key"
        generate_key("ec").save(key)
        x = np.random.default_rng(0).standard_normal((BATCH, SIZES[0])).astype(np.float32)
        inputs = {"x": tensor_to_json(x)}
        bodies = {p: {"model": "mlp", "inputs": inputs, "policy": p} for p in POLICIES}
        tallies = {p: _Tally() for p in POLICIES}
        with LocalNetwork(tmp / "net", nodes=3, port=0) as net:
            with Client(net.url, log_vkey=net.log_vkey) as sdk:
                sdk.publish(folder, key)
            with httpx.Client(base_url=net.url, timeout=120) as client:
                # Every node pulls and loads the model (quorum:3/2 asks all three) first.
                for policy in POLICIES:
                    _sequential(client, bodies[policy], 6)
                idle = _idle_cpu(net, 2.0 if quick else 6.0)
                for _ in range(rounds):
                    _round(net, client, bodies, tallies, sequential, concurrent, idle)
    none = tallies["none"]
    base_cpu = none.node_cpu / none.requests
    base_p50 = statistics.median(none.latencies)
    result: dict[str, Any] = {
        "description": (
            f"{rounds} interleaved rounds of {sequential} sequential + {concurrent} concurrent "
            f"(concurrency {CONCURRENCY}) requests per policy to 3 nodes of distinct "
            f"operators, MLP {'-'.join(map(str, SIZES))} (batch {BATCH}); node compute = CPU "
            "time of the node processes (/proc/<pid>/stat) less their idle rate, per request; "
            "latency = client p50 of the sequential requests; ratios are ÷ none."
        ),
        "nodes_idle_cpu_ms_per_s": idle * 1e3,
    }
    for policy in POLICIES:
        tally = tallies[policy]
        name = _key(policy)
        cpu = tally.node_cpu / tally.requests
        p50 = statistics.median(tally.latencies)
        result[f"{name}_node_cpu_ms_per_req"] = cpu * 1e3
        result[f"{name}_p50_ms"] = p50 * 1e3
        result[f"{name}_req_per_s"] = tally.batch_requests / tally.batch_seconds
        result[f"{name}_jobs_per_request"] = tally.jobs / tally.requests
        if policy != "none":
            result[f"{name}_compute_ratio"] = cpu / base_cpu
            result[f"{name}_latency_ratio"] = p50 / base_p50
    spot = tallies["spot:0.1"]
    result["spot_0_1_requests"] = spot.requests
    result["spot_0_1_checked_fraction"] = spot.checked / spot.requests
    result["goals_max"] = {"quorum_3_2_compute_ratio": 3.2, "spot_0_1_compute_ratio": 1.15}
    return result


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
