"""External disputes over HTTP against a real local network (``veriml serve`` processes).

A challenger holding its own trace of a logged inference plays the protocol by hand here, so
every status of docs/verification.md ("Service") is seen: a signed challenge with its signed
bond only (402 without, 403 by another key), signed moves only, by the challenger only, the
move asked for only, nothing once settled, and a challenger that stops answering loses its
bond at the deadline while the defendant node answers its own queries.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from veriml.client import Client, LocalNetwork
from veriml.coordinator.auth import sign_request
from veriml.core.keys import SigningKey, generate_key, load_private_key
from veriml.core.tensors import tensor_digest, tensor_to_json
from veriml.models import ModelPackage
from veriml.models.examples import build_mlp, write_example_folder
from veriml.protocol.accounts import LedgerRequest
from veriml.runtime import Runner, Trace

pytestmark = pytest.mark.slow

X = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)
DISPUTE_TIMEOUT = 3.0
BOND = 10  # the coordinator's default challenge bond


@dataclass(frozen=True)
class Served:
    net: LocalNetwork
    folder: Path
    inference: str
    cheater: str  # the node that answered the inference


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Two nodes, node 0 cheating by one ulp; inferences until the cheater answered one."""
    home = tmp_path_factory.mktemp("disputes")
    folder = write_example_folder(home / "mlp", build_mlp((4, 8, 8, 3), seed=6), name="mlp")
    generate_key("ec").save(home / "publisher.key")
    with LocalNetwork(
        home / "net",
        nodes=2,
        port=0,
        byzantine={0: "wrong-output"},
        env={"VERIML_DISPUTE_TIMEOUT": str(DISPUTE_TIMEOUT)},
        start_timeout=60,
    ) as net:
        cheater = net.nodes[0].node_id
        assert cheater is not None
        with Client(net.url, log_vkey=net.log_vkey) as client:
            client.publish(folder, home / "publisher.key")
            for _ in range(32):
                result = client.infer("mlp", {"x": X}, policy="none")
                if result.verdict.agreeing[0] == cheater:
                    break
            else:
                pytest.fail("the scheduler never picked the cheating node")
        yield Served(net, folder, result.id, cheater)


@pytest.fixture(scope="module")
def honest_trace(served: Served) -> tuple[dict[str, str], Trace]:
    outputs, trace = Runner.for_package(ModelPackage.load(served.folder)).traced({"x": X})
    return {n: tensor_digest(a).to_text() for n, a in outputs.items()}, trace


def post(served: Served, path: str, body: dict[str, Any], key: SigningKey | None) -> httpx.Response:
    data = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if key is not None:
        headers = sign_request(key, "POST", served.net.url + path, data, headers)
    return httpx.post(served.net.url + path, content=data, headers=headers, timeout=120)


def funded(served: Served, amount: int = 100) -> SigningKey:
    """A fresh challenger account with ``amount`` deposited (by the ledger's admin key)."""
    key = generate_key()
    admin = load_private_key(served.net.home / "coordinator" / "coordinator.key", kind="ed25519")
    with Client(served.net.url, log_vkey=served.net.log_vkey, verify=False) as client:
        client.deposit(key.key_id, amount, admin)
    return key


def bond(key: SigningKey, inference: str, node: str, amount: int = BOND) -> dict[str, Any]:
    """``key``'s signed challenge request: the bond of one dispute."""
    return LedgerRequest.signed(key, "challenge", amount, inference=inference, node=node).to_json()


def open_body(
    served: Served, outputs: dict[str, str], trace: Trace, key: SigningKey | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inference": served.inference,
        "node": served.cheater,
        "trace": trace.commitment.to_json(),
        "outputs": outputs,
    }
    if key is not None:
        body["authorization"] = bond(key, served.inference, served.cheater)
    return body


def reveal_body(trace: Trace, index: int) -> dict[str, Any]:
    return {
        "index": index,
        "entry": trace.entries[index].to_json(),
        "proof": [h.hex() for h in trace.inclusion_proof(index)],
    }


def test_a_challenge_must_be_signed_and_name_a_logged_inference(
    served: Served, honest_trace: tuple[dict[str, str], Trace]
) -> None:
    outputs, trace = honest_trace
    body = open_body(served, outputs, trace)
    unsigned = post(served, "/v1/disputes", body, None)
    assert unsigned.status_code == 403
    assert unsigned.headers["content-type"] == "application/problem+json"
    unknown = post(served, "/v1/disputes", {**body, "inference": "nope"}, generate_key())
    assert unknown.status_code == 404
    renamed = {"no-such-output": next(iter(outputs.values()))}
    wrong_outputs = post(served, "/v1/disputes", {**body, "outputs": renamed}, generate_key())
    assert wrong_outputs.status_code == 400
    missing = httpx.get(f"{served.net.url}/v1/disputes/no-such-dispute", timeout=30)
    assert missing.status_code == 404


def test_a_challenge_bonds_with_the_challenger_s_own_signature_and_balance(
    served: Served, honest_trace: tuple[dict[str, str], Trace]
) -> None:
    """402 without a bond, for another amount or beyond the balance; 403 for a bond another
    key signed. Each is refused before anything is logged."""
    outputs, trace = honest_trace
    key = funded(served)
    size = httpx.get(f"{served.net.url}/healthz", timeout=30).json()["log_size"]
    body = open_body(served, outputs, trace)
    unbonded = post(served, "/v1/disputes", body, key)
    assert unbonded.status_code == 402, unbonded.text
    assert unbonded.headers["content-type"] == "application/problem+json"
    wrong = {**body, "authorization": bond(key, served.inference, served.cheater, BOND - 1)}
    assert post(served, "/v1/disputes", wrong, key).status_code == 402
    theirs = {**body, "authorization": bond(generate_key(), served.inference, served.cheater)}
    assert post(served, "/v1/disputes", theirs, key).status_code == 403
    poor = generate_key()
    assert (
        post(served, "/v1/disputes", open_body(served, outputs, trace, poor), poor).status_code
        == 402
    )
    assert httpx.get(f"{served.net.url}/healthz", timeout=30).json()["log_size"] == size


def test_the_challenger_plays_by_hand_wins_and_nothing_moves_after(
    served: Served, honest_trace: tuple[dict[str, str], Trace]
) -> None:
    outputs, trace = honest_trace
    key, stranger = funded(served), generate_key()
    opened = post(served, "/v1/disputes", open_body(served, outputs, trace, key), key)
    assert opened.status_code == 201, opened.text
    state = opened.json()
    assert state["status"] == "open"
    assert state["challenger"] == key.key_id
    assert state["defendant"] == served.cheater
    path = f"/v1/disputes/{state['id']}"
    moves = 0
    while state["status"] == "open":
        query = state["query"]
        if query is None:  # the defendant is answering, or the referee runs
            time.sleep(0.05)
            state = httpx.get(served.net.url + path, timeout=30).json()
            continue
        if "index" in query:
            body = reveal_body(trace, query["index"])
            assert post(served, path + "/reveal", body, stranger).status_code == 403
            other = reveal_body(trace, (query["index"] + 1) % trace.size)
            assert post(served, path + "/reveal", other, key).status_code == 409
            answer = post(served, path + "/reveal", body, key)
        else:
            assert trace.tensors is not None
            tensors = {n: tensor_to_json(trace.tensors[n]) for n in query["tensors"]}
            answer = post(served, path + "/tensors", {"tensors": tensors}, key)
        assert answer.status_code == 200, answer.text
        state = answer.json()
        moves += 1
        assert moves < 32
    result = state["result"]
    assert result["winner"] == "challenger"
    assert result["reason"] == "referee"
    assert result["rounds"] == state["rounds"] >= 1
    late = post(served, path + "/reveal", reveal_body(trace, 0), key)
    assert late.status_code == 410
    ledger = httpx.get(f"{served.net.url}/v1/ledger/state", timeout=30).json()
    cheater = ledger["operators"][served.cheater]  # slashes hit the node's operator
    assert ledger["accounts"][cheater]["slashes"] >= 1
    assert ledger["accounts"][key.key_id]["reputation"] == 1
    assert ledger["accounts"][key.key_id]["balance"] > 100  # the bond back, and a reward


def test_a_challenger_that_stops_answering_loses_at_the_deadline(
    served: Served, honest_trace: tuple[dict[str, str], Trace]
) -> None:
    outputs, trace = honest_trace
    key = funded(served)
    # Another claim than the earlier tests' (those receipts and outputs were disputed once).
    other = dict.fromkeys(outputs, "sha256:" + "7" * 64)
    opened = post(served, "/v1/disputes", open_body(served, other, trace, key), key)
    assert opened.status_code == 201, opened.text
    path = f"{served.net.url}/v1/disputes/{opened.json()['id']}"
    deadline = time.monotonic() + 10 * DISPUTE_TIMEOUT
    state = opened.json()
    while state["status"] == "open" and time.monotonic() < deadline:
        time.sleep(0.2)
        state = httpx.get(path, timeout=30).json()
    assert state["status"] == "settled"
    assert state["result"]["winner"] == "defendant"
    assert state["result"]["reason"] == "timeout"
    ledger = httpx.get(f"{served.net.url}/v1/ledger/state", timeout=30).json()
    assert ledger["accounts"][key.key_id]["reputation"] == -100
    assert ledger["accounts"][key.key_id]["balance"] == 100 - BOND  # the bond is burned


def test_an_optimistic_answer_is_open_to_challenge_only_within_its_window(
    served: Served, honest_trace: tuple[dict[str, str], Trace]
) -> None:
    """optimistic:W: final after W unless challenged. Within the window a challenge opens a
    dispute; once the window has closed the answer is final (410), whoever answered it."""
    outputs, trace = honest_trace
    with Client(served.net.url, log_vkey=served.net.log_vkey) as client:
        short = client.infer("mlp", {"x": X}, policy="optimistic:1s")
        long = client.infer("mlp", {"x": X}, policy="optimistic:1h")
    time.sleep(1.5)
    key = funded(served)
    node = short.verdict.agreeing[0]
    late = {**open_body(served, outputs, trace), "inference": short.id, "node": node}
    late["authorization"] = bond(key, short.id, node)
    closed = post(served, "/v1/disputes", late, key)
    assert closed.status_code == 410, closed.text
    assert closed.json()["final_after"] == short.final_after
    node = long.verdict.agreeing[0]
    in_time = {**open_body(served, outputs, trace), "inference": long.id, "node": node}
    in_time["authorization"] = bond(key, long.id, node)
    opened = post(served, "/v1/disputes", in_time, key)
    assert opened.status_code == 201, opened.text
