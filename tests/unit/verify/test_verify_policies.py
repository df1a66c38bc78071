"""The SDK re-derives spot checks, tolerance agreement and optimistic windows from the evidence.

Answers are built as a coordinator builds them (real runtime receipts, a real log, decide()),
then each member the policy's check relies on is tampered with, as a lying coordinator would,
and logged anyway: verification must fail naming that check.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from _logged_nodes import Network, model_network

from veriml.client import (
    CHECKS,
    AnswerOutputs,
    InferenceResult,
    LogEvidence,
    NodeEvidence,
    verify_inference,
)
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement
from veriml.core.errors import VerificationError
from veriml.core.receipt import InferencePredicate, sign_receipt, utc_now
from veriml.core.tensors import tensor_digest
from veriml.core.timestamps import format_time, parse_time
from veriml.ledger import ChallengeEntry, DisputeVerdictEntry, InferenceEntry
from veriml.protocol.draw import Draw
from veriml.runtime import runner_for
from veriml.tlog import NoteVerifier
from veriml.verify.evidence import receipt_node_id
from veriml.verify.policy import (
    DisputeRef,
    Policy,
    SpotReveal,
    Verdict,
    Winner,
    decide,
    spot_checked,
    spot_commitment,
)
from veriml.verify.tolerance import OutputBounds, output_bounds

X = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
NETWORK = ("evidence", "bonds", "provenance", "epoch", "window")
"""The network checks every answer passes before its policy's own (veriml.verify.network)."""
Array = npt.NDArray[Any]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with model_network(tmp_path_factory.mktemp("net"), 3) as net:
        yield net


@dataclasses.dataclass
class Answered:
    """What the nodes did: a receipt and the outputs per node, in answer order."""

    receipts: list[Envelope]
    outputs: list[dict[str, Array]]
    answers: list[tuple[str, str, Mapping[str, Digest]]]


def _digests(outputs: Mapping[str, Array]) -> dict[str, Digest]:
    return {name: tensor_digest(a) for name, a in outputs.items()}


def _run(
    net: Network,
    policy: str,
    count: int,
    *,
    request_id: str,
    spot: Digest | None = None,
    trace: bool = False,
    nudge: Sequence[int] = (),
    scale: float = 1.0,
) -> Answered:
    """Run ``count`` nodes; the nodes in ``nudge`` answer with their first output moved by
    ``scale`` ulps of its magnitude (as a node on other hardware might), signed honestly."""
    runner = runner_for(net.model)
    out = Answered([], [], [])
    for i, (key, operator, _) in enumerate(net.nodes[:count]):
        result = runner.run(
            {"x": X},
            key=key,
            policy=policy,
            request_id=request_id,
            spot=spot if i == 0 else None,
            trace=trace,
        )
        outputs = dict(result.outputs)
        receipt = result.receipt
        if i in nudge:
            name = sorted(outputs)[0]
            value = outputs[name].copy()
            value.flat[0] += np.float32(scale) * np.spacing(np.abs(value.flat[0]))
            outputs[name] = value
            receipt = sign_receipt(_digests(outputs), result.predicate, key)
        out.receipts.append(receipt)
        out.outputs.append(outputs)
        out.answers.append((key.key_id, operator, _digests(outputs)))
    return out


def _logged(
    net: Network,
    request_id: str,
    policy: str,
    done: Answered,
    verdict: Verdict,
    *,
    answers: Sequence[int] = (),
) -> InferenceResult:
    """Log the inference entry as a coordinator does and hand back its answer with proofs of
    everything it cites (its nodes, the state, the model, its disputes' entries); ``answers``
    lists the nodes whose outputs travel in the answer's ``answers`` member."""
    predicate = InferencePredicate.from_json(
        Statement.from_bytes(done.receipts[0].payload).predicate
    )
    entry = InferenceEntry(
        request_id=request_id,
        request_digest=predicate.request_digest,
        model=predicate.model_digest,
        policy=policy,
        receipts=tuple(done.receipts),
        verdict=verdict,
        state=net.state,
    )
    index = net.log.add(entry.to_bytes())
    note, size = net.checkpoint()
    node_ids = [receipt_node_id(r) or "" for r in done.receipts]
    agreed = node_ids.index(verdict.agreeing[0]) if verdict.agreeing else 0
    nodes = []
    for key, _, reg in net.nodes[: len(done.receipts)]:
        cited = net.cited(reg, size)
        nodes.append(NodeEvidence(key.key_id, reg, cited.entry, cited.inclusion_proof))
    disputes = [i for d in verdict.disputes for i in (d.opened, d.log_index) if i is not None]
    operators = [net.operator_of(n) for n in node_ids]
    return InferenceResult(
        id=request_id,
        model=predicate.model_digest,
        policy=policy,
        outputs=done.outputs[agreed] if verdict.agreeing else {},
        receipts=entry.receipts,
        verdict=verdict,
        log=LogEvidence(index, tuple(net.log.inclusion_proof(index, size)), note),
        nodes=tuple(nodes),
        answers=tuple(AnswerOutputs(node_ids[i], done.outputs[i]) for i in answers),
        network=net.evidence(operators, size, cites=disputes),
    )


def _verify(net: Network, result: InferenceResult, **kwargs: Any) -> Any:
    return verify_inference(result, log_key=NoteVerifier.from_vkey(net.vkey), **kwargs)


def _fails(net: Network, result: InferenceResult, check: str, **kwargs: Any) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        _verify(net, result, **kwargs)
    assert caught.value.check == check, caught.value.diagnostics()
    return caught.value


# -- spot:P ---------------------------------------------------------------------------------


def _drawn(net: Network, policy: Policy, *, checked: bool) -> str:
    """A request id whose draw comes out ``checked``. The client picks its ids; the draw is
    what the epoch key, committed in the log before, gives that id."""
    for _ in range(200):
        request_id = str(uuid.uuid4())
        if spot_checked(policy, net.draw(request_id).secret) == checked:
            return request_id
    raise AssertionError("no request id gave the wanted draw")


def _dispute(net: Network, request_id: str, done: Answered, winner: Winner) -> DisputeRef:
    """The dispute a coordinator runs when the checker contradicts the primary: its
    ``challenge`` (the checker's node against the primary's receipt, both signed in) and its
    ``verdict``, logged. Only logged, not folded: the answer check reads them, and the fold's
    own rules for disputes are the ledger tests'."""
    (primary, _, _), (checker, operator, outputs) = done.answers[:2]
    traces = [
        InferencePredicate.from_json(Statement.from_bytes(r.payload).predicate).trace
        for r in done.receipts[:2]
    ]
    assert None not in traces
    dispute = str(uuid.uuid4())
    opened = net.log.add(
        ChallengeEntry(
            dispute=dispute,
            inference=request_id,
            defendant={
                "node": primary,
                "receipt": Digest.of(done.receipts[0].payload),
                "trace": traces[0].to_json(),
                "statement": done.receipts[0].to_json(),
            },
            challenger={
                "account": operator,
                "node": checker,
                "trace": traces[1].to_json(),
                "outputs": dict(outputs),
                "statement": done.receipts[1].to_json(),
            },
            mode="bitwise",
            bond=0,
            deadline_seconds=60,
            at=utc_now(),
        ).to_bytes()
    )
    closed = net.log.add(DisputeVerdictEntry(dispute, winner, "referee", utc_now()).to_bytes())
    return DisputeRef(dispute, primary, checker, winner, closed, opened)


def _spot_answer(
    net: Network,
    *,
    checked: bool,
    policy_text: str = "spot:0.5",
    draw: Draw | None = None,
    flip: bool = False,
    checker: bool | None = None,
    commit: bool = True,
    dispute: Winner | None = None,
    nudge: Sequence[int] = (),
) -> InferenceResult:
    """A ``spot:P`` answer whose draw is ``checked``, as a coordinator builds it: the
    primary's receipt commits to the draw secret, a drawn check runs a second operator's node
    (unless ``checker`` says otherwise), and the verdict reveals the draw. ``draw`` replaces
    the revealed draw and ``flip`` inverts the claimed decision (a lying coordinator)."""
    policy = Policy.parse(policy_text)
    request_id = _drawn(net, policy, checked=checked)
    drawn = net.draw(request_id)
    done = _run(
        net,
        policy_text,
        2 if (checked if checker is None else checker) else 1,
        request_id=request_id,
        spot=spot_commitment(drawn.secret) if commit else None,
        nudge=nudge,
        trace=dispute is not None,
    )
    disputes = () if dispute is None else (_dispute(net, request_id, done, dispute),)
    verdict = decide(
        policy,
        done.answers,
        spot=SpotReveal(checked),
        final_after=net.final_after(),
        disputes=disputes,
        draw=drawn,
    )
    if draw is not None or flip:
        verdict = dataclasses.replace(
            verdict, draw=draw or drawn, spot=SpotReveal(checked is not flip)
        )
    return _logged(net, request_id, policy_text, done, verdict)


@pytest.mark.parametrize("checked", [False, True])
def test_an_honest_spot_answer_passes_with_the_spot_check(network: Network, checked: bool) -> None:
    result = _spot_answer(network, checked=checked)
    verified = _verify(network, result)
    assert verified.checks == (*CHECKS[:-1], *NETWORK, "spot", "verdict")
    assert result.spot_checked is checked
    assert len(verified.result.verdict.agreeing) == (2 if checked else 1)
    assert verified.notes == ()


def test_a_revealed_secret_that_is_not_the_committed_one_fails_spot(network: Network) -> None:
    other = Draw(network.epoch, secrets.token_bytes(32))
    _fails(network, _spot_answer(network, checked=False, draw=other), "spot")


def test_a_draw_of_another_request_fails_spot(network: Network) -> None:
    # A genuine draw of the same epoch, but another request's: re-dispatching a request
    # under another id cannot stand in for this one's draw.
    other = network.draw(str(uuid.uuid4()))
    _fails(network, _spot_answer(network, checked=False, draw=other), "spot")


def test_a_spot_decision_the_secret_does_not_imply_fails_spot(network: Network) -> None:
    # The right secret, but the coordinator claims the drawn check was not drawn (and so
    # skips the second execution it owed).
    _fails(network, _spot_answer(network, checked=True, checker=False, flip=True), "spot")
    # And the other way round: an undrawn job claimed as checked.
    _fails(network, _spot_answer(network, checked=False, flip=True), "spot")


def test_a_drawn_check_without_a_second_answer_or_dispute_fails_spot(network: Network) -> None:
    _fails(network, _spot_answer(network, checked=True, checker=False), "spot")


def test_a_primary_receipt_without_a_commitment_fails_spot(network: Network) -> None:
    _fails(network, _spot_answer(network, checked=False, commit=False), "spot")


def test_a_spot_mismatch_settled_by_a_dispute_is_accepted_with_a_note(network: Network) -> None:
    # The checker differs and no dispute is claimed: the verdict rejects, the SDK refuses.
    _fails(network, _spot_answer(network, checked=True, nudge=(1,)), "verdict")
    # The dispute (as logged) found the primary right: it alone is agreeing.
    result = _spot_answer(network, checked=True, nudge=(1,), dispute="defendant")
    verified = _verify(network, result)
    primary, checker = (key.key_id for key, _, _ in network.nodes[:2])
    assert verified.result.verdict.agreeing == (primary,)
    assert [(d.defendant, d.challenger, d.winner) for d in result.disputes] == [
        (primary, checker, "defendant")
    ]
    assert verified.checks == (
        *CHECKS[:-1],
        *NETWORK[:3],
        "disputes",
        *NETWORK[3:],
        "spot",
        "verdict",
    )
    assert any("checked against their logged" in note for note in verified.notes)
    assert "re-running a dispute needs both parties' traces" in verified.summary()


def test_a_dispute_outcome_other_than_the_logged_one_fails_disputes(network: Network) -> None:
    # The logged dispute found the checker right; the verdict claims the primary won.
    result = _spot_answer(network, checked=True, nudge=(1,), dispute="challenger")
    (logged,) = result.disputes
    forged = dataclasses.replace(logged, winner="defendant")
    verdict = dataclasses.replace(result.verdict, disputes=(forged,))
    done = Answered(list(result.receipts), [dict(result.outputs)] * 2, [])
    relogged = _logged(network, result.id, result.policy, done, verdict)
    _fails(network, relogged, "disputes")


# -- optimistic:W ---------------------------------------------------------------------------


WINDOW = 600
"""The optimistic window of these tests (``optimistic:10m``), far shorter than the rules'."""


def _optimistic(
    net: Network, *, trace: bool = True, final_after: str | bool | None = True
) -> InferenceResult:
    policy_text = "optimistic:10m"
    request_id = str(uuid.uuid4())
    done = _run(net, policy_text, 1, request_id=request_id, trace=trace)
    final = net.final_after(WINDOW) if final_after is True else final_after
    verdict = decide(
        Policy.parse(policy_text),
        done.answers,
        final_after=final or None,
        draw=net.draw(request_id),
    )
    return _logged(net, request_id, policy_text, done, verdict)


def test_an_honest_optimistic_answer_passes(network: Network) -> None:
    result = _optimistic(network)
    verified = _verify(network, result)
    assert verified.checks == (*CHECKS[:-1], *NETWORK, "optimistic", "verdict")
    assert result.final_after is not None
    assert parse_time(result.final_after) > dt.datetime.now(dt.UTC)
    assert result.pending()


def test_an_optimistic_answer_without_final_after_fails_window(network: Network) -> None:
    _fails(network, _optimistic(network, final_after=False), "window")


def test_an_optimistic_receipt_without_a_trace_fails(network: Network) -> None:
    _fails(network, _optimistic(network, trace=False), "optimistic")


def test_an_optimistic_window_cut_short_fails_window(network: Network) -> None:
    soon = format_time(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=WINDOW // 2))
    _fails(network, _optimistic(network, final_after=soon), "window")


@pytest.mark.parametrize("final_after", [None, WINDOW], ids=["missing", "optimistic-window"])
def test_every_other_policy_is_challengeable_for_the_rules_window(
    network: Network, final_after: int | None
) -> None:
    # A `none` answer is final no sooner than the logged rules' challenge window (a day):
    # neither an answer that never says when, nor one that closes after W of optimistic.
    request_id = str(uuid.uuid4())
    done = _run(network, "none", 1, request_id=request_id)
    final = None if final_after is None else network.final_after(final_after)
    policy = Policy.parse("none")
    verdict = decide(policy, done.answers, final_after=final, draw=network.draw(request_id))
    _fails(network, _logged(network, request_id, "none", done, verdict), "window")
    honest = dataclasses.replace(verdict, final_after=network.final_after())
    _verify(network, _logged(network, request_id, "none", done, honest))


# -- tolerance --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bounds(network: Network) -> OutputBounds:
    return output_bounds(onnx.load(str(network.model / "model.onnx")))


def _tolerance(
    net: Network,
    *,
    nudge: Sequence[int] = (2,),
    scale: float = 1.0,
    sent: Sequence[int] = (0, 1, 2),
    judge: OutputBounds,
) -> InferenceResult:
    policy_text = "quorum:3/3,tolerance"
    request_id = str(uuid.uuid4())
    done = _run(net, policy_text, 3, request_id=request_id, nudge=nudge, scale=scale)
    verdict = decide(
        Policy.parse(policy_text),
        done.answers,
        tensors=done.outputs,
        bounds=judge,
        final_after=net.final_after(),
        draw=net.draw(request_id),
    )
    return _logged(net, request_id, policy_text, done, verdict, answers=sent)


def test_agreement_within_bounds_is_recomputed_with_the_bounds(
    network: Network, bounds: OutputBounds
) -> None:
    result = _tolerance(network, judge=bounds)
    assert result.verdict.outcome == "accepted"
    assert result.mode == "tolerance"
    verified = _verify(network, result, bounds=bounds)
    assert verified.checks == (*CHECKS[:-1], *NETWORK, "tolerance", "verdict")
    assert verified.notes == ()


def test_without_bounds_agreement_beyond_equal_bits_is_refused(
    network: Network, bounds: OutputBounds
) -> None:
    # One signer's bits differ: only the model's bounds can say whether it agrees, so an SDK
    # without them refuses to call the answer verified rather than take the verdict's word.
    result = _tolerance(network, judge=bounds)
    error = _fails(network, result, "tolerance")
    assert "output_bounds" in error.evidence["hint"]
    assert _verify(network, result, bounds=bounds).result.verdict.outcome == "accepted"


def test_bitwise_equal_answers_need_no_bounds_and_leave_no_note(
    network: Network, bounds: OutputBounds
) -> None:
    result = _tolerance(network, nudge=(), sent=(), judge=bounds)
    assert _verify(network, result).notes == ()


def test_a_claimed_agreement_beyond_the_bounds_fails_the_verdict(
    network: Network, bounds: OutputBounds
) -> None:
    # The coordinator judged with a far looser rtol than the model's: the client's bounds
    # split the third node off, and with K = 3 the claimed acceptance does not follow.
    loose = OutputBounds(rtol=0.5)
    result = _tolerance(network, scale=1e6, judge=loose)
    assert result.verdict.outcome == "accepted"
    _fails(network, result, "verdict", bounds=bounds)


def test_a_differing_node_whose_outputs_are_not_sent_fails_tolerance(
    network: Network, bounds: OutputBounds
) -> None:
    _fails(network, _tolerance(network, sent=(0, 1), judge=bounds), "tolerance")


def test_sent_outputs_that_are_not_the_signed_ones_fail_tolerance(
    network: Network, bounds: OutputBounds
) -> None:
    result = _tolerance(network, judge=bounds)
    tampered = [
        dataclasses.replace(a, outputs={n: v + np.float32(1) for n, v in a.outputs.items()})
        if a.node == result.nodes[2].id
        else a
        for a in result.answers
    ]
    _fails(network, dataclasses.replace(result, answers=tuple(tampered)), "tolerance")


def test_a_verdict_mode_that_is_not_the_policys_fails(
    network: Network, bounds: OutputBounds
) -> None:
    result = _tolerance(network, nudge=(), judge=bounds)
    forged = dataclasses.replace(result.verdict, mode="bitwise")
    done = Answered(list(result.receipts), [dict(result.outputs)] * 3, [])
    _fails(network, _logged(network, result.id, result.policy, done, forged), "verdict")


def test_saved_answers_round_trip_with_every_nodes_outputs(
    network: Network, bounds: OutputBounds, tmp_path: Path
) -> None:
    result = _tolerance(network, judge=bounds)
    loaded = InferenceResult.load(result.save(tmp_path / "answer.json"))
    assert loaded.to_json() == result.to_json()
    assert [a.node for a in loaded.answers] == [n.id for n in result.nodes]
    _verify(network, loaded, bounds=bounds)
