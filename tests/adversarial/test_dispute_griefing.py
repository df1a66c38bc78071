"""Red team: griefing honest nodes with disputes (docs/threat-model.md §3).

Each test is one attack on a real local network (``veriml serve`` processes on 127.0.0.1) and
asserts that it fails: the honest party keeps its stake, and the attacker pays or is refused
before anything is logged.

- a challenger that never moves loses its bond; the defendant keeps its stake;
- a flood of disputes against a busy node is bounded per node (429) and convicts nobody;
- a replayed challenge is refused (409) and the log holds it once;
- a challenger who waits for the node to restart finds the answer re-derived all the same;
- both parties faulting (the defendant's node gone, the challenger silent) spares the
  defendant;
- a challenge after the answer's window is refused (410), whatever the policy;
- a coordinator restart in the middle of a dispute resumes it, and it settles once.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from _logread import logged_entries
from veriml.client import Client, LocalNetwork
from veriml.client._disputes import Challenger, DisputeState
from veriml.coordinator.auth import sign_request
from veriml.core.errors import Error
from veriml.core.keys import SigningKey, generate_key, load_private_key
from veriml.core.tensors import tensor_digest
from veriml.core.timestamps import parse_time, utc_now
from veriml.models import ModelPackage
from veriml.models.examples import build_mlp, write_example_folder
from veriml.protocol.accounts import LedgerRequest
from veriml.runtime import Runner, Trace

pytestmark = pytest.mark.slow

STAKE = 1000  # what LocalNetwork stakes for every operator
BOND = 10  # the coordinator's default challenge bond
FUNDS = 100
DISPUTE_TIMEOUT = 2.0
WINDOW = 8.0  # the rules' challenge window on the shared network (seconds)


# -- the network and the attacker's tools -----------------------------------------------------


@dataclass(frozen=True)
class Net:
    net: LocalNetwork
    folder: Path

    @property
    def url(self) -> str:
        return self.net.url

    def client(self, **options: Any) -> Client:
        return Client(self.net.url, log_vkey=self.net.log_vkey, **options)

    def funded(self, amount: int = FUNDS) -> SigningKey:
        """A fresh account with ``amount`` deposited by the ledger's admin."""
        key = generate_key()
        admin = load_private_key(self.net.home / "coordinator" / "coordinator.key", kind="ed25519")
        with self.client(verify=False) as client:
            client.deposit(key.key_id, amount, admin)
        return key

    def infer(self, x: np.ndarray, policy: str = "none") -> dict[str, Any]:
        """An answer (unverified: the attack is on the dispute, not on the answer)."""
        with self.client(verify=False) as client:
            result = client.infer("mlp", {"x": x}, policy=policy)
        return {"id": result.id, "node": result.verdict.agreeing[0], "result": result}

    def ledger(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/v1/ledger/state", timeout=30).json())

    def operator(self, node_id: str) -> str:
        return str(self.ledger()["operators"][node_id])

    def log_size(self) -> int:
        return int(httpx.get(f"{self.url}/healthz", timeout=30).json()["log_size"])

    def challenges(self, inference: str) -> list[dict[str, Any]]:
        """The ``challenge`` entries the log holds about ``inference``."""
        return [e for e in self.entries("challenge") if e["inference"] == inference]

    def entries(self, kind: str) -> list[dict[str, Any]]:
        raw = logged_entries(self.url, self.net.log_vkey)
        parsed = (json.loads(data) for data in raw)
        return [e for e in parsed if e.get("type") == kind]


def network(
    root: Path, *, nodes: int = 2, env: dict[str, str] | None = None, **options: Any
) -> contextlib.AbstractContextManager[LocalNetwork]:
    settings = {"VERIML_DISPUTE_TIMEOUT": str(DISPUTE_TIMEOUT), **(env or {})}
    return LocalNetwork(root, nodes=nodes, port=0, env=settings, start_timeout=90, **options)


def publish(net: LocalNetwork, root: Path, model: Any) -> Path:
    folder = write_example_folder(root / "mlp", model, name="mlp")
    generate_key("ec").save(root / "publisher.key")
    with Client(net.url, log_vkey=net.log_vkey) as client:
        client.publish(folder, root / "publisher.key")
    return folder


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    """Two honest nodes of two staked operators; the rules' challenge window is short."""
    root = tmp_path_factory.mktemp("griefing")
    with network(root / "net", env={"VERIML_CHALLENGE_WINDOW": str(WINDOW)}) as net:
        yield Net(net, publish(net, root, build_mlp((4, 8, 8, 3), seed=11)))


def false_trace(folder: Path, x: np.ndarray) -> tuple[dict[str, str], Trace]:
    """A trace that is true of other inputs: a consistent lie about this request."""
    outputs, trace = Runner.for_package(ModelPackage.load(folder)).traced({"x": x + 1})
    return {n: tensor_digest(a).to_text() for n, a in outputs.items()}, trace


def challenge_body(
    key: SigningKey | None,
    inference: str,
    node: str,
    outputs: dict[str, str],
    trace: Trace,
    *,
    bond: int = BOND,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inference": inference,
        "node": node,
        "trace": trace.commitment.to_json(),
        "outputs": outputs,
    }
    if key is not None:
        signed = LedgerRequest.signed(key, "challenge", bond, inference=inference, node=node)
        body["authorization"] = signed.to_json()
    return body


def post(url: str, path: str, body: dict[str, Any], key: SigningKey) -> httpx.Response:
    data = json.dumps(body).encode()
    headers = sign_request(key, "POST", url + path, data, {"content-type": "application/json"})
    return httpx.post(url + path, content=data, headers=headers, timeout=120)


def settled(url: str, dispute: str, *, within: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        state = httpx.get(f"{url}/v1/disputes/{dispute}", timeout=30).json()
        if state["status"] == "settled":
            return dict(state)
        assert time.monotonic() < deadline, f"dispute {dispute} did not settle"
        time.sleep(0.1)


X = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)


# -- the attacks --------------------------------------------------------------------------------


def test_a_challenger_that_never_moves_loses_its_bond_and_the_defendant_keeps_its_stake(
    shared: Net,
) -> None:
    answer = shared.infer(X)
    outputs, trace = false_trace(shared.folder, X)
    attacker = shared.funded()
    body = challenge_body(attacker, answer["id"], answer["node"], outputs, trace)
    opened = post(shared.url, "/v1/disputes", body, attacker)
    assert opened.status_code == 201, opened.text
    # ... and never moves.
    state = settled(shared.url, opened.json()["id"])
    assert (state["result"]["winner"], state["result"]["reason"]) == ("defendant", "timeout")
    ledger = shared.ledger()
    assert ledger["accounts"][attacker.key_id]["balance"] == FUNDS - BOND
    defendant = ledger["accounts"][shared.operator(answer["node"])]
    assert defendant["stake"] == STAKE
    assert defendant["slashes"] == 0


def test_a_replayed_challenge_is_refused_and_the_log_holds_it_once(shared: Net) -> None:
    """The same signed request again (403: its nonce is spent), the same claim with a fresh
    signature and the same claim by another account (409 each): nothing logged, nothing
    charged."""
    answer = shared.infer(X + 2)
    outputs, trace = false_trace(shared.folder, X + 2)
    attacker, accomplice = shared.funded(), shared.funded()
    body = challenge_body(attacker, answer["id"], answer["node"], outputs, trace)
    data = json.dumps(body).encode()
    headers = sign_request(
        attacker, "POST", shared.url + "/v1/disputes", data, {"content-type": "application/json"}
    )
    first = httpx.post(shared.url + "/v1/disputes", content=data, headers=headers, timeout=120)
    assert first.status_code == 201, first.text
    size = shared.log_size()
    replayed = httpx.post(shared.url + "/v1/disputes", content=data, headers=headers, timeout=120)
    assert replayed.status_code == 403, replayed.text
    assert replayed.headers["content-type"] == "application/problem+json"
    assert replayed.json()["check"] == "request-replay"
    again = challenge_body(attacker, answer["id"], answer["node"], outputs, trace)
    assert post(shared.url, "/v1/disputes", again, attacker).status_code == 409
    theirs = challenge_body(accomplice, answer["id"], answer["node"], outputs, trace)
    assert post(shared.url, "/v1/disputes", theirs, accomplice).status_code == 409
    settled(shared.url, first.json()["id"])
    assert len(shared.challenges(answer["id"])) == 1
    assert shared.ledger()["accounts"][accomplice.key_id]["balance"] == FUNDS
    assert shared.log_size() >= size  # (the first dispute's verdict came after)


def test_a_challenge_after_the_answer_s_window_is_refused_whatever_the_policy(
    shared: Net,
) -> None:
    """``none`` answers are final after the rules' window, ``optimistic:W`` ones after W:
    a challenge then is 410 Gone, before anything is logged or bonded."""
    plain = shared.infer(X + 3)
    optimistic = shared.infer(X + 3, policy="optimistic:1s")
    outputs, trace = false_trace(shared.folder, X + 3)
    attacker = shared.funded()
    for answer in (plain, optimistic):
        final_after = answer["result"].final_after
        assert final_after is not None  # every policy has a window
        wait = (parse_time(final_after) - parse_time(utc_now())).total_seconds()
        assert wait <= WINDOW
        time.sleep(max(0.0, wait) + 0.3)
    size = shared.log_size()
    for answer in (plain, optimistic):
        body = challenge_body(attacker, answer["id"], answer["node"], outputs, trace)
        late = post(shared.url, "/v1/disputes", body, attacker)
        assert late.status_code == 410, late.text
        assert late.json()["final_after"] == answer["result"].final_after
    assert shared.log_size() == size
    assert shared.ledger()["accounts"][attacker.key_id]["balance"] == FUNDS


def test_a_challenger_who_waits_for_the_node_to_restart_still_loses(shared: Net) -> None:
    """An untraced answer is re-derived by a retrace from the inputs the coordinator stored;
    a node restart between the answer and the challenge loses nothing that path needs (its
    model cache and the journal of what it answered are on disk)."""
    answer = shared.infer(X + 5)
    node = next(n for n in shared.net.nodes if n.node_id == answer["node"])
    node.stop()
    node.start(shared.net.env)
    shared.net.wait_registered([node])
    outputs, trace = false_trace(shared.folder, X + 5)
    attacker = shared.funded()
    body = challenge_body(attacker, answer["id"], answer["node"], outputs, trace)
    opened = post(shared.url, "/v1/disputes", body, attacker)
    assert opened.status_code == 201, opened.text
    with shared.client(verify=False, key=attacker) as client:
        state = DisputeState.from_json(opened.json())
        verdict = Challenger(client, timeout=120).play(state, trace)
    assert (verdict["winner"], verdict["reason"]) == ("defendant", "referee")
    defendant = shared.ledger()["accounts"][shared.operator(answer["node"])]
    assert (defendant["stake"], defendant["slashes"]) == (STAKE, 0)


def test_when_both_parties_fault_the_defendant_is_not_slashed(shared: Net) -> None:
    """The defendant's node is gone (it cannot reveal), and the challenger never moves:
    a double fault, decided for the defendant. (Last: it stops a node.)"""
    answer = shared.infer(X + 4, policy="optimistic:1h")  # traced: no retrace needed
    outputs, trace = false_trace(shared.folder, X + 4)
    attacker = shared.funded()
    gone = next(n for n in shared.net.nodes if n.node_id == answer["node"])
    gone.stop()
    body = challenge_body(attacker, answer["id"], answer["node"], outputs, trace)
    opened = post(shared.url, "/v1/disputes", body, attacker)
    assert opened.status_code == 201, opened.text
    state = settled(shared.url, opened.json()["id"])
    assert (state["result"]["winner"], state["result"]["reason"]) == ("defendant", "timeout")
    ledger = shared.ledger()
    defendant = ledger["accounts"][shared.operator(answer["node"])]
    assert (defendant["stake"], defendant["slashes"]) == (STAKE, 0)
    assert ledger["accounts"][attacker.key_id]["balance"] == FUNDS - BOND


def test_a_flood_of_disputes_against_a_busy_node_is_bounded_and_convicts_nobody(
    tmp_path: Path,
) -> None:
    """One node, one job at a time and no queue, kept busy by ordinary requests; six
    griefers challenge its answers at once with consistent lies. At most two disputes are
    open against it at a time (the rest: 429, nothing logged or bonded); each one it plays
    from its own retrace lane and wins at the referee."""
    env = {"VERIML_MAX_DISPUTES_PER_NODE": "2"}
    node_args = ["--concurrency", "1", "--queue", "0"]
    with network(tmp_path / "net", nodes=1, env=env, node_args=node_args) as net:
        shared = Net(net, publish(net, tmp_path, build_mlp((4, 256, 256, 256, 3), seed=12)))
        answers = [shared.infer(X + i) for i in range(6)]
        lies = [false_trace(shared.folder, X + i) for i in range(6)]
        griefers = [shared.funded() for _ in range(6)]
        busy = threading.Event()
        refused: list[int] = []

        def load() -> None:
            with shared.client(verify=False) as client:
                while not busy.is_set():
                    try:
                        client.infer("mlp", {"x": X}, policy="none")
                    except Error:  # busy is the point: refusals (503) are expected
                        refused.append(1)

        def grief(i: int) -> tuple[int, dict[str, Any] | None]:
            outputs, trace = lies[i]
            answer = answers[i]
            body = challenge_body(griefers[i], answer["id"], answer["node"], outputs, trace)
            opened = post(shared.url, "/v1/disputes", body, griefers[i])
            if opened.status_code != 201:
                return opened.status_code, None
            with shared.client(verify=False, key=griefers[i]) as client:
                verdict = Challenger(client, timeout=120).play(
                    DisputeState.from_json(opened.json()), trace
                )
            return 201, verdict

        with ThreadPoolExecutor(10) as pool:
            loaders = [pool.submit(load) for _ in range(4)]
            time.sleep(0.5)
            outcomes = list(pool.map(grief, range(6)))
            busy.set()
            for loader in loaders:
                loader.result()
        statuses = [status for status, _ in outcomes]
        assert refused, "the node was never busy"  # ordinary requests were refused meanwhile
        assert set(statuses) <= {201, 429}
        assert 1 <= statuses.count(201) <= 6
        assert statuses.count(429) >= 1, statuses  # six at once against a limit of two
        for _, verdict in outcomes:
            if verdict is not None:
                assert (verdict["winner"], verdict["reason"]) == ("defendant", "referee")
        ledger = shared.ledger()
        node = net.nodes[0].node_id
        assert node is not None
        defendant = ledger["accounts"][shared.operator(node)]
        assert (defendant["stake"], defendant["slashes"]) == (STAKE, 0)
        opened = sum(len(shared.challenges(a["id"])) for a in answers)
        assert opened == statuses.count(201)
        for griefer, status in zip(griefers, statuses, strict=True):
            charged = FUNDS - BOND if status == 201 else FUNDS
            assert ledger["accounts"].get(griefer.key_id, {}).get("balance") == charged


def test_a_coordinator_restart_in_the_middle_of_a_dispute_resumes_it_and_it_settles_once(
    tmp_path: Path,
) -> None:
    """A watcher disputes a cheating node's answer; after its first move the coordinator
    restarts. The dispute comes back from the database, the watcher plays on through the
    same routes, and one verdict convicts the cheater."""
    env = {"VERIML_DISPUTE_TIMEOUT": "10"}
    with network(tmp_path / "net", env=env, byzantine={0: "wrong-output"}) as net:
        shared = Net(net, publish(net, tmp_path, build_mlp((4, 8, 8, 8, 3), seed=13)))
        cheater = net.nodes[0].node_id
        for i in range(32):
            answer = shared.infer(X + i)
            if answer["node"] == cheater:
                break
        else:
            pytest.fail("the scheduler never gave the cheater a request")
        x = X + i
        outputs, honest = Runner.for_package(ModelPackage.load(shared.folder)).traced({"x": x})
        claimed = {n: tensor_digest(a) for n, a in outputs.items()}
        watcher = shared.funded()
        paused, restarted = threading.Event(), threading.Event()
        seen: list[DisputeState] = []

        def on_state(state: DisputeState) -> None:
            seen.append(state)
            if state.rounds >= 1 and not state.settled and not paused.is_set():
                paused.set()  # one move recorded: hold the next until the restart is done
                assert restarted.wait(120)

        with (
            shared.client(verify=False, key=watcher) as client,
            ThreadPoolExecutor(1) as pool,
        ):
            challenger = Challenger(client, timeout=180, on_state=on_state)
            playing = pool.submit(challenger.challenge, answer["id"], cheater, honest, claimed)
            assert paused.wait(60), "the dispute never recorded a move"
            dispute, before = seen[-1].id, seen[-1].rounds
            net.coordinator.stop()
            net.start_coordinator()
            restarted.set()
            verdict = playing.result(timeout=180)
        assert verdict["dispute"] == dispute
        assert (verdict["winner"], verdict["reason"]) == ("challenger", "referee")
        assert verdict["rounds"] >= before >= 1  # the rounds before the restart count
        verdicts = [e for e in shared.entries("verdict") if e["dispute"] == dispute]
        assert len(verdicts) == 1
        assert len(shared.challenges(answer["id"])) == 1
        slashes = [e for e in shared.entries("slash") if e["dispute"] == dispute]
        assert [s["account"] for s in slashes] == [shared.operator(cheater)]
        ledger = shared.ledger()
        assert not ledger["disputes"]
        honest_operator = ledger["accounts"][shared.operator(str(net.nodes[1].node_id))]
        assert (honest_operator["stake"], honest_operator["slashes"]) == (STAKE, 0)
