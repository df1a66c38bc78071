"""Test harness for the node: a signed example model, a stand-in for the coordinator routes a
node talks to, signed jobs, and a node served on loopback.

The stand-in follows docs/network.md: ``GET /v1/info``, ``GET /v1/models/{digest}`` (files,
publisher key, signature blob digest), ``GET /v1/blobs/{digest}``, ``POST /v1/nodes`` (checks
the descriptor signature, freshness and nonce) and ``POST /v1/nodes/{id}/heartbeat`` (checks the
signature against the registered key; 404 for a node it does not know).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from _servers import serve
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import Error
from veriml.core.keys import SigningKey, VerifyingKey, generate_key
from veriml.core.tensors import tensor_digest, tensor_to_json
from veriml.models import ModelPackage, sign_model
from veriml.models.examples import build_mlp, write_example_folder
from veriml.node import NodeConfig, create_node_app
from veriml.protocol.jobs import Job
from veriml.protocol.messages import DESCRIPTOR_MAX_AGE, Heartbeat, NodeDescriptor, format_time


@dataclass(frozen=True)
class SignedModel:
    folder: Path
    digest: Digest
    publisher: SigningKey


def make_signed_model(root: Path, *, seed: int = 0, name: str = "tiny") -> SignedModel:
    folder = write_example_folder(root / name, build_mlp((4, 8, 3), seed=seed), name=name)
    publisher = generate_key("ec")
    key_path = root / f"{name}-publisher.key"
    publisher.save(key_path)
    sign_model(folder, key_path)
    return SignedModel(folder, ModelPackage.load(folder).digest, publisher)


class HubStandIn:
    """The coordinator routes a node uses, backed by dicts."""

    def __init__(self, coordinator_key: SigningKey) -> None:
        self.coordinator_key = coordinator_key
        self.blobs: dict[str, bytes] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.model_requests = 0
        self.blob_gate: threading.Event | None = None
        self.nodes: dict[str, VerifyingKey] = {}
        self.nonces: set[str] = set()
        self.registrations: list[NodeDescriptor] = []
        self.heartbeats: list[Heartbeat] = []

    def publish(self, model: SignedModel, *, publisher_pem: str | None = None) -> Digest:
        package = ModelPackage.load(model.folder)
        files = []
        for entry in package.manifest:
            data = (model.folder / entry.path).read_bytes()
            self.blobs[entry.digest.to_text()] = data
            files.append({"path": entry.path, "digest": entry.digest.to_text(), "size": len(data)})
        signature = (model.folder / "model.sig").read_bytes()
        self.blobs[Digest.of(signature).to_text()] = signature
        pem = publisher_pem or model.publisher.public.to_pem().decode()
        self.models[package.digest.to_text()] = {
            "digest": package.digest.to_text(),
            "files_digest": package.files_digest.to_text(),
            "name": model.folder.name,
            "version": "1.0.0",
            "files": files,
            "publisher": {"key_id": VerifyingKey.from_pem(pem.encode()).key_id, "public_key": pem},
            "signature": Digest.of(signature).to_text(),
            "size": package.size,
        }
        return package.digest

    def forget_nodes(self) -> None:
        self.nodes.clear()

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/info")
        def info() -> dict[str, Any]:
            return {
                "version": "test",
                "coordinator_key": self.coordinator_key.public.to_pem().decode(),
                "coordinator_key_id": self.coordinator_key.key_id,
            }

        @app.get("/v1/models/{digest}")
        def get_model(digest: str) -> Response:
            self.model_requests += 1
            if digest not in self.models:
                return JSONResponse({"title": "Not Found", "status": 404}, status_code=404)
            return JSONResponse(self.models[digest])

        @app.get("/v1/blobs/{digest}")
        async def get_blob(digest: str) -> Response:
            if self.blob_gate is not None:
                await asyncio.to_thread(self.blob_gate.wait, 30)
            if digest not in self.blobs:
                return JSONResponse({"title": "Not Found", "status": 404}, status_code=404)
            return Response(self.blobs[digest], media_type="application/octet-stream")

        @app.post("/v1/nodes", status_code=201)
        async def register(request: Request) -> Response:
            try:
                envelope = Envelope.from_json(await request.json())
                descriptor = NodeDescriptor.open(envelope, max_age=DESCRIPTOR_MAX_AGE)
            except Error as exc:
                return JSONResponse({"detail": exc.diagnostics()}, status_code=403)
            if descriptor.nonce in self.nonces:
                return JSONResponse({"detail": "nonce reused"}, status_code=409)
            self.nonces.add(descriptor.nonce)
            self.nodes[descriptor.node_id] = descriptor.key
            self.registrations.append(descriptor)
            index = len(self.registrations) - 1
            return JSONResponse({"node_id": descriptor.node_id, "log_index": index}, 201)

        @app.post("/v1/nodes/{node_id}/heartbeat")
        async def heartbeat(node_id: str, request: Request) -> Response:
            key = self.nodes.get(node_id)
            if key is None:
                return JSONResponse({"detail": "unknown node"}, status_code=404)
            try:
                beat = Heartbeat.open(Envelope.from_json(await request.json()), key)
            except Error as exc:
                return JSONResponse({"detail": exc.diagnostics()}, status_code=403)
            self.heartbeats.append(beat)
            return JSONResponse({"ok": True})

        return app


def node_config(
    home: Path, hub_url: str, coordinator_pub: Path | None, **overrides: Any
) -> NodeConfig:
    operator = home.parent / f"{home.name}-operator.key"
    if not operator.exists():
        generate_key("ed25519").save(operator)
    settings: dict[str, Any] = {
        "coordinator_url": hub_url,
        "key_path": home / "node.key",
        "operator_key": operator,
        "home": home,
        "coordinator_key": coordinator_pub,
        "concurrency": 2,
        "heartbeat_interval": 0.2,
    }
    settings.update(overrides)
    return NodeConfig(**settings)


@contextlib.contextmanager
def running_node(config: NodeConfig) -> Iterator[str]:
    with serve(create_node_app(config)) as url:
        yield url


def wait_until(condition: Callable[[], bool], *, timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.02)


def inputs_for(seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, 4)).astype(np.float32)}


def job_body(
    coordinator_key: SigningKey,
    node_id: str,
    model: Digest,
    inputs: dict[str, np.ndarray],
    *,
    policy: str = "none",
    trace: bool = False,
    request_id: str | None = None,
    job_id: str | None = None,
    issued: dt.datetime | None = None,
    lifetime: dt.timedelta = dt.timedelta(seconds=60),
    signed_digests: dict[str, Digest] | None = None,
    retain_until: str | None = None,
) -> dict[str, Any]:
    issued = issued if issued is not None else dt.datetime.now(dt.UTC)
    job = Job(
        job_id=job_id or str(uuid.uuid4()),
        node_id=node_id,
        request_id=request_id or str(uuid.uuid4()),
        model=model,
        inputs=signed_digests or {n: tensor_digest(a) for n, a in inputs.items()},
        policy=policy,
        issued_at=format_time(issued),
        expires_at=format_time(issued + lifetime),
        trace=trace,
        retain_until=retain_until,
    )
    return {
        "job": job.sign(coordinator_key).to_json(),
        "inputs": {n: tensor_to_json(a) for n, a in inputs.items()},
    }
