"""Red team: a malicious coordinator lying in its answers (docs/threat-model.md §1, §4).

The network is real (a coordinator and nodes as ``veriml up`` starts them); the lies are
written into the coordinator's *own log* with its own key (``_rogue.RogueLog``), so each
forged answer is logged, included and consistent, and only the SDK's checks of meaning are
left to catch it. Each attack must fail:

- a verdict counting one bonded operator's two nodes as a quorum of two;
- a coordinator reordering receipts in tolerance mode so a bad signer leads the agreement;
- a forged dispute outcome (the convicted cheater claimed as the winner);
- a drawn spot check answered by one operator alone;
- unsigned request members standing in for logged ones;
- an answer for another request id; an answer with no stake proofs or no provenance;
- and the honest cases: an optimistic answer is pending until ``final_after``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from _rogue import RogueLog
from veriml.client import Client, LocalNetwork
from veriml.core.errors import NodeUnavailableError, VerificationError
from veriml.core.keys import generate_key
from veriml.core.tensors import tensor_to_json
from veriml.core.timestamps import parse_time
from veriml.models.examples import build_mlp, write_example_folder
from veriml.tlog.note import NoteVerifier
from veriml.verify.answer import InferenceResult
from veriml.verify.inference import verify_inference

pytestmark = pytest.mark.slow

X = {"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)}


def _model(tmp: Path, name: str) -> tuple[Path, Path]:
    folder = write_example_folder(tmp / name, build_mlp((4, 64, 64, 3), seed=3), name=name)
    key = tmp / "publisher.key"
    generate_key("ec").save(key)
    return folder, key


@pytest.fixture(scope="module")
def sybil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """Three nodes, two of them bound to one operator (one party's two registrations)."""
    tmp = tmp_path_factory.mktemp("sybil")
    folder, key = _model(tmp, "mlp")
    with LocalNetwork(tmp / "net", nodes=3, port=0, operators={1: 0}, witnesses=0) as net:
        with Client(net.url, log_vkey=net.log_vkey) as client:
            client.publish(folder, key)
        yield net


@pytest.fixture(scope="module")
def cheaters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """Four operators: node 3 answers in float16 (beyond tolerance), node 2 adds one ulp."""
    tmp = tmp_path_factory.mktemp("cheaters")
    folder, key = _model(tmp, "mlp")
    byzantine = {2: "wrong-output", 3: "fp16"}
    with LocalNetwork(tmp / "net", nodes=4, port=0, byzantine=byzantine, witnesses=0) as net:
        with Client(net.url, log_vkey=net.log_vkey) as client:
            client.publish(folder, key)
        yield net


def _verify(net: LocalNetwork, answer: dict[str, Any], **kwargs: Any) -> None:
    key = NoteVerifier.from_vkey(net.log_vkey)
    verify_inference(InferenceResult.from_json(answer), log_key=key, **kwargs)


def _answer(net: LocalNetwork, policy: str, **kwargs: Any) -> dict[str, Any]:
    with Client(net.url, log_vkey=net.log_vkey, **kwargs) as client:
        return client.infer("mlp", X, policy=policy).to_json()


def test_two_nodes_of_one_operator_cannot_make_a_quorum_of_two(sybil: LocalNetwork) -> None:
    # The coordinator will not schedule it: only two distinct operators exist.
    with (
        Client(sybil.url, log_vkey=sybil.log_vkey) as client,
        pytest.raises(NodeUnavailableError, match="distinct operators"),
    ):
        client.infer("mlp", X, policy="quorum:3/3")
    # A lying coordinator has the party's second node run the same job and logs a verdict
    # with the party's two receipts as a quorum of two.
    party = [str(n.node_id) for n in sybil.nodes[:2]]
    assert sybil.operator_id(sybil.nodes[0]) == sybil.operator_id(sybil.nodes[1])
    answer = _answer(sybil, "quorum:2/2")
    ids = [n["id"] for n in answer["nodes"]]
    mine = next(i for i in ids if i in party)
    twin = next(i for i in party if i != mine)
    stranger = ids.index(next(i for i in ids if i not in party))
    inputs = {name: tensor_to_json(value) for name, value in X.items()}
    with RogueLog(sybil) as rogue:
        twin_node = sybil.nodes[party.index(twin)]
        receipt = rogue.rerun(answer["receipts"][ids.index(mine)], twin_node, inputs)
        registration = rogue.node_entry(twin)

        def two_of_one_party(a: dict[str, Any]) -> None:
            a["receipts"][stranger] = receipt
            a["nodes"][stranger] = {"id": twin, "log_index": registration["index"]}
            a["evidence"].append(registration)
            a["verdict"]["agreeing"] = [mine, twin]
            a.pop("receipt", None)  # (the first agreeing node's, which may have changed)

        forged = rogue.forge(answer, two_of_one_party)
    with pytest.raises(VerificationError) as info:
        _verify(sybil, forged)
    assert info.value.check == "verdict"


def test_reordered_receipts_in_tolerance_mode_do_not_let_a_bad_signer_lead(
    cheaters: LocalNetwork,
) -> None:
    with Client(cheaters.url, log_vkey=cheaters.log_vkey) as client:
        honest = client.infer("mlp", X, policy="quorum:4/3,tolerance")
        bounds = client.output_bounds(honest.model)
    fp16 = str(cheaters.nodes[3].node_id)
    assert fp16 not in honest.verdict.agreeing  # the honest verdict left the cheater out
    answer = honest.to_json()
    position = next(
        i for i, n in enumerate(answer["nodes"]) if n["id"] == fp16
    )  # the cheater's receipt, answers and node entry go first

    def lead_with_the_cheater(a: dict[str, Any]) -> None:
        for member in ("receipts", "nodes"):
            a[member].insert(0, a[member].pop(position))
        cheat = next(x for x in a["answers"] if x["node"] == fp16)
        a["outputs"] = cheat["outputs"]
        a["verdict"]["agreeing"] = [fp16, *a["verdict"]["agreeing"][:1]]
        a["verdict"]["outputs"] = _signed_outputs(a, 0)
        a.pop("receipt", None)

    with RogueLog(cheaters) as rogue:
        forged = rogue.forge(answer, lead_with_the_cheater)
    with pytest.raises(VerificationError) as info:
        _verify(cheaters, forged, bounds=bounds)
    assert info.value.check == "verdict"
    # Without the model's bounds the SDK does not take the agreement on trust either.
    with pytest.raises(VerificationError) as info:
        _verify(cheaters, forged)
    assert info.value.check == "tolerance"


def _signed_outputs(answer: dict[str, Any], index: int) -> dict[str, str]:
    """The output digests receipt ``index`` of ``answer`` signs."""
    from veriml.core.dsse import Envelope, Statement

    statement = Statement.from_bytes(Envelope.from_json(answer["receipts"][index]).payload)
    return {s.name: s.digest.to_text() for s in statement.subjects}


def test_a_forged_dispute_outcome_is_checked_against_the_logged_verdict(
    cheaters: LocalNetwork,
) -> None:
    with Client(cheaters.url, log_vkey=cheaters.log_vkey) as client:
        result = None
        for attempt in range(12):  # one cheater, not both, must be among the three drawn
            got = client.infer(
                "mlp", X, policy="quorum:3/2", request_id=f"dispute-{attempt}", verify=False
            )
            if got.verdict.disputes and got.verdict.outcome == "accepted":
                result = got
                break
    assert result is not None, "no draw put exactly one cheater in the quorum"
    _verify(cheaters, result.to_json())
    ref = result.verdict.disputes[0]
    assert ref.winner == "challenger"  # the cheater (defendant) lost

    def cheater_won(a: dict[str, Any]) -> None:
        a["verdict"]["disputes"][0]["winner"] = "defendant"

    with RogueLog(cheaters) as rogue:
        forged = rogue.forge(result.to_json(), cheater_won)
    with pytest.raises(VerificationError) as info:
        _verify(cheaters, forged)
    assert info.value.check == "disputes"


def test_a_drawn_spot_check_answered_by_one_operator_is_refused(
    sybil: LocalNetwork, tmp_path: Path
) -> None:
    answer = _answer(sybil, "spot:1")
    assert answer["verdict"]["spot"] == {"checked": True}
    assert len(answer["receipts"]) == 2

    def checker_dropped(a: dict[str, Any]) -> None:
        for member in ("receipts", "nodes"):
            a[member] = a[member][:1]
        a["verdict"]["agreeing"] = a["verdict"]["agreeing"][:1]
        a.pop("receipt", None)

    with RogueLog(sybil) as rogue:
        forged = rogue.forge(answer, checker_dropped)
    with pytest.raises(VerificationError) as info:
        _verify(sybil, forged)
    assert info.value.check == "spot"
    # And the coordinator itself refuses a drawn check no other operator can carry out.
    folder, key = _model(tmp_path, "solo")
    with (
        LocalNetwork(tmp_path / "solo-net", nodes=1, port=0, witnesses=0) as solo,
        Client(solo.url, log_vkey=solo.log_vkey) as client,
    ):
        client.publish(folder, key)
        with pytest.raises(NodeUnavailableError, match="spot check was drawn"):
            client.infer("solo", X, policy="spot:1")


def test_unsigned_request_members_cannot_stand_in_for_logged_ones(sybil: LocalNetwork) -> None:
    answer = _answer(sybil, "none")
    for member in ("id", "digest", "model", "policy"):
        lying = json.loads(json.dumps(answer))
        lying["request"] = {member: "sha256:" + "0" * 64}
        with pytest.raises(VerificationError) as info:
            _verify(sybil, lying)
        assert info.value.check == "inclusion"


def test_an_answer_to_another_request_id_is_refused(sybil: LocalNetwork) -> None:
    first = _answer(sybil, "none")
    second = _answer(sybil, "none")

    def lying(request: httpx.Request) -> httpx.Response:  # every id gets the first answer
        return httpx.Response(200, json=first)

    with Client(sybil.url, log_vkey=sybil.log_vkey) as client:
        client._http = httpx.Client(base_url=sybil.url, transport=httpx.MockTransport(lying))
        assert client.inference(first["id"]).id == first["id"]
        with pytest.raises(VerificationError) as info:
            client.inference(second["id"])
    assert info.value.check == "request"


@pytest.mark.parametrize("member", ["bonds", "provenance"])
def test_an_answer_without_its_stake_proofs_or_provenance_is_refused(
    sybil: LocalNetwork, member: str
) -> None:
    answer = _answer(sybil, "quorum:2/2")
    _verify(sybil, answer)
    if member == "bonds":
        answer["bonds"].pop("proofs")  # the state it cites stays (the entry is logged with it)
    else:
        answer.pop(member)
    with pytest.raises(VerificationError) as info:
        _verify(sybil, answer)
    assert info.value.check == member


def test_a_forged_stake_proof_is_refused(sybil: LocalNetwork) -> None:
    answer = _answer(sybil, "none")
    answer["bonds"]["proofs"][0]["stake"] += 1_000_000
    with pytest.raises(VerificationError) as info:
        _verify(sybil, answer)
    assert info.value.check == "bonds"


def test_trusted_operators_pin_the_answering_operators(sybil: LocalNetwork) -> None:
    operators = {sybil.operator_id(n) for n in sybil.nodes}
    with Client(sybil.url, log_vkey=sybil.log_vkey, trusted_operators=operators) as client:
        assert client.infer("mlp", X, policy="none").verified
    stranger = {generate_key().key_id}
    with (
        Client(sybil.url, log_vkey=sybil.log_vkey, trusted_operators=stranger) as client,
        pytest.raises(VerificationError) as info,
    ):
        client.infer("mlp", X, policy="none")
    assert info.value.check == "bonds"


def test_an_optimistic_answer_is_pending_until_final_after(sybil: LocalNetwork) -> None:
    with Client(sybil.url, log_vkey=sybil.log_vkey) as client:
        result = client.infer("mlp", X, policy="optimistic:10m")
    assert result.verified
    assert result.pending()
    final = parse_time(result.final_after)
    assert final - dt.datetime.now(dt.UTC) > dt.timedelta(minutes=9)
    assert not result.pending(final + dt.timedelta(seconds=1))
    with Client(sybil.url, log_vkey=sybil.log_vkey) as client:
        other = client.infer("mlp", X, policy="none")
    assert not other.pending()
    assert other.final_after is not None  # every answer has a window


def test_an_unbonded_operator_s_answer_is_not_verified(tmp_path: Path) -> None:
    folder, key = _model(tmp_path, "mlp")
    # A coordinator whose rules want no stake schedules an unbonded operator; a client never
    # accepts one.
    with (
        LocalNetwork(tmp_path / "net", nodes=1, port=0, stake=0, min_stake=0, witnesses=0) as net,
        Client(net.url, log_vkey=net.log_vkey) as client,
    ):
        client.publish(folder, key)
        with pytest.raises(VerificationError) as info:
            client.infer("mlp", X, policy="none")
        assert info.value.check == "bonds"
        answer = client.infer("mlp", X, policy="none", verify=False)
    assert answer.verdict.outcome == "accepted"  # the coordinator answered; the SDK refused
