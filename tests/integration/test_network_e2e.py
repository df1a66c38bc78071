"""The network end to end, as real processes (``veriml serve`` children of the ``veriml up``
launcher): publish, infer under ``none`` and ``quorum``, verify online and offline, tampering,
a node killed mid-job, a coordinator killed and restarted. Once on SQLite, once on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy

from _checks import NETWORK, ran
from _logread import logged_entries
from veriml.client import (
    CHECKS,
    AsyncClient,
    Client,
    InferenceResult,
    LocalNetwork,
    read_network_file,
    verify_inference_file,
)
from veriml.core.errors import Error, NodeUnavailableError, VerificationError
from veriml.core.keys import generate_key
from veriml.ledger import InferenceEntry, parse_entry
from veriml.models.examples import build_mlp, write_example_folder
from veriml.tlog import NoteVerifier, audit

pytestmark = pytest.mark.slow

X = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)
# Every check a verified none or quorum answer runs: its own, then the network evidence.
VERIFIED = ran(CHECKS, *NETWORK)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    admin = request.getfixturevalue("_postgres_server")
    schema = f"veriml_net_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(admin)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{admin}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="module")
def net(db: str | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    home = tmp_path_factory.mktemp("network")
    with LocalNetwork(home, nodes=3, port=0, db=db, node_args=("--heartbeat", "1")) as network:
        yield network


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("model")
    folder = write_example_folder(tmp / "mlp", build_mlp((4, 8, 3), seed=3), name="mlp")
    generate_key("ec").save(tmp / "publisher.key")
    return folder


@pytest.fixture(scope="module")
def model(net: LocalNetwork, model_dir: Path) -> dict[str, Any]:
    with Client(net.url, log_vkey=net.log_vkey) as client:
        return client.publish(model_dir, model_dir.parent / "publisher.key")


def _client(net: LocalNetwork) -> Client:
    return Client(net.url, log_vkey=net.log_vkey)


def _inference_entries(net: LocalNetwork) -> list[InferenceEntry]:
    """Every inference entry in the log, read from its tiles and checked against them."""
    parsed = [parse_entry(e) for e in logged_entries(net.url, net.log_vkey)]
    return [e for e in parsed if isinstance(e, InferenceEntry)]


def test_local_network_writes_network_json_with_every_node(net: LocalNetwork) -> None:
    network = read_network_file(net.home)
    assert network is not None
    assert network.url == net.url
    assert network.log_vkey == net.log_vkey
    assert len({n["id"] for n in network.nodes}) == 3
    assert all(n["pid"] > 0 for n in network.nodes)


def test_publish_registers_the_model_once_and_lists_it(
    net: LocalNetwork, model: dict[str, Any]
) -> None:
    with _client(net) as client:
        listed = client.models(name="mlp")
        assert [m["digest"] for m in listed] == [model["digest"]]
        assert client.model("mlp@1.0.0")["digest"] == model["digest"]


@pytest.mark.parametrize("policy", ["none", "quorum:3/2"])
def test_answers_verify_online_and_offline(
    net: LocalNetwork, model: dict[str, Any], policy: str, tmp_path: Path
) -> None:
    with _client(net) as client:
        result = client.infer("mlp", {"x": X}, policy=policy)
        assert result.verified == VERIFIED
        assert result.model.to_text() == model["digest"]
        again = client.inference(result.id)
        assert again.to_json() == result.to_json()
    path = result.save(tmp_path / "answer.json")
    # Offline, through the CLI, with the key pinned from network.json ($VERIML_HOME).
    done = subprocess.run(
        [sys.executable, "-m", "veriml", "verify", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VERIML_HOME": str(net.home), "VERIML_LOG_VKEY": ""},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"]["outcome"] == "accepted"


def _flip_output(obj: dict[str, Any]) -> None:
    data = obj["outputs"]["probs"]["data"]
    data[0][0] = float(np.nextafter(np.float32(data[0][0]), np.float32(2)))


def _flip_verdict(obj: dict[str, Any]) -> None:
    obj["verdict"]["agreeing"] = obj["verdict"]["agreeing"][:1]


def _flip_proof(obj: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(obj["log"]["inclusion_proof"][0]))
    raw[-1] ^= 0x80
    obj["log"]["inclusion_proof"][0] = base64.b64encode(bytes(raw)).decode()


def _swap_node_entry(obj: dict[str, Any]) -> None:
    # The first node's registration, as the answer cites it, replaced by the second's: the
    # cited entry is no longer the one its inclusion proof is for.
    cited = {e["index"]: e for e in obj["evidence"]}
    first, second = (node["log_index"] for node in obj["nodes"][:2])
    cited[first]["entry"] = cited[second]["entry"]


def _cite_another_registration(obj: dict[str, Any]) -> None:
    # A node that claims another node's (logged, proven) registration as its own.
    obj["nodes"][0]["log_index"] = obj["nodes"][1]["log_index"]


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (_flip_output, "output-digest"),
        (_flip_verdict, "inclusion"),
        (_flip_proof, "inclusion"),
        (_swap_node_entry, "evidence"),
        (_cite_another_registration, "node-key"),
    ],
)
def test_a_tampered_saved_answer_fails_offline_naming_the_check(
    net: LocalNetwork, model: dict[str, Any], tmp_path: Path, change: Any, check: str
) -> None:
    with _client(net) as client:
        obj = client.infer("mlp", {"x": X}, policy="quorum:3/2").to_json()
    change(obj)
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(VerificationError) as caught:
        verify_inference_file(path, log_vkey=net.log_vkey)
    assert caught.value.check == check


def test_a_signed_request_is_logged_with_its_signer_and_verifies(
    net: LocalNetwork, model: dict[str, Any], model_dir: Path
) -> None:
    key = generate_key("ed25519")
    with Client(net.url, log_vkey=net.log_vkey, key=key) as client:
        again = client.publish(model_dir, model_dir.parent / "publisher.key")  # signed upload
        assert again["digest"] == model["digest"]
        result = client.infer("mlp", {"x": X}, policy="quorum:3/2")
    assert result.request == {"client": key.key_id}
    assert result.verified == VERIFIED
    logged = next(e for e in _inference_entries(net) if e.request_id == result.id)
    assert logged.extra == {"client": key.key_id}


def test_a_retried_request_id_returns_the_one_logged_answer(
    net: LocalNetwork, model: dict[str, Any]
) -> None:
    request_id = str(uuid.uuid4())
    with _client(net) as client:
        first = client.infer("mlp", {"x": X}, policy="quorum:3/2", request_id=request_id)
        again = client.infer("mlp", {"x": X}, policy="quorum:3/2", request_id=request_id)
        assert first.id == request_id
        assert again.to_json() == first.to_json()
        # The same id with other inputs is not silently answered with the stored answer.
        with pytest.raises(Error) as caught:
            client.infer("mlp", {"x": X + 1}, policy="quorum:3/2", request_id=request_id)
        assert not isinstance(caught.value, VerificationError) or caught.value.check == "request"
    counts = Counter(e.request_id for e in _inference_entries(net))
    assert counts[request_id] == 1


def test_the_async_client_republishes_idempotently_and_verifies_concurrent_answers(
    net: LocalNetwork, model: dict[str, Any], model_dir: Path
) -> None:
    async def main() -> tuple[dict[str, Any], list[InferenceResult]]:
        async with AsyncClient(net.url, log_vkey=net.log_vkey) as client:
            again = await client.publish(model_dir, model_dir.parent / "publisher.key")
            answers = await asyncio.gather(
                *(client.infer("mlp", {"x": X * i}, policy="none") for i in range(8))
            )
            return again, list(answers)

    again, results = asyncio.run(main())
    assert again["digest"] == model["digest"]
    assert again["log_index"] == model["log_index"]  # registered once
    assert len({r.id for r in results}) == 8
    assert all(r.verified == VERIFIED for r in results)


def test_a_node_killed_mid_job_leaves_every_request_answered_once(
    net: LocalNetwork, model: dict[str, Any]
) -> None:
    victim = net.nodes[0]
    errors: list[BaseException] = []
    started = threading.Event()

    def one(i: int) -> str:
        started.set()
        with _client(net) as client:
            return client.infer("mlp", {"x": X + np.float32(i)}, policy="none").id

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(40)]
        assert started.wait(30)
        victim.kill()
        ids = []
        for future in futures:
            try:
                ids.append(future.result(timeout=120))
            except BaseException as exc:  # collected, so every failure is reported
                errors.append(exc)
    assert not errors, errors[:3]
    counts = Counter(e.request_id for e in _inference_entries(net))
    assert all(counts[i] == 1 for i in ids)
    assert max(counts.values()) == 1
    # A quorum still forms from the two nodes (distinct operators) that are left.
    with _client(net) as client:
        assert client.infer("mlp", {"x": X}, policy="quorum:2/2").verdict.outcome == "accepted"
    victim.start(net.env)
    net.wait_registered([victim])


def test_a_coordinator_killed_and_restarted_keeps_its_state_and_log(
    net: LocalNetwork, model: dict[str, Any], tmp_path: Path
) -> None:
    with _client(net) as client:
        before = client.infer("mlp", {"x": X}, policy="quorum:3/2", public=True)
    answered: list[str] = []
    failed: list[BaseException] = []
    three_done = threading.Event()

    def one(i: int) -> None:
        try:
            with _client(net) as client:
                answered.append(client.infer("mlp", {"x": X - np.float32(i)}, policy="none").id)
            if len(answered) >= 3:
                three_done.set()
        except NodeUnavailableError as exc:  # in flight at the crash: no answer
            failed.append(exc)

    # SIGKILL while requests are in flight.
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(40)]
        assert three_done.wait(60)
        net.coordinator.kill()
        for future in futures:
            future.result(timeout=120)
    net.start_coordinator()
    net.wait_registered()
    verifier = NoteVerifier.from_vkey(net.log_vkey)
    report = audit(net.url + "/log/", verifier)
    assert report.size >= before.log.index + 1
    # Every entry parses (logged completely or not at all), no request twice, and every
    # answered request is in the log.
    counts = Counter(e.request_id for e in _inference_entries(net))
    assert max(counts.values()) == 1
    assert all(counts[i] == 1 for i in answered)
    with _client(net) as client:
        assert client.model("mlp")["digest"] == model["digest"]
        assert client.inference(before.id).to_json() == before.to_json()
        after = client.infer("mlp", {"x": X}, policy="quorum:3/2")
    assert after.log.index > before.log.index
    assert after.verified == VERIFIED
