"""Restarts and faults lose nothing: each service is a real process on 127.0.0.1, killed with
SIGKILL in the middle of its work and started again on the same home or database.

- a node keeps the ids of the jobs it admitted (a replay is still refused, a job issued before
  the kill and never sent still runs) and the traces it kept (revealed after the restart; a
  torn file the kill left is removed, never served);
- a witness keeps what it cosigned, and refuses a rollback or a fork of it;
- a coordinator resumes a dispute it was hosting and settles it: verdict and slash in the log.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from _coordinator import make_signed_model, running_coordinator
from _logread import logged_entries
from _servers import free_port, start_process
from _traces import read_trace
from veriml.client import Client, LocalNetwork
from veriml.coordinator.auth import sign_request
from veriml.core.digest import Digest
from veriml.core.errors import LogInconsistencyError, NodeUnavailableError
from veriml.core.keys import SigningKey, generate_key, load_private_key
from veriml.core.tensors import tensor_digest, tensor_to_json
from veriml.models import ModelPackage
from veriml.models.examples import build_mlp, write_example_folder
from veriml.protocol.accounts import LedgerRequest
from veriml.protocol.jobs import Job
from veriml.protocol.messages import format_time
from veriml.runtime import Runner, RunResult, Trace
from veriml.tlog.checkpoint import Checkpoint, sign_checkpoint
from veriml.tlog.cosignature import CosignatureSigner, CosignatureVerifier
from veriml.tlog.merkle import consistency_proof, leaf_hash, root_from_leaf_hashes
from veriml.tlog.note import NoteSigner
from veriml.tlog.witness import WitnessClient, WitnessConflictError

VERIML = [sys.executable, "-m", "veriml"]
X = np.array([[0.5, -1.0, 2.0, 0.25], [1.5, 0.0, -0.5, 3.0]], dtype=np.float32)


def sigkill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


# -- a node ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedJob:
    request_id: str
    body: dict[str, Any]


def signed_job(key: SigningKey, node_id: str, model: Digest, *, trace: bool = False) -> SignedJob:
    issued = dt.datetime.now(dt.UTC)
    job = Job(
        job_id=str(uuid.uuid4()),
        node_id=node_id,
        request_id=str(uuid.uuid4()),
        model=model,
        inputs={"x": tensor_digest(X)},
        policy="none",
        issued_at=format_time(issued),
        expires_at=format_time(issued + dt.timedelta(seconds=120)),
        trace=trace,
        retain_until=format_time(issued + dt.timedelta(hours=1)) if trace else None,
    )
    body = {"job": job.sign(key).to_json(), "inputs": {"x": tensor_to_json(X)}}
    return SignedJob(job.request_id, body)


def post_job(url: str, job: SignedJob) -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", json=job.body, timeout=60)


def trace_file(home: Path, request_id: str) -> Path:
    return home / "traces" / (hashlib.sha256(request_id.encode()).hexdigest() + ".trace")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[str, Digest, SigningKey, Path]]:
    """A coordinator (in a thread) serving one signed model: (its URL, the model's digest,
    the coordinator's job-signing key, that key's public PEM file)."""
    model = make_signed_model(tmp_path / "models")
    with running_coordinator(tmp_path / "coordinator") as (url, _):
        published = model.post(url)
        assert published.status_code == 201, published.text
        key_file = tmp_path / "coordinator" / "coordinator" / "coordinator.key"
        key = load_private_key(key_file, kind="ed25519")
        pub = tmp_path / "coordinator.pub"
        pub.write_bytes(key.public.to_pem())
        yield url, Digest.from_text(published.json()["digest"]), key, pub


@contextlib.contextmanager
def node_process(home: Path, hub_url: str, pub: Path, port: int) -> Iterator[Any]:
    """``veriml node serve`` on ``home``, bound to an operator key beside it."""
    operator = home.parent / "operator.key"
    if not operator.exists():
        generate_key("ed25519").save(operator)
    args = [
        *VERIML, "node", "serve", "--coordinator", hub_url, "--coordinator-key", str(pub),
        "--home", str(home), "--key", str(home / "node.key"), "--operator-key", str(operator),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    health = f"http://127.0.0.1:{port}/healthz"
    with start_process(args, url_to_poll=health, output=home.parent / "node.log") as proc:
        yield proc


@pytest.mark.slow
def test_a_killed_node_refuses_replays_runs_the_jobs_in_flight_and_reveals_its_traces(
    tmp_path: Path, hub: tuple[str, Digest, SigningKey, Path]
) -> None:
    hub_url, model, key, pub = hub
    home, port = tmp_path / "node", free_port()
    url = f"http://127.0.0.1:{port}"
    with node_process(home, hub_url, pub, port) as proc:
        node_id = httpx.get(f"{url}/v1/info").json()["node_id"]
        traced = signed_job(key, node_id, model, trace=True)
        kept = post_job(url, traced)
        assert kept.status_code == 200, kept.text
        root = RunResult.from_json(kept.json()).predicate.trace
        assert root is not None
        # Jobs stream in, one after the other; the node is killed while they do.
        jobs = [signed_job(key, node_id, model) for _ in range(400)]
        answered: list[SignedJob] = []
        sent: list[SignedJob] = []

        def stream() -> None:
            for job in jobs:
                sent.append(job)
                try:
                    response = post_job(url, job)
                except httpx.HTTPError:
                    return  # the kill
                assert response.status_code == 200, response.text
                answered.append(job)

        feeder = threading.Thread(target=stream)
        feeder.start()
        deadline = time.monotonic() + 30
        while len(answered) < 10:
            assert feeder.is_alive()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sigkill(proc)
        feeder.join(30)
    never_sent = jobs[len(sent) :]
    assert len(never_sent) >= 3
    # What a kill while writing a trace leaves: a temporary file cut short; and (a disk that
    # lost the tail of one) a trace file shorter than its header says.
    data = trace_file(home, traced.request_id).read_bytes()
    temporary = home / "traces" / ".tmp-0123456789abcdef"
    temporary.write_bytes(data[: len(data) // 2])
    torn = "a-torn-trace"
    trace_file(home, torn).write_bytes(data.replace(traced.request_id.encode(), torn.encode())[:-8])

    with node_process(home, hub_url, pub, port):
        for job in answered:  # answered before the kill: each one again is a replay
            replay = post_job(url, job)
            assert replay.status_code == 409, replay.text
            assert "replay" in replay.json()["detail"]
        in_flight = post_job(url, sent[-1])  # admitted before the kill, or never reached it
        assert in_flight.status_code in (200, 409), in_flight.text
        for job in never_sent[:3]:  # issued before the restart, never admitted: they run
            assert post_job(url, job).status_code == 200
        revealed = read_trace(key, f"{url}/v1/traces/{traced.request_id}", timeout=30)
        assert revealed.status_code == 200
        assert revealed.json()["trace"]["root"] == root.root.to_text()
        entry = read_trace(key, f"{url}/v1/traces/{traced.request_id}/entries/0", timeout=30)
        assert entry.json()["root"] == root.root.to_text()
        assert read_trace(key, f"{url}/v1/traces/{torn}", timeout=30).status_code == 404
    assert not temporary.exists()
    assert not trace_file(home, torn).exists()


# -- a witness ---------------------------------------------------------------------------------

ORIGIN = "example.com/restarts"
LOG_KEY = generate_key()


class TinyLog:
    """A log's leaves and checkpoints, signed with :data:`LOG_KEY` (a fork is another one)."""

    def __init__(self, prefix: str, size: int) -> None:
        self.signer = NoteSigner(ORIGIN, LOG_KEY)
        self.leaves = [leaf_hash(f"{prefix} {i}".encode()) for i in range(size)]

    def signed(self, size: int) -> bytes:
        checkpoint = Checkpoint(ORIGIN, size, root_from_leaf_hashes(self.leaves[:size]))
        return sign_checkpoint(checkpoint, [self.signer])

    def proof(self, old: int, new: int) -> list[bytes]:
        return consistency_proof(old, new, self.leaves) if old else []


@contextlib.contextmanager
def witness_process(key: Path, state: Path, port: int) -> Iterator[Any]:
    args = [
        *VERIML, "witness", "serve", "--key", str(key), "--name", "witness.example/restarts",
        "--log", TinyLog("", 0).signer.vkey, "--state", str(state), "--port", str(port),
    ]  # fmt: skip
    probe = f"http://127.0.0.1:{port}/{hashlib.sha256(ORIGIN.encode()).hexdigest()}/checkpoint"
    # Up when it answers: 404 before its first cosignature, 200 after.
    ready = 200 if state.exists() else 404
    with start_process(
        args, url_to_poll=probe, ready_status=ready, output=state.parent / "w.log"
    ) as p:
        yield p


def test_a_killed_witness_keeps_what_it_cosigned_and_refuses_a_rollback_or_a_fork(
    tmp_path: Path,
) -> None:
    key = generate_key()
    key.save(tmp_path / "witness.key")
    verifier = CosignatureVerifier.from_vkey(
        CosignatureSigner("witness.example/restarts", key).vkey
    )
    state, port = tmp_path / "witness.db", free_port()
    url = f"http://127.0.0.1:{port}"
    log, fork = TinyLog("entry", 200), TinyLog("forged", 200)
    acknowledged = [0]
    with witness_process(tmp_path / "witness.key", state, port) as proc:

        def cosign() -> None:
            with WitnessClient(url, verifier) as client:
                for size in range(1, 200):
                    old = acknowledged[-1]
                    try:
                        client.add_checkpoint(old, log.proof(old, size), log.signed(size))
                    except NodeUnavailableError:
                        return  # the kill
                    acknowledged.append(size)

        feeder = threading.Thread(target=cosign)
        feeder.start()
        deadline = time.monotonic() + 30
        while acknowledged[-1] < 10:
            assert feeder.is_alive()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        sigkill(proc)
        feeder.join(30)
    last = acknowledged[-1]
    with (
        witness_process(tmp_path / "witness.key", state, port),
        WitnessClient(url, verifier) as client,
    ):
        seen = httpx.get(f"{url}/{hashlib.sha256(ORIGIN.encode()).hexdigest()}/checkpoint")
        size = int(seen.text.split("\n")[1])
        assert size in (last, last + 1)  # nothing acknowledged is lost (one more in flight)
        # A rollback: the log pretending the witness last saw less.
        with pytest.raises(WitnessConflictError) as rollback:
            client.add_checkpoint(0, [], log.signed(last))
        assert rollback.value.latest_size == size
        # A fork: another tree, at the cosigned size or beyond it.
        with pytest.raises(LogInconsistencyError):
            client.add_checkpoint(size, [], fork.signed(size))
        with pytest.raises(LogInconsistencyError):
            client.add_checkpoint(size, fork.proof(size, 199), fork.signed(199))
        # The honest log goes on from there.
        assert client.add_checkpoint(size, log.proof(size, 199), log.signed(199)).name == (
            "witness.example/restarts"
        )


# -- a coordinator in the middle of a dispute -----------------------------------------------------

DISPUTE_TIMEOUT = 20.0
"""Seconds per move: the lease of a stored dispute is three of them, longer than the test waits
for the restarted coordinator to take the dispute back."""


def signed_post(url: str, path: str, body: dict[str, Any], key: SigningKey) -> httpx.Response:
    data = json.dumps(body).encode()
    headers = sign_request(key, "POST", url + path, data, {"content-type": "application/json"})
    return httpx.post(url + path, content=data, headers=headers, timeout=120)


def move(url: str, path: str, state: dict[str, Any], trace: Trace, key: SigningKey) -> Any:
    """The challenger's answer to the move it is asked, or None while the other side moves."""
    query = state["query"]
    if query is None:
        return None
    if "index" in query:
        index = query["index"]
        body = {
            "index": index,
            "entry": trace.entries[index].to_json(),
            "proof": [h.hex() for h in trace.inclusion_proof(index)],
        }
        answer = signed_post(url, path + "/reveal", body, key)
    else:
        assert trace.tensors is not None
        tensors = {n: tensor_to_json(trace.tensors[n]) for n in query["tensors"]}
        answer = signed_post(url, path + "/tensors", {"tensors": tensors}, key)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.slow
def test_a_coordinator_killed_mid_dispute_resumes_it_at_once_and_slashes_the_cheater(
    tmp_path: Path,
) -> None:
    folder = write_example_folder(tmp_path / "mlp", build_mlp((4, 8, 8, 3), seed=6), name="mlp")
    generate_key("ec").save(tmp_path / "publisher.key")
    with LocalNetwork(
        tmp_path / "net",
        nodes=2,
        port=0,
        byzantine={0: "wrong-output"},
        env={"VERIML_DISPUTE_TIMEOUT": str(DISPUTE_TIMEOUT)},
        start_timeout=60,
    ) as net:
        cheater = net.nodes[0].node_id
        with Client(net.url, log_vkey=net.log_vkey) as client:
            client.publish(folder, tmp_path / "publisher.key")
            for _ in range(32):
                answered = client.infer("mlp", {"x": X[:1]}, policy="none")
                if answered.verdict.agreeing[0] == cheater:
                    break
            else:
                pytest.fail("the scheduler never picked the cheating node")
        outputs, trace = Runner.for_package(ModelPackage.load(folder)).traced({"x": X[:1]})
        challenger = generate_key()
        admin = load_private_key(net.home / "coordinator" / "coordinator.key", kind="ed25519")
        with Client(net.url, log_vkey=net.log_vkey, verify=False) as client:
            client.deposit(challenger.key_id, 100, admin)
        bond = LedgerRequest.signed(
            challenger, "challenge", 10, inference=answered.id, node=cheater
        )
        body = {
            "inference": answered.id,
            "node": cheater,
            "trace": trace.commitment.to_json(),
            "outputs": {n: tensor_digest(a).to_text() for n, a in outputs.items()},
            "authorization": bond.to_json(),
        }
        opened = signed_post(net.url, "/v1/disputes", body, challenger)
        assert opened.status_code == 201, opened.text
        path = f"/v1/disputes/{opened.json()['id']}"
        state = opened.json()
        while (answer := move(net.url, path, state, trace, challenger)) is None:
            time.sleep(0.05)
            state = httpx.get(net.url + path, timeout=30).json()
        assert answer["status"] == "open"  # one move made; the dispute goes on

        net.coordinator.kill()  # SIGKILL: no lease given up
        killed = time.monotonic()
        net.start_coordinator()
        state = {"status": "open", "query": None}
        while state["status"] == "open":
            got = httpx.get(net.url + path, timeout=30)
            if got.status_code == 200:
                state = got.json()
                move(net.url, path, state, trace, challenger)
            assert time.monotonic() - killed < 10 * DISPUTE_TIMEOUT
            time.sleep(0.1)
        # Taken back at once, not once the killed process's lease (three moves) ran out.
        assert time.monotonic() - killed < 2 * DISPUTE_TIMEOUT
        assert state["result"]["winner"] == "challenger", state
        entries = [json.loads(e) for e in logged_entries(net.url, net.log_vkey)]
        operator = net.operator_id(net.nodes[0])
    dispute = state["id"]
    verdicts = [e for e in entries if e["type"] == "verdict" and e.get("dispute") == dispute]
    assert [v["winner"] for v in verdicts] == ["challenger"]  # settled once
    slashes = [e for e in entries if e["type"] == "slash" and e.get("dispute") == dispute]
    assert [s["account"] for s in slashes] == [operator]
    assert all(s["amount"] > 0 for s in slashes)
