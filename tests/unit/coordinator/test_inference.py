"""The inference service end to end on loopback: real log, real database, real HTTP to nodes.

The nodes here are small apps that do what a node does (``Job.open``, then
``veriml.runtime``), each with one behaviour a real node can show: honest, wrong outputs under
a valid signature, a receipt signed by a key that is not the registered one, refusing the
job, or dying in the middle of the request. The service must turn all of them into one
verified answer logged once, or into an error with nothing logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from _draws import EPOCH, request_drawn_first
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from _servers import HOST, serve
from veriml.coordinator.db import tables as db
from veriml.coordinator.inference.service import InferenceOptions, InferenceService, ResolvedModel
from veriml.coordinator.inference.wire import check_answer
from veriml.coordinator.nodes.dispatch import JobRejectedError, JobSpec
from veriml.coordinator.nodes.scheduler import Candidate
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import (
    ConflictError,
    InvalidInputError,
    InvalidTensorError,
    NodeUnavailableError,
    NotFoundError,
    VerificationError,
)
from veriml.core.keys import SigningKey, VerifyingKey, generate_key
from veriml.core.receipt import InferencePredicate, request_digest, sign_receipt
from veriml.core.tensors import tensor_digest, tensor_from_json, tensor_to_json
from veriml.ledger.entries import InferenceEntry, parse_entry
from veriml.models import ModelPackage
from veriml.models.examples import build_mlp, write_example_folder
from veriml.protocol.jobs import Job
from veriml.runtime import Runner, RunResult, canonical_request
from veriml.tlog import NoteVerifier, leaf_hash, open_checkpoint, verify_inclusion
from veriml.tlog.log import Log, LogOptions
from veriml.tlog.note import NoteSigner
from veriml.verify import verify_receipt
from veriml.verify.policy import Verdict

X = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
INPUTS = {"x": tensor_to_json(X)}


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    folder = tmp_path_factory.mktemp("inference") / "mlp"
    write_example_folder(folder, build_mlp((8, 16, 3)), name="mlp")
    return ModelPackage.load(folder)


@pytest.fixture(scope="module")
def runner(package: ModelPackage) -> Runner:
    return Runner.for_package(package)


@dataclass
class FakeNode:
    """A node: its key, operator, behaviour and the jobs it was sent."""

    operator: str
    behaviour: str = "honest"
    key: SigningKey = field(default_factory=lambda: generate_key("ed25519"))
    jobs: list[Job] = field(default_factory=list)
    url: str = ""
    active: int = 0

    def candidate(self) -> Candidate:
        return Candidate(
            node_id=self.key.key_id,
            operator=self.operator,
            endpoint=self.url,
            public_key=self.key.public.to_pem().decode(),
            log_index=7,
            last_seen=time.time(),
            active=self.active,
        )


def node_app(node: FakeNode, coordinator: VerifyingKey, runner: Runner) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/jobs")
    async def run_job(request: Request) -> Any:
        body = await request.json()
        if node.behaviour == "refuses":
            return JSONResponse({"detail": "job is not for this node"}, status_code=403)
        job = Job.open(Envelope.from_json(body["job"]), coordinator, node_id=node.key.key_id)
        arrays = {n: tensor_from_json(t) for n, t in body["inputs"].items()}
        job.check_inputs({n: tensor_digest(a) for n, a in arrays.items()})
        node.jobs.append(job)
        if node.behaviour == "slow":
            await asyncio.sleep(2)
        result = runner.run(arrays, key=node.key, policy=job.policy, request_id=job.request_id)
        if node.behaviour == "wrong":
            outputs = {n: a + np.float32(1) for n, a in result.outputs.items()}
            digests = {n: tensor_digest(a) for n, a in outputs.items()}
            receipt = sign_receipt(digests, result.predicate, node.key)
            result = RunResult(outputs, receipt, result.predicate)
        if node.behaviour == "forged":
            impostor = generate_key("ed25519")
            digests = {n: tensor_digest(a) for n, a in result.outputs.items()}
            receipt = sign_receipt(digests, result.predicate, impostor)
            result = RunResult(result.outputs, receipt, result.predicate)
        return result.to_json(include_inputs=False)

    return app


@contextlib.contextmanager
def dying_node() -> Iterator[str]:
    """A node that accepts the connection, reads the job, and dies without answering."""
    server = socket.socket()
    server.bind((HOST, 0))
    server.listen()
    port = server.getsockname()[1]
    stop = threading.Event()

    def loop() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{port}"
    finally:
        stop.set()
        thread.join(5)
        server.close()


@dataclass
class Network:
    service: InferenceService
    log: Log
    engine: sa.Engine
    nodes: list[FakeNode]


def run_network(
    tmp_path: Path,
    package: ModelPackage,
    runner: Runner,
    nodes: list[FakeNode],
    body: Callable[[Network], Coroutine[Any, Any, Any]],
    *,
    options: InferenceOptions | None = None,
) -> Any:
    coordinator_key = generate_key("ed25519")
    engine = db.open_engine(f"sqlite:///{tmp_path / 'coordinator.db'}")
    signer = NoteSigner("veriml.test/inference", generate_key("ed25519"))
    log = Log.open(
        f"sqlite:///{tmp_path / 'coordinator.db'}", signer, options=LogOptions(batch_interval=0)
    )
    model = ResolvedModel(package.digest, package.io)

    def resolve(ref: str) -> ResolvedModel:
        if ref in ("mlp", "mlp@1.0.0", package.digest.to_text()):
            return model
        raise NotFoundError("no such model", model=ref)

    with contextlib.ExitStack() as stack:
        for node in nodes:
            if node.behaviour == "dies":
                node.url = stack.enter_context(dying_node())
            else:
                node.url = stack.enter_context(
                    serve(node_app(node, coordinator_key.public, runner))
                )
        stack.callback(engine.dispose)
        stack.callback(log.close)

        async def main() -> Any:
            async with httpx.AsyncClient() as http:
                service = InferenceService(
                    engine=engine,
                    log=log,
                    key=coordinator_key,
                    http=http,
                    resolve_model=resolve,
                    list_nodes=lambda digest: [n.candidate() for n in nodes],
                    options=options or InferenceOptions(job_timeout=5),
                    beacon=lambda: EPOCH,
                )
                return await body(Network(service, log, engine, nodes))

        return asyncio.run(main())


def check_logged(network: Network, answer: dict[str, Any]) -> InferenceEntry:
    """The answer's log member proves its entry, rebuilt from the answer, in the log."""
    receipts = tuple(Envelope.from_json(r) for r in answer["receipts"])
    first = RunResult.from_json({"outputs": {}, "receipt": answer["receipts"][0]}).predicate
    entry = InferenceEntry(
        request_id=answer["id"],
        request_digest=first.request_digest,
        model=Digest.from_text(answer["model"]),
        policy=answer["policy"],
        receipts=receipts,
        verdict=Verdict.from_json(answer["verdict"]),
    )
    log = answer["log"]
    checkpoint, _ = open_checkpoint(
        log["checkpoint"].encode(), NoteVerifier.from_vkey(network.log.vkey)
    )
    proof = [base64.b64decode(h) for h in log["inclusion_proof"]]
    verify_inclusion(
        leaf_hash(entry.to_bytes()), log["index"], checkpoint.size, proof, checkpoint.root_hash
    )
    assert network.log.entries(log["index"], log["index"] + 1) == [entry.to_bytes()]
    return entry


def logged_inferences(network: Network) -> int:
    return sum(
        isinstance(parse_entry(e), InferenceEntry) for e in network.log.entries(0, network.log.size)
    )


def test_a_none_answer_is_verified_logged_once_and_its_inclusion_proof_verifies(
    tmp_path: Path, package: ModelPackage, runner: Runner
) -> None:
    nodes = [FakeNode("op-a")]

    async def body(net: Network) -> None:
        answer = await net.service.create({"model": "mlp", "inputs": INPUTS, "policy": "none"})
        entry = check_logged(net, answer)
        assert entry.verdict.outcome == "accepted"
        outputs = {n: tensor_from_json(t) for n, t in answer["outputs"].items()}
        np.testing.assert_array_equal(outputs["probs"], runner.outputs({"x": X})["probs"])
        verified = verify_receipt(
            {"outputs": answer["outputs"], "receipt": answer["receipts"][0]},
            node_key=nodes[0].key.public,
        )
        assert verified.predicate.request_id == answer["id"]
        assert answer["nodes"] == [{"id": nodes[0].key.key_id, "log_index": 7}]
        assert logged_inferences(net) == 1
        assert await net.service.get(answer["id"]) == answer

    run_network(tmp_path, package, runner, nodes, body)


def test_quorum_outvotes_a_node_with_wrong_outputs(
    tmp_path: Path, package: ModelPackage, runner: Runner
) -> None:
    nodes = [FakeNode("op-a"), FakeNode("op-b", "wrong"), FakeNode("op-c")]

    async def body(net: Network) -> None:
        answer = await net.service.create(
            {"model": "mlp", "inputs": INPUTS, "policy": "quorum:3/2"}
        )
        entry = check_logged(net, answer)
        honest = {nodes[0].key.key_id, nodes[2].key.key_id}
        assert entry.verdict.outcome == "accepted"
        assert set(entry.verdict.agreeing) == honest
        assert len(answer["receipts"]) == 3
        probs = tensor_from_json(answer["outputs"]["probs"])
        np.testing.assert_array_equal(probs, runner.outputs({"x": X})["probs"])
        # Every node got its own job for one shared request.
        assert len({n.jobs[0].request_id for n in nodes}) == 1
        assert len({n.jobs[0].job_id for n in nodes}) == 3

    run_network(tmp_path, package, runner, nodes, body)


def test_a_quorum_that_is_not_met_is_still_logged_as_rejected(
    tmp_path: Path, package: ModelPackage, runner: Runner
) -> None:
    nodes = [FakeNode("op-a"), FakeNode("op-b", "wrong"), FakeNode("op-c")]

    async def body(net: Network) -> None:
        answer = await net.service.create(
            {"model": "mlp", "inputs": INPUTS, "policy": "quorum:3/3"}
        )
        assert check_logged(net, answer).verdict.outcome == "rejected"
        assert answer["verdict"]["outcome"] == "rejected"

    run_network(tmp_path, package, runner, nodes, body)


def test_a_receipt_that_does_not_verify_is_retried_on_another_node(
    tmp_path: Path, package: ModelPackage, runner: Runner
) -> None:
    nodes = [FakeNode("op-a", "forged"), FakeNode("op-b")]

    async def body(net: Network) -> None:
        # A request whose draw asks the forger first.
        forger = nodes[0].key.key_id
        request_id = request_drawn_first(forger, [n.candidate() for n in nodes])
        answer = await net.service.create(
            {"model": "mlp", "inputs": INPUTS, "policy": "none"}, idempotency_key=request_id
        )
        assert answer["nodes"][0]["id"] == nodes[1].key.key_id
        assert [len(n.jobs) for n in nodes] == [1, 1]
        check_logged(net, answer)
        assert logged_inferences(net) == 1

    run_network(tmp_path, package, runner, nodes, body)


def test_a_node_that_dies_mid_request_is_replaced_and_the_answer_logged_once(
    tmp_path: Path, package: ModelPackage, runner: Runner
) -> None:
    nodes = [FakeNode("op-a", "dies"), FakeNode("op-b"), FakeNode("op-c")]

    async def body(net: Network) -> None:
        answer = await net.service.create(
            {"model": "mlp", "inputs": INPUTS, "policy": "quorum:2/2"}
        )
        assert check_logged(net, answer).verdict.outcome == "accepted"
        assert {n["id"] for n in answer["nodes"]} == {nodes[1].key.key_id, nodes[2].key.key_id}
        assert logged_inferences(net) == 1

    run_network(tmp_path, package, runner, nodes, body)


def test_when_every_node_fails_nothing_is_logged(
    tmp_path: Path, package: ModelPackage, runner: Runner
) -> None:
    nodes = [FakeNode("op-a", "dies"), FakeNode("op-b", "forged")]

    async def body(net: Network) -> None:
        with pytest.raises(NodeUnavailableError) as exc:
            await net.service.create({"model": "mlp", "inputs": INPUTS, "policy": "none"})
        assert "verified receipt" in str(exc.value)
        assert net.log.size == 0

    run_network(tmp_path, package, runner, nodes, body)


def test_a_slow_node_is_cut_off_and_replaced(
    tmp_path: Path, package: ModelPackage, runner: Runner
) -> None:
    nodes = [FakeNode("op-a", "slow"), FakeNode("op-b")]

    async def body(net: Network) -> None:
        answer = await net.service.create(
            {"model": "mlp", "inputs": INPUTS, "policy": "quorum:2/1"}
        )
        assert [n["id"] for n in answer["nodes"]] == [nodes[1].key.key_id]
        assert answer["verdict"]["outcome"] == "accepted"

    run_network(tmp_path, package, runner, nodes, body, options=InferenceOptions(job_timeout=0.5))


def test_a_node_that_refuses_the_job_fails_the_request_with_its_status_not_its_words(
    tmp_path: Path, package: ModelPackage, runner: Runner
) -> None:
    nodes = [FakeNode("op-a", "refuses")]

    async def body(net: Network) -> None:
        with pytest.raises(JobRejectedError) as exc:
            await net.service.create({"model": "mlp", "inputs": INPUTS})
        assert exc.value.status == 403
        assert exc.value.detail == "node answered 403 Forbidden"  # not what the node said
        assert net.log.size == 0

    run_network(tmp_path, package, runner, nodes, body)


@pytest.mark.parametrize(
    ("inputs", "error", "named"),
    [
        ({"x": {"dtype": "float32", "shape": [2, 8], "data": [1.0]}}, InvalidTensorError, "'x'"),
        ({"x": {"dtype": "float32", "shape": [2, 8]}}, InvalidTensorError, "'x'"),
        ({"x": tensor_to_json(np.zeros((2, 5), np.float32))}, InvalidInputError, "'x'"),
        ({"x": tensor_to_json(np.zeros((2, 8), np.float64))}, InvalidInputError, "'x'"),
        ({"y": tensor_to_json(X)}, InvalidInputError, "y"),
        ({}, InvalidInputError, "x"),
        ([1, 2], InvalidTensorError, "inputs"),
    ],
)
def test_bad_inputs_are_refused_naming_the_input_before_any_node_is_asked(
    tmp_path: Path,
    package: ModelPackage,
    runner: Runner,
    inputs: Any,
    error: type[Exception],
    named: str,
) -> None:
    nodes = [FakeNode("op-a")]

    async def body(net: Network) -> None:
        with pytest.raises(error) as exc:
            await net.service.create({"model": "mlp", "inputs": inputs})
        assert named in str(exc.value)
        assert nodes[0].jobs == []
        assert net.log.size == 0

    run_network(tmp_path, package, runner, nodes, body)


def test_not_enough_distinct_operators_is_unavailable_and_nothing_runs(
    tmp_path: Path, package: ModelPackage, runner: Runner
) -> None:
    nodes = [FakeNode("op-a"), FakeNode("op-a"), FakeNode("op-b")]

    async def body(net: Network) -> None:
        with pytest.raises(NodeUnavailableError) as exc:
            await net.service.create({"model": "mlp", "inputs": INPUTS, "policy": "quorum:3/2"})
        assert exc.value.evidence["needed"] == 3
        assert exc.value.evidence["available"] == 2
        assert all(n.jobs == [] for n in nodes)
        assert net.log.size == 0

    run_network(tmp_path, package, runner, nodes, body)


def test_unknown_models_and_inferences_are_not_found(
    tmp_path: Path, package: ModelPackage, runner: Runner
) -> None:
    async def body(net: Network) -> None:
        with pytest.raises(NotFoundError):
            await net.service.create({"model": "nope", "inputs": INPUTS})
        with pytest.raises(NotFoundError):
            await net.service.get("no-such-id")

    run_network(tmp_path, package, runner, [FakeNode("op-a")], body)


def test_an_idempotency_key_answers_a_retry_from_storage_without_logging_again(
    tmp_path: Path, package: ModelPackage, runner: Runner
) -> None:
    nodes = [FakeNode("op-a")]

    async def body(net: Network) -> None:
        request = {"model": "mlp", "inputs": INPUTS, "policy": "none"}
        first, second = await asyncio.gather(
            net.service.create(request, idempotency_key="order-42"),
            net.service.create(request, idempotency_key="order-42"),
        )
        assert first == second
        assert first["id"] == "order-42"
        assert len(nodes[0].jobs) == 1
        assert logged_inferences(net) == 1
        other = {"model": "mlp", "inputs": {"x": tensor_to_json(X * 2)}}
        with pytest.raises(ConflictError):
            await net.service.create(other, idempotency_key="order-42")
        with net.engine.connect() as conn:
            rows = conn.execute(sa.select(db.inferences.c.id, db.inferences.c.log_index)).all()
        assert [tuple(r) for r in rows] == [("order-42", first["log"]["index"])]

    run_network(tmp_path, package, runner, nodes, body)


def test_receipts_that_answer_another_request_are_refused() -> None:
    # A validly signed receipt of another request (a replay) fails the request binding.
    node_key = generate_key("ed25519")
    model = Digest.of(b"m")
    spec = JobSpec(request_id="r1", model=model, input_digests={}, inputs_json={}, policy="none")
    node = FakeNode("op-a", key=node_key)
    digest = request_digest(canonical_request(model, {}, "none"))
    predicate = InferencePredicate(
        request_id="r0",
        request_digest=digest,
        model_digest=model,
        inputs={},
        runtime={},
        node_id=node_key.key_id,
        policy="none",
        started="2026-01-01T00:00:00.000000Z",
        finished="2026-01-01T00:00:00.000000Z",
    )
    receipt = sign_receipt({}, predicate, node_key)
    result = RunResult({}, receipt, predicate)
    with pytest.raises(VerificationError) as exc:
        check_answer(result, node.candidate(), node_key.public, spec, digest)
    assert exc.value.check == "request-binding"
    assert "request id" in str(exc.value)
