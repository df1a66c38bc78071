"""Red team: randomness the coordinator cannot bias (docs/threat-model.md §5).

Every request's draw secret (who runs it, whether its spot check runs, an LLM's sampling seed)
is ``HMAC(k_e, request id)`` under the key of the current beacon epoch, committed to in the log
before the epoch begins and revealed two epochs later, once every job drawn from it has long
expired (docs/verification.md, "Randomness"). On real networks:

- an honest draw is the one the revealed key gives, and ``veriml log audit`` accepts it;
- re-sending a request draws nothing new: the secret is fixed by the id and the epoch;
- the SDK names the epoch (``X-Veriml-Epoch``, learnt before it sends the request id), so a
  coordinator that draws from an epoch begun after it saw the id (one it could grind) is
  refused, while a request that names the epoch just before a rotation is still served;
- a coordinator that picks its own secret (ground so that the spot check is skipped, with the
  node signing the matching commitment) gets past the SDK only until the reveal: at the reveal
  ``veriml log audit`` rejects the log; and a coordinator that never reveals cannot keep
  serving, since the SDK refuses an answer whose epoch began longer ago than it allows.

Sampling seeds are the same draw (``protocol/draw.py: sampling_seed``): an answer whose seed is
not the draw's fails ``draw`` (``tests/unit/verify/test_completions_verify.py``).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from _rogue import RogueLog
from veriml.cli.app import app as cli
from veriml.client import Client, LocalNetwork
from veriml.core.errors import VerificationError
from veriml.core.keys import generate_key
from veriml.core.tensors import tensor_to_json
from veriml.core.timestamps import utc_now
from veriml.ledger.entries import BeaconEntry, parse_entry
from veriml.models.examples import build_mlp, write_example_folder
from veriml.protocol.draw import beacon_commitment, draw_secret
from veriml.protocol.policy import Policy, spot_checked, spot_commitment
from veriml.tlog.note import NoteVerifier
from veriml.verify.answer import InferenceResult
from veriml.verify.inference import verify_inference
from veriml.verify.network import Requirements

pytestmark = pytest.mark.slow

X = {"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)}
SPOT = "spot:0.5"


@contextlib.contextmanager
def _network(tmp: Path, **env: str) -> Iterator[LocalNetwork]:
    folder = write_example_folder(tmp / "mlp", build_mlp((4, 16, 3), seed=3), name="mlp")
    key = tmp / "publisher.key"
    generate_key("ec").save(key)
    with LocalNetwork(tmp / "net", nodes=2, port=0, witnesses=0, env=env) as net:
        with Client(net.url, log_vkey=net.log_vkey) as client:
            client.publish(folder, key)
        yield net


@pytest.fixture
def rotating(tmp_path: Path) -> Iterator[LocalNetwork]:
    """A network whose beacon begins a new epoch every two seconds."""
    with _network(tmp_path, VERIML_BEACON_INTERVAL="2") as net:
        yield net


@pytest.fixture
def steady(tmp_path: Path) -> Iterator[LocalNetwork]:
    """A network whose epoch lasts the whole test (the default ten minutes)."""
    with _network(tmp_path) as net:
        yield net


def _audit(net: LocalNetwork) -> Any:
    return CliRunner().invoke(cli, ["log", "audit", net.url + "/log", "--vkey", net.log_vkey])


def _reveal(rogue: RogueLog, epoch: int, *, timeout: float = 30.0) -> tuple[int, bytes]:
    """The log index of the beacon entry that reveals ``epoch``'s key (epoch + 2's), and
    the key."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for index, data in enumerate(rogue.log.entries(0, rogue.log.size)):
            entry = parse_entry(data)
            if isinstance(entry, BeaconEntry) and entry.epoch == epoch + 2:
                assert entry.reveal is not None
                return index, entry.reveal
        time.sleep(0.2)
    raise AssertionError(f"epoch {epoch} was never revealed")


def test_a_draw_is_the_one_the_revealed_epoch_key_gives(rotating: LocalNetwork) -> None:
    with Client(rotating.url, log_vkey=rotating.log_vkey) as client:
        answer = client.infer("mlp", X, policy=SPOT, request_id="fixed-draw")
        again = client.infer("mlp", X, policy=SPOT, request_id="fixed-draw")
    draw = answer.verdict.draw
    assert draw is not None
    assert again.verdict.draw == draw  # a request is drawn once
    with RogueLog(rotating) as log:  # read-only here: anyone can read the log
        _, key = _reveal(log, draw.epoch)
    assert draw_secret(key, "fixed-draw") == draw.secret
    assert answer.spot_checked == spot_checked(Policy.parse(SPOT), draw.secret)
    audit = _audit(rotating)
    assert audit.exit_code == 0, audit.output


def _unchecked_secret(policy: Policy) -> bytes:
    """A secret for which ``policy``'s spot check is skipped: what a grinding coordinator
    picks (half of all secrets for ``spot:0.5``)."""
    while True:
        secret = secrets.token_bytes(32)
        if not spot_checked(policy, secret):
            return secret


def _grind(net: LocalNetwork, rogue: RogueLog) -> dict[str, Any]:
    """A genuine ``spot:0.5`` answer rewritten with a secret the coordinator picked, its
    primary node's receipt signed over that secret's commitment, logged in the coordinator's
    own log."""
    with Client(net.url, log_vkey=net.log_vkey) as client:
        honest = client.infer("mlp", X, policy=SPOT).to_json()
    primary = honest["nodes"][0]["id"]
    node = next(n for n in net.nodes if str(n.node_id) == primary)
    chosen = _unchecked_secret(Policy.parse(SPOT))
    inputs = {name: tensor_to_json(value) for name, value in X.items()}
    receipt = rogue.rerun(honest["receipts"][0], node, inputs, spot=spot_commitment(chosen))

    def picked(a: dict[str, Any]) -> None:
        a["receipts"] = [receipt]
        a["receipt"] = receipt
        a["nodes"] = a["nodes"][:1]
        a["answers"] = []
        a["verdict"]["agreeing"] = [primary]
        a["verdict"]["spot"] = {"checked": False}
        a["verdict"]["draw"]["secret"] = chosen.hex()

    return rogue.forge(honest, picked)


def test_a_secret_the_coordinator_picked_is_caught_at_the_reveal(steady: LocalNetwork) -> None:
    key = NoteVerifier.from_vkey(steady.log_vkey)
    with RogueLog(steady) as rogue:
        forged = _grind(steady, rogue)
        # Until the reveal, the receipt's commitment is all there is to check: it holds.
        result = InferenceResult.from_json(forged)
        verify_inference(result, log_key=key)
        assert _audit(steady).exit_code == 0
        # Two epochs later the key the log committed to is revealed: it did not draw that
        # secret. (The coordinator's own beacon would refuse to reveal it: its ledger folds the
        # forged entry too. A liar writes the epochs itself.)
        epoch = result.verdict.draw.epoch  # type: ignore[union-attr]
        earlier = rogue.epoch_key(epoch - 1) if epoch >= 1 else None
        for number, reveal in ((epoch + 1, earlier), (epoch + 2, rogue.epoch_key(epoch))):
            entry = BeaconEntry(
                number, beacon_commitment(secrets.token_bytes(32)), utc_now(), reveal
            )
            index = rogue.append(entry.to_bytes())
    audit = _audit(steady)
    assert audit.exit_code == 1, audit.output
    assert isinstance(audit.exception, VerificationError)
    assert audit.exception.check == "ledger"
    assert audit.exception.evidence["index"] == index
    assert "does not follow from its epoch's key" in audit.exception.diagnostics()


def test_a_coordinator_that_never_reveals_cannot_keep_serving(steady: LocalNetwork) -> None:
    key = NoteVerifier.from_vkey(steady.log_vkey)
    time.sleep(2.5)  # the epoch has run for longer than the client below allows
    with RogueLog(steady) as rogue:
        forged = InferenceResult.from_json(_grind(steady, rogue))
    verify_inference(forged, log_key=key)
    # A client that allows an epoch two seconds (the default is an hour: six of the default
    # epochs) refuses an answer drawn from an epoch that began longer ago than that: a
    # coordinator that withholds a reveal must stop serving before long.
    with pytest.raises(VerificationError) as info:
        verify_inference(forged, log_key=key, trust=Requirements(max_epoch_age=2))
    assert info.value.check == "epoch"


def test_a_draw_from_an_epoch_begun_after_the_request_was_sent_is_refused(
    rotating: LocalNetwork,
) -> None:
    """A coordinator that sees the request id before it begins the epoch the request draws
    from could grind that epoch's key until the draw suits it; the SDK named its epoch
    before it sent the id, and refuses any other."""
    with Client(rotating.url, log_vkey=rotating.log_vkey) as client:
        named = client._named_epoch(True)
        direct = client._http

        def later_epoch(request: httpx.Request) -> httpx.Response:
            headers = {k: v for k, v in request.headers.items() if k.lower() != "x-veriml-epoch"}
            if request.method == "POST":  # hold the request until a new epoch has begun
                deadline = time.monotonic() + 30
                while direct.get("/v1/ledger/rules").json()["epoch"] <= named:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            forwarded = direct.build_request(
                request.method, request.url.path, headers=headers, content=request.content
            )
            return direct.send(forwarded)

        client._http = httpx.Client(
            base_url=rotating.url, transport=httpx.MockTransport(later_epoch)
        )
        with pytest.raises(VerificationError) as info:
            client.infer("mlp", X, policy=SPOT)
        assert info.value.check == "epoch"
        assert info.value.evidence["named"] == named
        client._http = direct
        # Honest: a request naming the epoch that has just ended is still drawn from it.
        named = client._named_epoch(True)
        while direct.get("/v1/ledger/rules").json()["epoch"] == named:
            time.sleep(0.1)
        answer = client.infer("mlp", X, policy=SPOT)
        assert answer.verdict.draw is not None
        assert answer.verdict.draw.epoch == named
