"""Verifying OpenAI-style LLM answers from evidence built with the real receipt, log and entry
types (no model runs here: the tokens are made up, the signatures and proofs are real)."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from _logged_nodes import Network, logged_network

from veriml.client import COMPLETION_CHECKS, ChatResult, verify_completion
from veriml.client._chat import StreamAssembler
from veriml.core.canonical import canonical_digest
from veriml.core.completion import (
    CompletionPredicate,
    completion_output_digest,
    relay_digest,
    sampling_of,
    sign_completion,
    token_digest,
)
from veriml.core.digest import Digest
from veriml.core.errors import FormatError, VerificationError
from veriml.core.keys import generate_key
from veriml.core.receipt import utc_now
from veriml.ledger import InferenceEntry
from veriml.protocol.draw import Draw, sampling_seed
from veriml.protocol.openai_requests import canonical_request
from veriml.protocol.prefill_check import PrefillCheck, sign_prefill_check
from veriml.protocol.sse import parse_sse
from veriml.tlog import NoteSigner
from veriml.verify.policy import Policy, SpotReveal, decide, spot_checked, spot_commitment

MODEL = Digest.of(b"a gguf model")
MESSAGES = [{"role": "user", "content": "Say hi"}]
PROMPT = [1, 9038, 2114, 28, 2]
TOKENS = [19556, 17, 2]
CONTENT = "Hi!"
NETWORK = ("evidence", "bonds", "provenance", "epoch", "window")
"""The network checks every answer passes before its verdict (veriml.verify.network)."""
ALL_CHECKS = (*COMPLETION_CHECKS[:-1], *NETWORK, COMPLETION_CHECKS[-1])
RELAY_CHECKS = tuple(c for c in ALL_CHECKS if c != "provenance")
"""A relayed answer ran no model of the hub: it has no provenance to check."""


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with logged_network(tmp_path_factory.mktemp("llmnet"), 3, port=9100) as net:
        # The model asked for by name: "smollm2", published by the owner of its namespace.
        net.publish(MODEL, "smollm2", signature=Digest.of(b"smollm2 model.sig"))
        yield net


def _request(**params: Any) -> dict[str, Any]:
    return {"model": "smollm2", "messages": MESSAGES, "max_tokens": 8, **params}


def _answer(
    net: Network,
    policy: str = "none",
    *,
    request: dict[str, Any] | None = None,
    content: str = CONTENT,
    trust: str = "reexecutable",
    odd_node: int | None = None,
    report: dict[str, Any] | None = None,
    checked_payload: bytes | None = None,
    commit_spot: bool = True,
    reveal_other_secret: bool = False,
    seed: int | None = None,
) -> dict[str, Any]:
    """What the coordinator answers: receipts of N nodes, the verdict (revealing the request's
    draw), one logged entry citing the state it was scheduled under, and the evidence.

    A request sent without a seed samples with the one its draw secret gives; ``seed`` makes
    the coordinator pick another (a lie the ``draw`` check catches)."""
    parsed = Policy.parse(policy)
    request = request if request is not None else _request()
    request_id = str(uuid.uuid4())
    draw = net.draw(request_id)
    relay = trust == "attested-relay"
    bound = relay_digest("m") if relay else MODEL  # a relayed model's stand-in digest
    drawn = sampling_seed(draw.secret) if seed is None else seed
    canonical = canonical_request("chat.completion", bound, request, seed=drawn)
    receipts, answers = [], []
    extra_predicate: dict[str, Any] = {}
    if parsed.kind == "spot" and commit_spot:
        extra_predicate = {"spot": {"commitment": spot_commitment(draw.secret).to_text()}}
    for i, (key, operator, _) in enumerate(net.nodes[: parsed.nodes]):
        text = content + "?" if i == odd_node else content
        output = completion_output_digest(
            content=text, tool_calls=[], tokens=TOKENS, finish_reason="stop"
        )
        predicate = CompletionPredicate(
            request_id=request_id,
            request_digest=canonical_digest(canonical),
            model_digest=None if relay else MODEL,
            model_files=None if relay else Digest.of(b"files"),
            prompt_count=len(PROMPT),
            prompt_digest=token_digest(PROMPT),
            completion_count=len(TOKENS),
            finish_reason="stop",
            sampling=sampling_of(canonical),
            runtime={"engine": "relay" if relay else "llama.cpp"},
            node_id=key.key_id,
            policy=policy,
            trust=trust,  # type: ignore[arg-type]
            started=utc_now(),
            finished=utc_now(),
            upstream={"upstream": "http://up.example/v1", "name": "m"} if relay else None,
            extra=extra_predicate,
        )
        receipts.append(sign_completion(output, predicate, key))
        answers.append((key.key_id, operator, {"completion": output}))
    if parsed.kind == "prefill":
        # The generating node (0) and a checking node of another operator (1).
        key, operator, _ = net.nodes[1]
        report = report or {"accepted": True, "checked": len(TOKENS), "first_failure": None}
        check = PrefillCheck(
            receipt=Digest.of(checked_payload or receipts[0].payload),
            report=report,
            model=MODEL,
            runtime={"engine": "llama.cpp"},
            node_id=key.key_id,
            request_id=request_id,
            started=utc_now(),
            finished=utc_now(),
        )
        receipts.append(sign_prefill_check(check, key))
        agreed = answers[0][2] if report["accepted"] else {"completion": Digest.of(b"")}
        answers.append((key.key_id, operator, agreed))
    spot = None
    if parsed.kind == "spot":
        spot = SpotReveal(spot_checked(parsed, draw.secret))
    verdict = decide(parsed, answers, spot=spot, final_after=net.final_after(), draw=draw)
    if reveal_other_secret:
        verdict = dataclasses.replace(verdict, draw=Draw(draw.epoch, secrets.token_bytes(32)))
    extra = {"kind": "completion"}
    entry = InferenceEntry(
        request_id=request_id,
        request_digest=canonical_digest(canonical),
        model=bound,
        policy=policy,
        receipts=tuple(receipts),
        verdict=verdict,
        extra=extra,
        state=net.state,
    )
    index = net.log.add(entry.to_bytes())
    note, size = net.checkpoint()
    operators = [operator for _, operator, _ in answers]
    evidence = net.evidence(operators, size, provenance=not relay).to_json()
    nodes = []
    for key, _, reg in net.nodes[: len(receipts)]:
        nodes.append(
            {
                "id": key.key_id,
                "log_index": reg,
                "entry": base64.b64encode(net.log.entries(reg, reg + 1)[0]).decode(),
                "inclusion_proof": [
                    base64.b64encode(h).decode() for h in net.log.inclusion_proof(reg, size)
                ],
            }
        )
    return {
        "id": "chatcmpl-" + request_id,
        "object": "chat.completion",
        "model": "smollm2",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": len(PROMPT), "completion_tokens": len(TOKENS)},
        "veriml": {
            "id": request_id,
            "model": bound.to_text(),
            "policy": policy,
            "request": extra,
            "receipts": [r.to_json() for r in receipts],
            "nodes": nodes,
            "prompt_tokens": PROMPT,
            "completion_tokens": TOKENS,
            "verdict": verdict.to_json(),
            "log": {
                "index": index,
                "checkpoint": note.decode(),
                "proof": [
                    base64.b64encode(h).decode() for h in net.log.inclusion_proof(index, size)
                ],
            },
            **evidence,
        },
    }


def _verify(net: Network, body: dict[str, Any], **kwargs: Any) -> Any:
    kwargs.setdefault("request", _request())
    kwargs.setdefault("model", MODEL)
    return verify_completion(body, log_vkey=net.vkey, **kwargs)


@pytest.mark.parametrize(
    ("policy", "nodes"), [("none", 1), ("quorum:3/2", 3), ("quorum:3/3", 3), ("prefill", 2)]
)
def test_an_honest_completion_passes_every_check(network: Network, policy: str, nodes: int) -> None:
    verified = _verify(network, _answer(network, policy))
    assert verified.checks == ALL_CHECKS
    assert verified.trust == "reexecutable"
    assert verified.model == MODEL
    assert verified.notes == ()
    assert len(verified.nodes) == nodes
    assert len(verified.evidence.verdict.agreeing) == min(nodes, 2 if policy == "prefill" else 3)


def test_a_prefill_check_that_rejects_a_token_never_verifies(network: Network) -> None:
    report = {"accepted": False, "checked": 2, "first_failure": 1, "reason": "token 1"}
    with pytest.raises(VerificationError) as caught:
        _verify(network, _answer(network, "prefill", report=report))
    # The rejected verdict agrees on no output: the answer fails as the policy's failure.
    assert caught.value.check == "verdict"


def test_a_prefill_check_that_skipped_tokens_never_verifies(network: Network) -> None:
    report = {"accepted": True, "checked": len(TOKENS) - 1, "first_failure": None}
    with pytest.raises(VerificationError) as caught:
        _verify(network, _answer(network, "prefill", report=report))
    assert caught.value.check == "verdict"


def test_a_prefill_check_of_another_receipt_never_verifies(network: Network) -> None:
    body = _answer(network, "prefill", checked_payload=b"another completion receipt")
    with pytest.raises(VerificationError) as caught:
        _verify(network, body)
    assert caught.value.check == "verdict"


def test_the_result_carries_the_message_usage_and_trust(network: Network) -> None:
    body = _answer(network)
    result = ChatResult.of("chat.completion", body, _verify(network, body))
    assert result.content == CONTENT
    assert result.message == {"role": "assistant", "content": CONTENT}
    assert result.finish_reason == "stop"
    assert result.usage["completion_tokens"] == len(TOKENS)
    assert result.verified == ALL_CHECKS
    assert result.trust == "reexecutable"
    assert result.to_json()["verdict"] == "accepted"


def test_a_quorum_with_one_odd_node_accepts_the_majority(network: Network) -> None:
    verified = _verify(network, _answer(network, "quorum:3/2", odd_node=2))
    assert len(verified.evidence.verdict.agreeing) == 2


def test_changed_content_fails_the_output_digest(network: Network) -> None:
    body = _answer(network)
    body["choices"][0]["message"]["content"] = "Hello!"
    with pytest.raises(VerificationError) as caught:
        _verify(network, body)
    assert caught.value.check == "output-digest"


def test_a_changed_finish_reason_fails_the_output_digest(network: Network) -> None:
    body = _answer(network)
    body["choices"][0]["finish_reason"] = "length"
    with pytest.raises(VerificationError) as caught:
        _verify(network, body)
    assert caught.value.check == "output-digest"


def test_a_swapped_completion_token_fails_the_output_digest(network: Network) -> None:
    body = _answer(network)
    body["veriml"]["completion_tokens"] = [TOKENS[0], TOKENS[1] + 1, TOKENS[2]]
    with pytest.raises(VerificationError) as caught:
        _verify(network, body)
    assert caught.value.check == "output-digest"


def test_a_changed_prompt_token_fails_the_prompt_check(network: Network) -> None:
    body = _answer(network)
    body["veriml"]["prompt_tokens"] = [*PROMPT[:-1], 3]
    with pytest.raises(VerificationError) as caught:
        _verify(network, body)
    assert caught.value.check == "prompt-tokens"


@pytest.mark.parametrize(
    "sent",
    [
        _request(messages=[{"role": "user", "content": "Say bye"}]),
        _request(temperature=0.7),
        _request(max_tokens=9),
        _request(seed=99),
        _request(stop=["!"]),
    ],
    ids=["messages", "temperature", "max_tokens", "seed", "stop"],
)
def test_an_answer_to_another_request_fails_the_request_digest(
    network: Network, sent: dict[str, Any]
) -> None:
    with pytest.raises(VerificationError) as caught:
        _verify(network, _answer(network), request=sent)
    assert caught.value.check == "request-digest"


def test_a_request_sent_without_a_seed_samples_with_the_one_its_draw_gives(
    network: Network,
) -> None:
    assert "seed" not in _request()
    verified = _verify(network, _answer(network))
    draw = verified.evidence.verdict.draw
    assert draw is not None
    assert verified.predicates[0].sampling.seed == sampling_seed(draw.secret)


def test_a_seed_the_coordinator_picked_fails_the_draw_check(network: Network) -> None:
    # The request had no seed; the coordinator chose 1234 and the nodes signed it honestly:
    # the request digest holds, but the seed is not the one the request's draw gives.
    with pytest.raises(VerificationError) as caught:
        _verify(network, _answer(network, seed=1234))
    assert caught.value.check == "draw"


def test_a_seed_the_client_sent_needs_no_draw(network: Network) -> None:
    sent = _request(seed=99)
    verified = _verify(network, _answer(network, request=sent, seed=99), request=sent)
    assert verified.predicates[0].sampling.seed == 99


def test_an_answer_for_another_model_fails_the_model_digest(network: Network) -> None:
    with pytest.raises(VerificationError) as caught:
        _verify(network, _answer(network), model=Digest.of(b"a smaller model"))
    assert caught.value.check == "model-digest"


def test_a_verdict_claiming_more_agreement_fails(network: Network) -> None:
    body = _answer(network, "quorum:3/2", odd_node=2)
    body["veriml"]["verdict"]["agreeing"] = [k.key_id for k, _, _ in network.nodes]
    with pytest.raises(VerificationError) as caught:
        _verify(network, body)
    # The odd node's receipt signs another output than the one it is claimed to agree with.
    assert caught.value.check == "output-digest"


def test_a_verdict_other_than_the_logged_one_fails_inclusion(network: Network) -> None:
    body = _answer(network, "quorum:3/2", odd_node=2)
    body["veriml"]["verdict"]["agreeing"] = body["veriml"]["verdict"]["agreeing"][:1]
    with pytest.raises(VerificationError) as caught:
        _verify(network, body)
    # The logged entry holds the honest verdict: the claimed one is not in the log.
    assert caught.value.check == "inclusion"


def test_a_rejected_verdict_never_verifies(network: Network) -> None:
    body = _answer(network, "quorum:3/3", odd_node=2)
    with pytest.raises(VerificationError) as caught:
        _verify(network, body)
    assert caught.value.check == "verdict"


def test_a_receipt_by_an_unregistered_key_fails_the_signature(network: Network) -> None:
    body = _answer(network)
    stranger = _answer(
        dataclasses.replace(network, nodes=[(generate_key(), "op-x", network.nodes[0][2])])
    )
    body["veriml"]["receipts"] = stranger["veriml"]["receipts"]
    with pytest.raises(VerificationError) as caught:
        _verify(network, body)
    assert caught.value.check == "signature"


def test_a_checkpoint_from_another_log_fails(network: Network) -> None:
    other = NoteSigner("test.veriml.local/llm", generate_key())
    with pytest.raises(VerificationError) as caught:
        verify_completion(_answer(network), log_vkey=other.vkey, request=_request(), model=MODEL)
    assert caught.value.check == "checkpoint"


def test_an_answer_without_its_veriml_member_cannot_verify(network: Network) -> None:
    body = _answer(network)
    del body["veriml"]
    with pytest.raises(FormatError):
        _verify(network, body)


def test_without_the_request_the_digest_is_taken_as_signed_and_noted(network: Network) -> None:
    verified = verify_completion(_answer(network), log_vkey=network.vkey)
    assert verified.checks == ALL_CHECKS
    assert any("request digest was taken as signed" in n for n in verified.notes)


RELAYED = {"model": "relay:m", "messages": MESSAGES, "max_tokens": 8}


def test_a_relayed_answer_is_reported_as_attested_relay_never_reexecutable(
    network: Network,
) -> None:
    body = _answer(network, trust="attested-relay", request=RELAYED)
    verified = _verify(network, body, request=RELAYED, model=None)
    assert verified.trust == "attested-relay"
    assert verified.model is None
    assert verified.checks == RELAY_CHECKS
    assert [n.split(":")[0] for n in verified.notes] == ["attested-relay"]
    assert "relayed" in verified.summary()
    assert ChatResult.of("chat.completion", body, verified).trust == "attested-relay"


def test_a_relayed_answer_to_another_request_fails_the_request_digest(network: Network) -> None:
    body = _answer(network, trust="attested-relay", request=RELAYED)
    with pytest.raises(VerificationError) as caught:
        _verify(network, body, request={**RELAYED, "max_tokens": 9}, model=None)
    assert caught.value.check == "request-digest"


def test_a_relay_of_another_upstream_model_fails_the_model_check(network: Network) -> None:
    body = _answer(network, trust="attested-relay", request=RELAYED)
    with pytest.raises(VerificationError) as caught:
        _verify(network, body, request={**RELAYED, "model": "relay:other"}, model=None)
    assert caught.value.check == "model-digest"


def test_a_relayed_answer_for_a_hub_model_request_fails_the_model_check(
    network: Network,
) -> None:
    # Asking for a hub model and getting a relay's signature is not what was asked for.
    body = _answer(network, trust="attested-relay", request=RELAYED)
    with pytest.raises(VerificationError) as caught:
        _verify(network, copy.deepcopy(body), request=RELAYED, model=MODEL)
    assert caught.value.check == "model-digest"


def _sse(
    body: dict[str, Any], *, veriml: bool = True, done: bool = True, wrapped: bool = False
) -> list[str]:
    lines = []
    for piece in ["H", "i", "!"]:
        chunk = {"id": body["id"], "choices": [{"index": 0, "delta": {"content": piece}}]}
        lines += [f"data: {json.dumps(chunk)}", ""]
    final = {"id": body["id"], "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    lines += [f"data: {json.dumps(final)}", ""]
    if veriml:
        event = {"choices": [], "veriml": body["veriml"]} if wrapped else body["veriml"]
        lines += ["event: veriml", f"data: {json.dumps(event)}", ""]
    if done:
        lines += ["data: [DONE]", ""]
    return lines


def _assemble(lines: list[str]) -> tuple[str, StreamAssembler]:
    assembler = StreamAssembler("chat.completion")
    shown = "".join(assembler.feed(event, data) for event, data in parse_sse(lines))
    return shown, assembler


@pytest.mark.parametrize("wrapped", [False, True], ids=["object", "chunk"])
def test_a_stream_rebuilt_from_its_chunks_verifies(network: Network, wrapped: bool) -> None:
    body = _answer(network)
    shown, assembler = _assemble(_sse(body, wrapped=wrapped))
    assert shown == CONTENT
    assert _verify(network, assembler.body()).checks == ALL_CHECKS


@pytest.mark.parametrize(("veriml", "done"), [(False, True), (True, False)])
def test_a_stream_without_its_veriml_event_or_end_fails_closed(
    network: Network, veriml: bool, done: bool
) -> None:
    _, assembler = _assemble(_sse(_answer(network), veriml=veriml, done=done))
    with pytest.raises(VerificationError) as caught:
        assembler.body()
    assert caught.value.check == "stream"


def test_a_chunk_after_the_veriml_event_is_refused(network: Network) -> None:
    lines = _sse(_answer(network), done=False)
    lines += ['data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}', ""]
    with pytest.raises(FormatError):
        _assemble(lines)


def _unchecked_spot(net: Network, **kwargs: Any) -> dict[str, Any]:
    """A ``spot:0.0001`` answer whose draw came out unchecked (one node answers)."""
    while True:
        body = _answer(net, "spot:0.0001", **kwargs)
        if not body["veriml"]["verdict"]["spot"]["checked"]:
            return body


def test_a_spot_answer_verifies_its_reveal_against_the_receipts_commitment(
    network: Network,
) -> None:
    verified = _verify(network, _unchecked_spot(network))
    assert verified.checks == (*ALL_CHECKS[:-1], "spot", ALL_CHECKS[-1])
    assert verified.notes == ()


def test_a_spot_reveal_of_another_secret_fails_the_spot_check(network: Network) -> None:
    # The client chose its seed, so no seed hangs on the draw: the spot check catches it.
    sent = _request(seed=7)
    body = _unchecked_spot(network, request=sent, seed=7, reveal_other_secret=True)
    with pytest.raises(VerificationError) as caught:
        _verify(network, body, request=sent)
    assert caught.value.check == "spot"


def test_a_reveal_of_another_secret_is_caught_by_the_seed_it_drew(network: Network) -> None:
    # Without a seed sent, the nodes sampled with the one the true secret gives: another
    # secret revealed (to dodge a drawn check) contradicts the signed seed first.
    with pytest.raises(VerificationError) as caught:
        _verify(network, _unchecked_spot(network, reveal_other_secret=True))
    assert caught.value.check == "draw"


def test_a_spot_receipt_without_a_commitment_fails_closed(network: Network) -> None:
    """Without the commitment signed in the receipt, the revealed secret could have been
    chosen after the answer was seen: the draw cannot be trusted, so verification fails."""
    with pytest.raises(VerificationError) as caught:
        _verify(network, _unchecked_spot(network, commit_spot=False))
    assert caught.value.check == "spot"
