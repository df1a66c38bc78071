"""A coordinator killed (SIGKILL) while inferences are in flight: each request is in the log
completely or not at all, every answer a client received is there, and after a restart on the
same state the network answers again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import veriml
from _operators import bond, operator_key
from _servers import free_port, serve, start_process
from veriml.core.dsse import Statement
from veriml.core.keys import VerifyingKey, generate_key
from veriml.core.tensors import tensor_to_json
from veriml.ledger.entries import InferenceEntry, parse_entry
from veriml.models import ModelPackage
from veriml.models.examples import build_mlp, write_example_folder
from veriml.node import NodeConfig, create_node_app
from veriml.runtime import Runner, RunResult
from veriml.tlog import LogClient, NoteVerifier
from veriml.verify.policy import Policy, decide

X = np.random.default_rng(11).standard_normal((3, 8)).astype(np.float32)
INPUTS = {"x": tensor_to_json(X)}
REQUESTS = 100


def _coordinator(home: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "veriml",
        "serve",
        "coordinator",
        "--home",
        str(home),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def _logged_entries(url: str, vkey: str) -> list[InferenceEntry]:
    with LogClient(f"{url}/log", NoteVerifier.from_vkey(vkey)) as log:
        signed = log.checkpoint()
        raw = [log.entry(i, signed)[0] for i in range(signed.checkpoint.size)]
    return [e for e in map(parse_entry, raw) if isinstance(e, InferenceEntry)]


def _check_complete(
    entry: InferenceEntry, keys: dict[str, VerifyingKey], operators: dict[str, str]
) -> None:
    """An entry is complete: every receipt verifies under its node's key and answers the
    entry's request, and the verdict is the one the receipts give."""
    answers = []
    for receipt in entry.receipts:
        predicate = RunResult.from_json({"outputs": {}, "receipt": receipt.to_json()}).predicate
        receipt.verify([keys[predicate.node_id]])
        assert predicate.request_id == entry.request_id
        assert predicate.request_digest == entry.request_digest
        subjects = Statement.from_bytes(receipt.payload).subjects
        answers.append(
            (predicate.node_id, operators[predicate.node_id], {s.name: s.digest for s in subjects})
        )
    # When the answer turns final and the request's draw are the coordinator's to record.
    verdict = entry.verdict
    recomputed = decide(
        Policy.parse(entry.policy), answers, final_after=verdict.final_after, draw=verdict.draw
    )
    assert recomputed == verdict


def test_a_coordinator_killed_mid_request_logs_each_request_completely_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VERIML_HEARTBEAT_INTERVAL", "1")  # read by the coordinator process
    home = tmp_path / "home"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    folder = write_example_folder(tmp_path / "mlp", build_mlp((8, 16, 3), seed=5), name="mlp")
    publisher = tmp_path / "publisher.key"
    generate_key("ec").save(publisher)
    output = tmp_path / "coordinator.log"
    with contextlib.ExitStack() as stack:
        coordinator = stack.enter_context(
            start_process(_coordinator(home, port), url_to_poll=f"{url}/healthz", output=output)
        )
        info = httpx.get(f"{url}/v1/info").json()
        pem = tmp_path / "coordinator.pub"
        pem.write_text(info["coordinator_key"])
        keys: dict[str, VerifyingKey] = {}
        operators: dict[str, str] = {}
        configs = [
            NodeConfig(
                coordinator_url=url,
                key_path=home / "nodes" / f"n{i}" / "node.key",
                operator_key=operator_key(home / "operators" / f"op-{i}" / "operator.key"),
                home=home / "nodes" / f"n{i}",
                port=free_port(),
                coordinator_key=pem,
                heartbeat_interval=1.0,
            )
            for i in range(2)
        ]
        bond(url, home, [c.operator_key for c in configs if c.operator_key is not None])
        for config in configs:
            stack.enter_context(serve(create_node_app(config), port=config.port))
        deadline = time.monotonic() + 30
        while len(keys) < 2:
            assert time.monotonic() < deadline, "nodes did not register"
            for node in httpx.get(f"{url}/v1/nodes").json()["nodes"]:
                keys[node["node_id"]] = VerifyingKey.from_pem(node["public_key"].encode())
                operators[node["node_id"]] = node["operator"]
            time.sleep(0.1)
        with veriml.Client(url, log_vkey=info["log_vkey"]) as client:
            client.publish(folder, publisher)

        received: list[dict[str, Any]] = []

        async def load() -> None:
            async with httpx.AsyncClient(timeout=30) as http:

                async def one() -> None:
                    body = {
                        "model": "mlp",
                        "inputs": INPUTS,
                        "policy": "quorum:2/2",
                        "visibility": "public",  # read back below by anyone
                    }
                    with contextlib.suppress(httpx.HTTPError):
                        response = await http.post(f"{url}/v1/inferences", json=body)
                        if response.status_code == 200:
                            received.append(response.json())

                tasks = [asyncio.create_task(one()) for _ in range(REQUESTS)]
                deadline = time.monotonic() + 60
                while len(received) < 3:
                    assert time.monotonic() < deadline, "no answers before the crash"
                    await asyncio.sleep(0.001)
                os.kill(coordinator.pid, signal.SIGKILL)
                await asyncio.gather(*tasks)

        asyncio.run(load())
        coordinator.wait(10)

        # The same state, restarted.
        with start_process(_coordinator(home, port), url_to_poll=f"{url}/healthz", output=output):
            entries = _logged_entries(url, info["log_vkey"])
            assert len({e.request_id for e in entries}) == len(entries)
            for entry in entries:
                _check_complete(entry, keys, operators)
            logged = {e.request_id for e in entries}
            assert {a["id"] for a in received} <= logged
            assert 3 <= len(received) < REQUESTS  # requests were in flight at the crash
            # Once the nodes are heard from again, the network answers again; answers from
            # before the crash are still served.
            deadline = time.monotonic() + 30
            while sum(n["live"] for n in httpx.get(f"{url}/v1/nodes").json()["nodes"]) < 2:
                assert time.monotonic() < deadline, "nodes did not come back"
                time.sleep(0.1)
            with veriml.Client(url, log_vkey=info["log_vkey"]) as client:
                again = client.infer("mlp", {"x": X}, policy="quorum:2/2")
            expected = Runner.for_package(ModelPackage.load(folder)).outputs({"x": X})
            np.testing.assert_array_equal(again.outputs["probs"], expected["probs"])
            stored = httpx.get(f"{url}/v1/inferences/{received[0]['id']}")
            assert stored.json() == received[0]
