"""The SDK's verification cost: verified requests per second against the same requests with
``verify=False``, in one run, against one local network (a coordinator, three nodes of
distinct bonded operators and a witness, as ``veriml up`` starts them; SQLite).

``AsyncClient.infer`` at concurrency 32, alternating rounds of verified and unverified
requests so noise on this shared machine hits both alike (best round of each):

- ``sdk_verify_ratio`` = verified req/s ÷ unverified req/s, for ``none`` (goal ≥ 0.8);
- ``sdk_verify_quorum_ratio``: the same for ``quorum:3/2`` (three receipts, three operators'
  stake proofs, a longer verdict).

What a verified answer costs the client: the checkpoint note (the log's signature and the
witness's cosignature, cached per note), the cited entries' inclusion proofs (node
registrations, the ledger state, the model's provenance, all in the answer: no round trip),
the receipts' signatures, the stake proofs, the rebuilt inference entry's inclusion, the
verdict recomputed, and the consistency proof from the last checkpoint the client saw (also in
the answer, since the client tells the coordinator its size).
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from veriml.client import AsyncClient, LocalNetwork
from veriml.core.keys import generate_key
from veriml.models.examples import build_mlp, write_example_folder

CONCURRENCY = 32
GOAL = 0.8


async def _round(
    client: AsyncClient, x: np.ndarray[Any, Any], policy: str, count: int, verify: bool
) -> float:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        async with sem:
            await client.infer("mlp", {"x": x}, policy=policy, verify=verify)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return count / (time.perf_counter() - t0)


async def _compare(
    net: LocalNetwork, x: np.ndarray[Any, Any], policy: str, count: int, rounds: int
) -> tuple[float, float]:
    """(verified, unverified) req/s: the best of ``rounds`` alternating rounds of each."""
    best = {True: 0.0, False: 0.0}
    async with AsyncClient(net.url, log_vkey=net.log_vkey, checkpoints=False) as client:
        await _round(client, x, policy, CONCURRENCY, True)  # warm: nodes loaded, caches
        for _ in range(rounds):
            for verify in (False, True):
                best[verify] = max(best[verify], await _round(client, x, policy, count, verify))
    return best[True], best[False]


def run(quick: bool) -> dict[str, Any]:
    count, rounds = (64, 2) if quick else (192, 4)
    with tempfile.TemporaryDirectory(prefix="veriml-bench-sdk-") as tmp_name:
        tmp = Path(tmp_name)
        folder = write_example_folder(tmp / "mlp", build_mlp((16, 32, 3), seed=0), name="mlp")
        key = tmp / "publisher.key"
        generate_key("ec").save(key)
        x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
        with LocalNetwork(tmp / "net", nodes=3, port=0) as net:
            from veriml.client import Client

            with Client(net.url, log_vkey=net.log_vkey, checkpoints=False) as client:
                client.publish(folder, key)
            none_verified, none_plain = asyncio.run(_compare(net, x, "none", count, rounds))
            quorum_verified, quorum_plain = asyncio.run(
                _compare(net, x, "quorum:3/2", count, rounds)
            )
    return {
        "description": (
            f"AsyncClient.infer at concurrency {CONCURRENCY} against a local network (3 nodes "
            f"of bonded operators, a witness, SQLite), a 16-32-3 MLP: verified against "
            f"verify=False in alternating rounds ({rounds} x {count} requests each, best "
            f"round). Every answer carries the log entries it cites and a consistency proof "
            f"from the client's last checkpoint, so verifying needs no extra round trip."
        ),
        "sdk_verified_req_per_s": none_verified,
        "sdk_unverified_req_per_s": none_plain,
        "sdk_verify_ratio": none_verified / none_plain,
        "sdk_quorum_verified_req_per_s": quorum_verified,
        "sdk_quorum_unverified_req_per_s": quorum_plain,
        "sdk_verify_quorum_ratio": quorum_verified / quorum_plain,
        "goals": {"sdk_verify_ratio": GOAL},
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
