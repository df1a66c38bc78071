"""The coordinator's checks of a node's answer to an LLM job (pure): a receipt counts only if
it is signed by the registered key, answers this very request, and its digests are what the
returned tokens and content hash to. Each test applies one mutation a dishonest node could."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from veriml.coordinator.llm.checks import CompletionJob, check_answer, check_prefill
from veriml.coordinator.nodes.scheduler import Candidate
from veriml.core.canonical import canonical_digest
from veriml.core.completion import (
    CompletionPredicate,
    completion_output_digest,
    sampling_of,
    sign_completion,
    token_digest,
)
from veriml.core.digest import Digest
from veriml.core.errors import DigestMismatchError, SignatureError, VerificationError
from veriml.core.keys import SigningKey, generate_key
from veriml.protocol.openai_requests import canonical_request
from veriml.protocol.prefill_check import PrefillCheck, sign_prefill_check

MODEL = Digest.of(b"model")
CANONICAL = canonical_request(
    "chat.completion",
    MODEL,
    {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0.7},
    seed=42,
)
JOB = CompletionJob(
    request_id="req-1",
    kind="chat.completion",
    model=MODEL,
    canonical=CANONICAL,
    digest=canonical_digest(CANONICAL),
    policy="none",
)
PROMPT, TOKENS, CONTENT = [5, 6, 7], [10, 11, 12], "a b c"


def _node(key: SigningKey) -> Candidate:
    return Candidate(
        node_id=key.key_id,
        operator="op",
        endpoint="http://127.0.0.1:1",
        public_key=key.public.to_pem().decode(),
        log_index=1,
        last_seen=time.time(),
    )


def _predicate(key: SigningKey, **changes: Any) -> CompletionPredicate:
    predicate = CompletionPredicate(
        request_id=JOB.request_id,
        request_digest=JOB.digest,
        model_digest=MODEL,
        model_files=None,
        prompt_count=len(PROMPT),
        prompt_digest=token_digest(PROMPT),
        completion_count=len(TOKENS),
        finish_reason="length",
        sampling=sampling_of(CANONICAL),
        runtime={},
        node_id=key.key_id,
        policy="none",
        trust="reexecutable",
        started="2026-01-01T00:00:00Z",
        finished="2026-01-01T00:00:01Z",
    )
    return dataclasses.replace(predicate, **changes)


def _result(key: SigningKey, signer: SigningKey | None = None, **changes: Any) -> dict[str, Any]:
    output = completion_output_digest(
        content=CONTENT, tool_calls=[], tokens=TOKENS, finish_reason="length"
    )
    receipt = sign_completion(output, _predicate(key, **changes), signer or key)
    return {
        "receipt": receipt.to_json(),
        "content": CONTENT,
        "tool_calls": [],
        "finish_reason": "length",
        "prompt_tokens": PROMPT,
        "completion_tokens": TOKENS,
    }


def test_an_honest_answer_verifies_with_its_tokens_and_content() -> None:
    key = generate_key("ed25519")
    answer = check_answer(_result(key), _node(key), key.public, JOB)
    assert (answer.content, answer.completion_tokens, answer.prompt_count) == (
        CONTENT,
        tuple(TOKENS),
        3,
    )


def test_a_receipt_signed_by_another_key_is_refused() -> None:
    key = generate_key("ed25519")
    with pytest.raises(SignatureError):
        check_answer(_result(key, signer=generate_key("ed25519")), _node(key), key.public, JOB)


@pytest.mark.parametrize(
    ("changes", "what"),
    [
        ({"request_id": "req-2"}, "request id"),
        ({"request_digest": Digest.of(b"other request")}, "request digest"),
        ({"model_digest": Digest.of(b"a smaller model")}, "model"),
        ({"policy": "quorum:2/2"}, "policy"),
        ({"sampling": dataclasses.replace(sampling_of(CANONICAL), seed=43)}, "sampling"),
    ],
)
def test_a_receipt_for_anything_but_this_request_is_refused(
    changes: dict[str, Any], what: str
) -> None:
    key = generate_key("ed25519")
    with pytest.raises(VerificationError, match=what) as caught:
        check_answer(_result(key, **changes), _node(key), key.public, JOB)
    assert caught.value.check == "request-binding"


@pytest.mark.parametrize(
    ("member", "value", "check"),
    [
        ("content", "a b d", "output"),
        ("completion_tokens", [10, 11, 13], "output"),
        ("prompt_tokens", [5, 6, 8], "prompt"),
    ],
)
def test_returned_tokens_or_content_that_differ_from_the_signed_digests_are_refused(
    member: str, value: Any, check: str
) -> None:
    key = generate_key("ed25519")
    result = _result(key) | {member: value}
    with pytest.raises(DigestMismatchError) as caught:
        check_answer(result, _node(key), key.public, JOB)
    assert caught.value.check == check


def test_a_prefill_report_vouches_only_for_the_receipt_it_names() -> None:
    generator, checker = generate_key("ed25519"), generate_key("ed25519")
    answer = check_answer(_result(generator), _node(generator), generator.public, JOB)

    def report(receipt: Digest, accepted: bool = True) -> dict[str, Any]:
        check = PrefillCheck(
            receipt=receipt,
            report={"accepted": accepted, "checked": 3, "first_failure": None, "reason": None},
            model=MODEL,
            runtime={},
            node_id=checker.key_id,
            request_id=JOB.request_id,
            started="2026-01-01T00:00:00Z",
            finished="2026-01-01T00:00:01Z",
        )
        return {"receipt": sign_prefill_check(check, checker).to_json()}

    good = check_prefill(
        report(Digest.of(answer.receipt.payload)), _node(checker), checker.public, JOB, answer
    )
    assert good.vouched == {"completion": answer.output}
    refused = check_prefill(
        report(Digest.of(answer.receipt.payload), accepted=False),
        _node(checker),
        checker.public,
        JOB,
        answer,
    )
    assert refused.vouched != {"completion": answer.output}
    with pytest.raises(VerificationError, match="checked receipt"):
        check_prefill(
            report(Digest.of(b"another receipt")), _node(checker), checker.public, JOB, answer
        )


def test_a_relays_signature_answers_only_a_relayed_model_and_only_its_upstream() -> None:
    key = generate_key("ed25519")
    relayed = {
        "model_digest": None,
        "trust": "attested-relay",
        "upstream": {"upstream": "https://api.example/v1", "name": "gpt-x"},
    }
    job = dataclasses.replace(JOB, relay="gpt-x")
    answer = check_answer(_result(key, **relayed), _node(key), key.public, job)
    assert answer.predicate.trust == "attested-relay"
    with pytest.raises(VerificationError, match="its model differs"):
        check_answer(_result(key, **relayed), _node(key), key.public, JOB)  # a hub model
    other = dataclasses.replace(job, relay="gpt-y")
    with pytest.raises(VerificationError, match="upstream model"):
        check_answer(_result(key, **relayed), _node(key), key.public, other)
