"""Verifying network answers from evidence built with the real runtime, log and entry types."""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _logged_nodes import STAKE, Network, model_network, signed_descriptor

from veriml.client import (
    CHECKS,
    InferenceResult,
    LogEvidence,
    NodeEvidence,
    verify_inference,
    verify_inference_file,
)
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import FormatError, VerificationError
from veriml.core.keys import generate_key
from veriml.ledger import InferenceEntry, NodeEntry
from veriml.runtime import run
from veriml.tlog import NoteSigner, NoteVerifier
from veriml.verify.network import Requirements
from veriml.verify.policy import Policy, decide

X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
# What every answer proves beyond its receipts: cited entries, bonded operators, the model's
# provenance and its challenge window (veriml.verify.network), then the verdict.
ALL_CHECKS = (*CHECKS[:-1], "evidence", "bonds", "provenance", "epoch", "window", CHECKS[-1])


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with model_network(tmp_path_factory.mktemp("net"), 4) as net:
        yield net


def _answer(net: Network, policy: str, *, tamper_node: int | None = None) -> InferenceResult:
    """What a coordinator answers: N receipts, the verdict (with the request's draw and the
    rules' challenge window), one logged entry citing the state it was scheduled under, and
    the proofs of everything it cites."""
    parsed = Policy.parse(policy)
    request_id = str(uuid.uuid4())
    results, answers = [], []
    for i, (key, operator, _) in enumerate(net.nodes[: parsed.nodes]):
        inputs = {"x": X + np.float32(1) if i == tamper_node else X}
        result = run(net.model, inputs, key=key, policy=policy, request_id=request_id)
        results.append(result)
        digests = {n: Digest.from_text(json_digest(result, n)) for n in result.outputs}
        answers.append((key.key_id, operator, digests))
    verdict = decide(parsed, answers, final_after=net.final_after(), draw=net.draw(request_id))
    # A real coordinator logs one request digest; a node that computed on other inputs
    # would carry another (the test of a disagreeing node keeps the honest digest).
    first = results[0].predicate
    entry = InferenceEntry(
        request_id=request_id,
        request_digest=first.request_digest,
        model=first.model_digest,
        policy=policy,
        receipts=tuple(r.receipt for r in results),
        verdict=verdict,
        state=net.state,
    )
    index = net.log.add(entry.to_bytes())
    note, size = net.checkpoint()
    agreeing = next(r for r in results if r.predicate.node_id in verdict.agreeing)
    return InferenceResult(
        id=request_id,
        model=first.model_digest,
        policy=policy,
        outputs=agreeing.outputs,
        receipts=entry.receipts,
        verdict=verdict,
        log=LogEvidence(index, tuple(net.log.inclusion_proof(index, size)), note),
        nodes=_nodes(net, parsed.nodes, size),
        network=net.evidence([operator for _, operator, _ in answers], size),
    )


def _nodes(net: Network, count: int, size: int) -> tuple[NodeEvidence, ...]:
    """The first ``count`` nodes' registrations, proven in the tree of ``size``."""
    cited = [(key.key_id, net.cited(reg, size)) for key, _, reg in net.nodes[:count]]
    return tuple(NodeEvidence(n, e.index, e.entry, e.inclusion_proof) for n, e in cited)


def json_digest(result: Any, name: str) -> str:
    subjects = json.loads(result.receipt.payload)["subject"]
    return next("sha256:" + s["digest"]["sha256"] for s in subjects if s["name"] == name)


def _key(net: Network) -> NoteVerifier:
    return NoteVerifier.from_vkey(net.vkey)


@pytest.mark.parametrize("policy", ["none", "quorum:3/2", "quorum:4/4"])
def test_an_honest_answer_passes_every_check(network: Network, policy: str) -> None:
    verified = verify_inference(_answer(network, policy), log_key=_key(network))
    assert verified.checks == ALL_CHECKS
    assert verified.result.verdict.outcome == "accepted"
    assert len(verified.nodes) == Policy.parse(policy).nodes


def _without_stake_proofs(result: InferenceResult) -> InferenceResult:
    bonds = dataclasses.replace(result.network.bonds, proofs=())
    return dataclasses.replace(result, network=dataclasses.replace(result.network, bonds=bonds))


def test_an_operator_without_a_stake_proof_fails_bonds(network: Network) -> None:
    with pytest.raises(VerificationError) as caught:
        verify_inference(_without_stake_proofs(_answer(network, "none")), log_key=_key(network))
    assert caught.value.check == "bonds"


def test_a_client_floor_above_the_operators_stake_fails_bonds(network: Network) -> None:
    trust = Requirements(min_stake=STAKE + 1)
    with pytest.raises(VerificationError) as caught:
        verify_inference(_answer(network, "none"), log_key=_key(network), trust=trust)
    assert caught.value.check == "bonds"
    assert caught.value.evidence["minimum"] == STAKE + 1


def test_pinned_operators_stand_in_for_stake_proofs_and_no_others(network: Network) -> None:
    result = _without_stake_proofs(_answer(network, "quorum:3/2"))
    operators = frozenset(operator for _, operator, _ in network.nodes[:3])
    pinned = Requirements(trusted_operators=operators)
    assert verify_inference(result, log_key=_key(network), trust=pinned).checks == ALL_CHECKS
    partial = Requirements(trusted_operators=operators - {network.nodes[0][1]})
    with pytest.raises(VerificationError) as caught:
        verify_inference(result, log_key=_key(network), trust=partial)
    assert caught.value.check == "bonds"


def test_a_quorum_accepts_when_k_agree_and_one_node_differs(network: Network) -> None:
    result = _answer(network, "quorum:3/2", tamper_node=2)
    # The odd node signed other inputs, so its request digest differs: the coordinator's
    # answer then fails the request check, whatever the verdict says.
    with pytest.raises(VerificationError) as caught:
        verify_inference(result, log_key=_key(network))
    assert caught.value.check == "model-digest"


def test_a_saved_answer_verifies_offline_and_round_trips(network: Network, tmp_path: Path) -> None:
    result = _answer(network, "quorum:3/2")
    path = result.save(tmp_path / "answer.json")
    assert InferenceResult.load(path).to_json() == result.to_json()
    saved = json.loads(path.read_text())
    # The members a `veriml run` reader relies on are there.
    assert {"outputs", "receipt", "receipts", "verdict", "log", "nodes"} <= set(saved)
    assert verify_inference_file(path, log_vkey=network.vkey).result.id == result.id


def _tampered(result: InferenceResult, path: Path, change: Any) -> Path:
    obj = result.to_json()
    change(obj)
    path.write_text(json.dumps(obj))
    return path


def _flip_output(obj: dict[str, Any]) -> None:
    data = obj["outputs"]["probs"]["data"]
    data[0][0] = float(np.nextafter(np.float32(data[0][0]), np.float32(2)))


def _flip_verdict(obj: dict[str, Any]) -> None:
    obj["verdict"]["agreeing"] = obj["verdict"]["agreeing"][:1]


def _flip_proof(obj: dict[str, Any]) -> None:
    proof = obj["log"]["inclusion_proof"]
    raw = bytearray(base64.b64decode(proof[0]))
    raw[0] ^= 1
    proof[0] = base64.b64encode(bytes(raw)).decode()


def _swap_node_entry(obj: dict[str, Any]) -> None:
    forged = signed_descriptor(generate_key(), generate_key(), port=1)
    obj["nodes"][0]["entry"] = base64.b64encode(NodeEntry(forged).to_bytes()).decode()


def _drop_index(obj: dict[str, Any]) -> None:
    obj["log"]["index"] = obj["log"]["index"] - 1


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (_flip_output, "output-digest"),
        (_flip_verdict, "inclusion"),
        (_flip_proof, "inclusion"),
        (_drop_index, "inclusion"),
        (_swap_node_entry, "node-key"),
    ],
)
def test_tampering_a_saved_answer_fails_offline_naming_the_check(
    network: Network, tmp_path: Path, change: Any, check: str
) -> None:
    path = _tampered(_answer(network, "quorum:3/2"), tmp_path / "t.json", change)
    with pytest.raises(VerificationError) as caught:
        verify_inference_file(path, log_vkey=network.vkey)
    assert caught.value.check == check


def test_an_answer_checked_against_another_log_key_fails_at_the_checkpoint(
    network: Network,
) -> None:
    other = NoteSigner("test.veriml.local/log", generate_key())
    with pytest.raises(VerificationError) as caught:
        verify_inference(_answer(network, "none"), log_key=NoteVerifier.from_vkey(other.vkey))
    assert caught.value.check == "checkpoint"


def test_a_receipt_signed_by_an_unregistered_key_is_rejected(network: Network) -> None:
    result = _answer(network, "none")
    stranger = generate_key()
    forged = Envelope.sign(result.receipts[0].payload, [stranger])
    with pytest.raises(VerificationError) as caught:
        verify_inference(dataclasses.replace(result, receipts=(forged,)), log_key=_key(network))
    assert caught.value.check == "signature"


def test_a_rejected_verdict_that_is_logged_still_fails_verification(network: Network) -> None:
    result = _answer(network, "quorum:3/2")
    # A coordinator that logs a 'rejected' verdict: inclusion holds, the policy was not met.
    rejected = dataclasses.replace(result.verdict, outcome="rejected")
    entry = InferenceEntry(
        request_id=result.id,
        request_digest=Digest.from_text(
            json.loads(result.receipts[0].payload)["predicate"]["request"]["digest"]
        ),
        model=result.model,
        policy=result.policy,
        receipts=result.receipts,
        verdict=rejected,
        state=network.state,
    )
    index = network.log.add(entry.to_bytes())
    note, size = network.checkpoint()
    operators = [network.operator_of(n.id) for n in result.nodes]
    logged = dataclasses.replace(
        result,
        verdict=rejected,
        nodes=_nodes(network, len(result.nodes), size),
        log=LogEvidence(index, tuple(network.log.inclusion_proof(index, size)), note),
        network=network.evidence(operators, size),
    )
    with pytest.raises(VerificationError) as caught:
        verify_inference(logged, log_key=_key(network))
    assert caught.value.check == "verdict"


def test_a_file_whose_receipt_member_is_not_an_agreeing_receipt_does_not_parse(
    network: Network,
) -> None:
    obj = _answer(network, "none").to_json()
    obj["receipt"] = Envelope.sign(b"{}", [generate_key()]).to_json()
    with pytest.raises(FormatError):
        InferenceResult.from_json(obj)


def _veriml(*args: str, env: dict[str, str] | None = None) -> Any:
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "veriml", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_veriml_verify_checks_a_saved_network_answer_offline(
    network: Network, tmp_path: Path
) -> None:
    path = _answer(network, "quorum:3/2").save(tmp_path / "answer.json")
    ok = _veriml("verify", str(path), "--json", env={"VERIML_LOG_VKEY": network.vkey})
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["checks"] == list(ALL_CHECKS)
    bad = _tampered(_answer(network, "none"), tmp_path / "bad.json", _flip_output)
    failed = _veriml("verify", str(bad), "--log-vkey", network.vkey)
    assert failed.returncode == 1
    assert "output-digest" in failed.stderr
    # No pinned key anywhere: verification refuses rather than trusting the file.
    unpinned = _veriml(
        "verify", str(path), env={"VERIML_LOG_VKEY": "", "VERIML_HOME": str(tmp_path)}
    )
    assert unpinned.returncode == 1
    assert "log-key" in unpinned.stderr


def test_a_genuine_answer_to_another_request_is_refused_by_the_client(network: Network) -> None:
    from veriml.client._requests import Expected

    result = _answer(network, "none")
    verified = verify_inference(result, log_key=_key(network))
    # The coordinator answered with a real, logged answer, but for other inputs.
    asked = Expected.of("m", {"x": X + np.float32(1)}, "none", result.id)
    with pytest.raises(VerificationError) as caught:
        asked.check(verified)
    assert caught.value.check == "request"
    Expected.of("m", {"x": X}, "none", result.id).check(verified)  # the honest case passes


def test_the_offline_request_object_is_the_runtimes_canonical_request() -> None:
    from veriml.runtime import canonical_request
    from veriml.verify.inference import request_object

    inputs = {"b": Digest.of(b"b"), "a": Digest.of(b"a")}
    model = Digest.of(b"m")
    assert request_object(model, inputs, "quorum:3/2") == canonical_request(
        model, inputs, "quorum:3/2"
    )
