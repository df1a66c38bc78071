"""The challenger's side of the dispute protocol, against an in-process dispute service.

The service below plays the coordinator of docs/verification.md "Service" with the defendant's
trace in hand: it checks every request signature and every reveal's inclusion proof against
the challenger's committed root, bisects over the two traces, asks for the disputed tensors
and settles. It is small on purpose: what is under test is that the challenger bonds as the
rules say, answers every query correctly, waits while the other side moves (and while the
coordinator restarts), and stops when it must.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from _servers import serve
from veriml.client import Client
from veriml.client._disputes import Challenger, DisputeState, Query
from veriml.coordinator.auth import request_signature
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import (
    ConflictError,
    Error,
    FormatError,
    KeyFileError,
    LimitExceededError,
    NodeUnavailableError,
)
from veriml.core.keys import SigningKey, generate_key
from veriml.core.tensors import tensor_digest, tensor_from_json
from veriml.models.examples import build_mlp
from veriml.protocol.accounts import LedgerRequest
from veriml.runtime import Runner, Trace, TraceEntry
from veriml.tlog.merkle import leaf_hash, verify_inclusion


@dataclass
class Dispute:
    id: str
    inference: str
    defendant: str
    challenger: str
    root: Digest
    size: int
    outputs: dict[str, str]
    lo: int = 0
    hi: int = 0
    query: dict[str, Any] | None = None
    revealed: dict[int, Digest] = field(default_factory=dict)
    rounds: int = 0
    messages: int = 0
    result: dict[str, Any] | None = None
    hidden: int = 0  # GETs that still show no query (the defendant's move)

    def state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": "open" if self.result is None else "settled",
            "inference": self.inference,
            "defendant": self.defendant,
            "challenger": self.challenger,
            "mode": "bitwise",
            "query": self.query,
            "deadline": "2026-11-26T10:00:00Z",
            "rounds": self.rounds,
            "messages": self.messages,
            "result": self.result,
        }


@dataclass
class Service:
    """The dispute service; ``behaviour`` switches it into a misbehaving coordinator."""

    defendant: Trace
    behaviour: str = "honest"
    bond: int = 0
    disputes: dict[str, Dispute] = field(default_factory=dict)
    proofs_checked: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    away: int = 0  # requests about a dispute still to answer 503 (a restart)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/ledger/rules")
        async def rules() -> dict[str, Any]:
            return {"rules": {"challenge_bond": self.bond}, "state": 0, "epoch": 0}

        @app.middleware("http")
        async def restarting(request: Request, call_next: Any) -> Any:
            if request.url.path.startswith("/v1/disputes/") and self.away > 0:
                self.away -= 1
                return JSONResponse({"title": "Service Unavailable"}, status_code=503)
            return await call_next(request)

        async def signed(request: Request) -> tuple[str, dict[str, Any]]:
            body = await request.body()
            signature = request_signature(request)
            assert signature is not None, "a challenger's requests are signed"
            account = signature.check_body(Digest.of(body))
            return account, dict(await request.json())

        @app.post("/v1/disputes", status_code=201, response_model=None)
        async def open_dispute(request: Request) -> Any:
            account, body = await signed(request)
            self.bodies.append(body)
            if body["inference"] == "already-disputed":
                return JSONResponse({"title": "already disputed"}, status_code=409)
            dispute = Dispute(
                id=str(uuid.uuid4()),
                inference=body["inference"],
                defendant=body["node"],
                challenger=account,
                root=Digest.from_text(body["trace"]["root"]),
                size=body["trace"]["size"],
                outputs=body["outputs"],
                hi=self.defendant.size - 1,
                hidden=2 if self.behaviour == "defendant-first" else 0,
            )
            dispute.query = {"index": dispute.hi}
            self.disputes[dispute.id] = dispute
            shown = dispute.state()
            if dispute.hidden or self.behaviour == "silent":
                shown["query"] = None
            return shown

        @app.get("/v1/disputes/{dispute_id}")
        async def get_dispute(dispute_id: str) -> dict[str, Any]:
            dispute = self.disputes[dispute_id]
            shown = dispute.state()
            if dispute.hidden or self.behaviour == "silent":
                dispute.hidden = max(0, dispute.hidden - 1)
                shown["query"] = None
            return shown

        @app.post("/v1/disputes/{dispute_id}/reveal", response_model=None)
        async def reveal(dispute_id: str, request: Request) -> Any:
            account, body = await signed(request)
            dispute = self.disputes[dispute_id]
            assert account == dispute.challenger
            index = body["index"]
            assert dispute.query == {"index": index}
            entry = TraceEntry.from_json(body["entry"])
            proof = [bytes.fromhex(p) for p in body["proof"]]
            verify_inclusion(
                leaf_hash(entry.digest.raw), index, dispute.size, proof, dispute.root.raw
            )
            self.proofs_checked += 1
            dispute.messages += 1
            dispute.rounds += 1
            if self.behaviour == "restarting":
                self.behaviour = "honest"  # once: this move is lost with the process, and
                self.away = 3  # the next requests fail while it restarts
                dispute.rounds = 0
                return JSONResponse({"title": "Bad Gateway"}, status_code=502)
            if self.behaviour == "endless":
                return dispute.state()
            if self.behaviour == "late":
                dispute.query = None
                dispute.result = {"type": "verdict", "dispute": dispute.id, "winner": "defendant"}
                dispute.result |= {"reason": "timeout"}
                return JSONResponse({"title": "Gone"}, status_code=410)
            dispute.revealed[index] = entry.digest
            if entry.digest == self.defendant.entries[index].digest:
                dispute.lo = index + 1
            else:
                dispute.hi = index
            if dispute.lo < dispute.hi:
                dispute.query = {"index": (dispute.lo + dispute.hi) // 2}
            else:
                dispute.query = {"tensors": [self.defendant.entries[dispute.hi].output]}
            return dispute.state()

        @app.post("/v1/disputes/{dispute_id}/tensors")
        async def tensors(dispute_id: str, request: Request) -> dict[str, Any]:
            _, body = await signed(request)
            dispute = self.disputes[dispute_id]
            found = dispute.hi
            (name,) = dispute.query["tensors"] if dispute.query else []
            value = tensor_from_json(body["tensors"][name])
            assert tensor_digest(value) == dispute.revealed[found]
            dispute.messages += 1
            dispute.query = None
            dispute.result = {
                "type": "verdict",
                "dispute": dispute.id,
                "winner": "challenger",
                "reason": "referee",
                "node_index": self.defendant.entries[found].node,
                "op_type": self.defendant.entries[found].op_type,
                "rounds": dispute.rounds,
                "messages": dispute.messages,
            }
            return dispute.state()

        return app


@pytest.fixture(scope="module")
def traces() -> tuple[Trace, Trace, dict[str, Digest]]:
    """The challenger's honest trace of an MLP, and a defendant's whose last entry differs."""
    model = build_mlp((4, 8, 8, 3), seed=1)
    runner = Runner(model, digest=Digest.of(model.SerializeToString()))
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    outputs, honest = runner.traced({"x": x})
    last = honest.entries[-1]
    wrong = replace(last, digest=Digest.of(b"not the output"))
    defendant = Trace((*honest.entries[:-1], wrong))
    return honest, defendant, {n: tensor_digest(a) for n, a in outputs.items()}


@pytest.fixture
def key() -> SigningKey:
    return generate_key("ed25519")


@pytest.fixture
def service(traces: tuple[Trace, Trace, dict[str, Digest]]) -> Service:
    return Service(traces[1])


@pytest.fixture
def client(service: Service, key: SigningKey) -> Iterator[Client]:
    with serve(service.app()) as url, Client(url, verify=False, key=key) as client:
        yield client


def test_challenger_bisects_to_the_differing_operator_and_returns_the_verdict(
    traces: tuple[Trace, Trace, dict[str, Digest]],
    service: Service,
    client: Client,
    key: SigningKey,
) -> None:
    honest, _, outputs = traces
    seen: list[DisputeState] = []
    verdict = Challenger(client, on_state=seen.append).challenge(
        "inference-1", "node-a", honest, outputs
    )
    dispute = next(iter(service.disputes.values()))
    assert verdict["winner"] == "challenger"
    assert verdict["dispute"] == dispute.id
    assert verdict["node_index"] == honest.entries[-1].node
    # The account is the signing key; every reveal was proven against the committed root.
    assert dispute.challenger == key.key_id
    assert (dispute.root, dispute.size) == (honest.root, honest.size)
    assert dispute.outputs == {n: d.to_text() for n, d in outputs.items()}
    assert service.proofs_checked == dispute.rounds
    # O(log L) reveals: the output first, then a binary search.
    assert dispute.rounds <= 2 + honest.size.bit_length()
    assert seen[-1].settled
    assert seen[-1].winner == "challenger"


def test_challenger_waits_while_the_defendant_moves(
    traces: tuple[Trace, Trace, dict[str, Digest]], service: Service, client: Client
) -> None:
    service.behaviour = "defendant-first"
    honest, _, outputs = traces
    verdict = Challenger(client).challenge("inference-2", "node-a", honest, outputs)
    assert verdict["winner"] == "challenger"


def test_a_coordinator_problem_surfaces_as_a_veriml_error(
    traces: tuple[Trace, Trace, dict[str, Digest]], client: Client
) -> None:
    honest, _, outputs = traces
    with pytest.raises(ConflictError, match="already disputed"):
        Challenger(client).challenge("already-disputed", "node-a", honest, outputs)


def test_a_dispute_that_never_settles_is_bounded_by_moves(
    traces: tuple[Trace, Trace, dict[str, Digest]], service: Service, client: Client
) -> None:
    service.behaviour = "endless"
    honest, _, outputs = traces
    with pytest.raises(LimitExceededError, match="moves"):
        Challenger(client, max_moves=5).challenge("inference-3", "node-a", honest, outputs)
    assert service.proofs_checked == 4  # the opening was the first move


def test_a_dispute_that_never_moves_is_bounded_by_the_deadline(
    traces: tuple[Trace, Trace, dict[str, Digest]], service: Service, client: Client
) -> None:
    service.behaviour = "silent"
    honest, _, outputs = traces
    with pytest.raises(NodeUnavailableError, match="in time"):
        Challenger(client, timeout=0.4).challenge("inference-4", "node-a", honest, outputs)


def test_a_move_that_arrives_after_settlement_reads_the_verdict(
    traces: tuple[Trace, Trace, dict[str, Digest]], service: Service, client: Client
) -> None:
    service.behaviour = "late"
    honest, _, outputs = traces
    verdict = Challenger(client).challenge("inference-6", "node-a", honest, outputs)
    assert (verdict["winner"], verdict["reason"]) == ("defendant", "timeout")


def test_a_challenger_must_sign(service: Service) -> None:
    with (
        serve(service.app()) as url,
        Client(url, verify=False) as unsigned,
        pytest.raises(KeyFileError),
    ):
        Challenger(unsigned)


def test_a_trace_without_tensors_cannot_answer_a_tensor_query(
    traces: tuple[Trace, Trace, dict[str, Digest]], client: Client
) -> None:
    honest, _, outputs = traces
    bare = Trace(honest.entries)
    with pytest.raises(FormatError, match="kept no tensors"):
        Challenger(client).challenge("inference-5", "node-a", bare, outputs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "closed"}, "open or settled"),
        ({"status": "settled"}, "carries its verdict"),
        ({"query": {"index": -1}}, "non-negative"),
        ({"query": {"index": True}}, "non-negative"),
        ({"query": {"tensors": []}}, "index or a list"),
        ({"query": "index"}, "object or null"),
        ({"rounds": "3"}, "integers"),
        ({"id": ""}, "non-empty"),
    ],
)
def test_malformed_dispute_states_are_refused(change: dict[str, Any], message: str) -> None:
    state = {
        "id": "d1",
        "status": "open",
        "inference": "i1",
        "defendant": "n1",
        "challenger": "c1",
        "mode": "bitwise",
        "query": {"index": 3},
        "deadline": "2026-11-26T10:00:00Z",
        "rounds": 0,
        "messages": 0,
        "result": None,
    }
    assert DisputeState.from_json(state).query == Query(index=3)
    with pytest.raises(Error, match=message):
        DisputeState.from_json(state | change)


def test_the_challenger_bonds_what_the_rules_say_with_its_own_signature(
    traces: tuple[Trace, Trace, dict[str, Digest]],
    service: Service,
    client: Client,
    key: SigningKey,
) -> None:
    honest, _, outputs = traces
    Challenger(client).challenge("inference-7", "node-a", honest, outputs)
    free = LedgerRequest.open(Envelope.from_json(service.bodies[-1]["authorization"]))
    assert (free.account, free.amount) == (key.key_id, 0)  # no bond, still signed in
    service.bond = 10
    Challenger(client).challenge("inference-8", "node-a", honest, outputs)
    request = LedgerRequest.open(
        Envelope.from_json(service.bodies[-1]["authorization"]), op="challenge"
    )
    assert (request.account, request.amount) == (key.key_id, 10)
    assert (request.inference, request.node) == ("inference-8", "node-a")


def test_the_challenger_keeps_playing_through_a_coordinator_restart(
    traces: tuple[Trace, Trace, dict[str, Digest]], service: Service, client: Client
) -> None:
    """A move lost with the coordinator, then 503s while it restarts: the challenger asks
    for the state again until it answers, and plays on from what it then asks."""
    service.behaviour = "restarting"
    honest, _, outputs = traces
    verdict = Challenger(client).challenge("inference-9", "node-a", honest, outputs)
    assert verdict["winner"] == "challenger"
    assert service.away == 0


def test_a_coordinator_that_never_comes_back_is_bounded_by_the_deadline(
    traces: tuple[Trace, Trace, dict[str, Digest]], service: Service, client: Client
) -> None:
    service.behaviour = "restarting"
    honest, _, outputs = traces
    service.away = 0
    challenger = Challenger(client, timeout=0.5)
    state = challenger.open("inference-10", "node-a", honest, outputs)
    service.away = 10**6
    with pytest.raises(NodeUnavailableError, match="did not come back"):
        challenger.play(state, honest)
