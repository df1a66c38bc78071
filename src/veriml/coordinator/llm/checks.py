"""Pure checks of what nodes answer to LLM jobs (no I/O): the coordinator's step 5 of
:mod:`veriml.coordinator.llm.service`, and the stored form of an answer.

- :func:`check_answer`: a completion or embedding answer, verified against its receipt under
  the node's registered key, bound to the request, its digests recomputed;
- :func:`check_prefill`: a prefill node's signed report on another node's receipt, and what
  it vouches for in the verdict;
- :func:`parse_policy`: the policies LLM requests run under;
- :func:`output_json` / :func:`answer_from_stored`: what a stored answer keeps so a retried
  ``Idempotency-Key`` gets the same OpenAI body back.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from veriml.coordinator.nodes.scheduler import Candidate
from veriml.core.completion import (
    CompletionPredicate,
    RequestKind,
    completion_output_digest,
    embedding_output_digest,
    open_completion,
    prompt_digest,
    sampling_of,
    token_digest,
)
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement
from veriml.core.errors import (
    Check,
    DigestMismatchError,
    Error,
    FormatError,
    InvalidTensorError,
    VerificationError,
)
from veriml.core.keys import SigningKey, VerifyingKey
from veriml.core.tensors import tensor_from_json, tensor_to_json
from veriml.protocol.jobs import Job
from veriml.protocol.messages import format_time
from veriml.protocol.prefill_check import open_prefill_check
from veriml.verify.policy import Policy

__all__ = [
    "OUTPUT",
    "CompletionAnswer",
    "CompletionJob",
    "NodeAnswer",
    "PrefillVouch",
    "answer_from_stored",
    "check_answer",
    "check_prefill",
    "embedding_vectors",
    "output_json",
    "parse_policy",
]

OUTPUT: Final = "completion"
"""The one output name of a completion receipt (its in-toto subject), as the verdict maps it."""

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionJob:
    """What every job of one request shares; each node gets its own signed job for it."""

    request_id: str
    kind: RequestKind
    model: Digest
    canonical: Mapping[str, Any]
    digest: Digest
    policy: str
    spot: Digest | None = None
    relay: str | None = None
    """A relayed model (``relay:NAME``): the upstream model name relay nodes must sign; ``model``
    is then the stand-in digest ``SHA-256("relay:NAME")`` the request and entry are bound to."""

    @property
    def job_kind(self) -> str:
        """The job kind nodes run it as (``completion`` or ``embedding``)."""
        return "embedding" if self.kind == "embedding" else "completion"

    def sign_for(
        self, node_id: str, key: SigningKey, *, timeout: float, kind: str | None = None
    ) -> Envelope:
        """A fresh job (new ``job_id``) for ``node_id``, valid for ``timeout`` seconds;
        ``kind`` ``prefill`` asks the node to check a completion of this request instead."""
        issued = dt.datetime.now(dt.UTC)
        job = Job(
            job_id=str(uuid.uuid4()),
            node_id=node_id,
            request_id=self.request_id,
            model=self.model,
            inputs={},
            policy=self.policy,
            issued_at=format_time(issued),
            expires_at=format_time(issued + dt.timedelta(seconds=timeout)),
            spot=self.spot,
            kind=kind or self.job_kind,
            request=self.canonical,
            request_digest=self.digest,
        )
        return job.sign(key)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeAnswer:
    """One node's verified answer: its receipt and what the receipt's digests were
    recomputed from (token ids, content, embeddings)."""

    receipt: Envelope
    predicate: CompletionPredicate
    output: Digest
    prompt_tokens: tuple[Any, ...]
    """Completions: the prompt's token ids; embeddings: one id list per input."""
    completion_tokens: tuple[int, ...] = ()
    content: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    finish_reason: str = "stop"
    embeddings: tuple[Array, ...] = ()

    @property
    def prompt_count(self) -> int:
        return self.predicate.prompt_count

    @property
    def completion_count(self) -> int:
        return len(self.completion_tokens)


@dataclass(frozen=True, slots=True)
class CompletionAnswer:
    """The answer: the answer the verdict chose, and the ``veriml`` member (with ``log``)."""

    answer: NodeAnswer
    veriml: Mapping[str, Any]


def parse_policy(text: str, *, kind: RequestKind, relay: bool = False) -> Policy:
    """A policy the completion service runs: ``none``, ``quorum:N/K``, ``spot:P`` or
    ``prefill``, bitwise.

    Tolerance mode and ``optimistic:W`` need tensors and traces of ONNX models; token ids are
    compared exactly. ``prefill`` checks generated tokens, so embeddings and relayed answers
    (which carry no token ids) cannot have it."""
    try:
        policy = Policy.parse(text)
    except FormatError as exc:
        raise FormatError(exc.message, param="veriml.policy", **exc.evidence) from exc
    if policy.compare != "bitwise" or policy.kind == "optimistic":
        raise FormatError(
            "LLM requests run under none, quorum:N/K, spot:P or prefill (token ids compare "
            "exactly)",
            param="veriml.policy",
            got=text[:64],
        )
    if policy.kind == "prefill" and (relay or kind == "embedding"):
        raise FormatError(
            "prefill checks generated tokens: embeddings and relayed models have none",
            param="veriml.policy",
            got=text[:64],
        )
    return policy


def _int_list(value: object, what: str, node: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise VerificationError(f"node answer's {what} is not a list of token ids", node=node)
    return tuple(value)


def _bind(what: str, signed: object, expected: object, node: str) -> None:
    if signed != expected:
        raise VerificationError(
            f"receipt does not answer this request: its {what} differs",
            check=Check.REQUEST_BINDING,
            node=node,
            signed=str(signed)[:200],
            expected=str(expected)[:200],
        )


def check_answer(
    result: Mapping[str, Any],
    node: Candidate,
    key: VerifyingKey,
    job: CompletionJob,
    *,
    max_tensor_bytes: int = 64 << 20,
) -> NodeAnswer:
    """Verify one node's answer to ``job`` (pure; raises :class:`VerificationError`).

    1. the receipt opens under the node's registered ``key`` (:func:`open_completion`);
    2. it answers this request: node, request id and digest, model, policy, re-executable
       trust and, for completions, the request's sampling;
    3. the prompt tokens hash to the signed prompt digest and count;
    4. the output digest recomputed from the returned content, tool calls, tokens and finish
       reason (embeddings: the vectors) is the signed one.
    """
    name = node.node_id
    try:
        receipt = Envelope.from_json(result["receipt"])
    except (KeyError, TypeError, Error) as exc:
        raise VerificationError("node answer has no readable receipt", node=name) from exc
    # 1. Signature and statement.
    predicate, output = open_completion(receipt, key)
    # 2. The request it answers.
    _bind("node", predicate.node_id, name, name)
    _bind("request id", predicate.request_id, job.request_id, name)
    _bind("request digest", predicate.request_digest, job.digest, name)
    _bind("policy", predicate.policy, job.policy, name)
    _bind("spot commitment", predicate.spot, job.spot, name)
    if job.relay is None:
        _bind("model", predicate.model_digest, job.model, name)
        _bind("trust", predicate.trust, "reexecutable", name)
    else:
        # A relay signs the upstream it forwarded to, and no digest: a signature only.
        _bind("trust", predicate.trust, "attested-relay", name)
        _bind("upstream model", (predicate.upstream or {}).get("name"), job.relay, name)
    if job.kind == "embedding":
        inputs = len(job.canonical.get("input", ()))
        return _check_embedding(result, predicate, output, name, max_tensor_bytes, inputs)
    _bind("sampling", predicate.sampling, sampling_of(job.canonical), name)
    # 3. The prompt.
    prompt = _int_list(result.get("prompt_tokens"), "prompt_tokens", name)
    _check_prompt(predicate, token_digest(prompt), len(prompt), name)
    # 4. The output, recomputed.
    tokens = _int_list(result.get("completion_tokens"), "completion_tokens", name)
    content, calls, finish = (
        result.get("content"),
        result.get("tool_calls", []),
        result.get("finish_reason"),
    )
    if content is not None and not isinstance(content, str):
        raise VerificationError("node answer's content is not a string", node=name)
    if not isinstance(calls, list) or not all(isinstance(c, Mapping) for c in calls):
        raise VerificationError("node answer's tool_calls is not a list of objects", node=name)
    if not isinstance(finish, str):
        raise VerificationError("node answer has no finish_reason", node=name)
    _bind("finish reason", predicate.finish_reason, finish, name)
    _bind("completion count", predicate.completion_count, len(tokens), name)
    calculated = completion_output_digest(
        content=content, tool_calls=calls, tokens=tokens, finish_reason=finish
    )
    if calculated != output:
        raise DigestMismatchError(
            "the node's tokens and content are not what its receipt signed",
            check=Check.OUTPUT,
            expected=output,
            calculated=calculated,
        )
    return NodeAnswer(
        receipt=receipt,
        predicate=predicate,
        output=output,
        prompt_tokens=prompt,
        completion_tokens=tokens,
        content=content,
        tool_calls=tuple(dict(c) for c in calls),
        finish_reason=finish,
    )


def _check_prompt(predicate: CompletionPredicate, digest: Digest, count: int, node: str) -> None:
    if digest != predicate.prompt_digest or count != predicate.prompt_count:
        raise DigestMismatchError(
            "the node's prompt tokens are not the ones its receipt signed",
            check=Check.PROMPT,
            expected=f"{predicate.prompt_digest.to_text()} ({predicate.prompt_count})",
            calculated=f"{digest.to_text()} ({count})",
        )


def _check_embedding(
    result: Mapping[str, Any],
    predicate: CompletionPredicate,
    output: Digest,
    name: str,
    max_tensor_bytes: int,
    inputs: int,
) -> NodeAnswer:
    raw_prompts = result.get("prompt_tokens")
    if not isinstance(raw_prompts, list):
        raise VerificationError("node answer's prompt_tokens is not a list", node=name)
    prompts = tuple(_int_list(p, "prompt_tokens", name) for p in raw_prompts)
    relayed = predicate.trust == "attested-relay"
    if len(prompts) != (0 if relayed else inputs):  # a relay sees text, not token ids
        raise VerificationError(
            "node answer has not one prompt token list per input", node=name, inputs=inputs
        )
    _check_prompt(predicate, prompt_digest(prompts), sum(len(p) for p in prompts), name)
    raw = result.get("embeddings")
    if not isinstance(raw, list) or len(raw) != inputs:
        raise VerificationError(
            "node answer has not one embedding per input", node=name, inputs=inputs
        )
    try:
        vectors = tuple(tensor_from_json(v, max_bytes=max_tensor_bytes) for v in raw)
    except InvalidTensorError as exc:
        raise VerificationError("node answer's embeddings do not decode", node=name) from exc
    calculated = embedding_output_digest(vectors)
    if calculated != output:
        raise DigestMismatchError(
            "the node's embeddings are not what its receipt signed",
            check=Check.OUTPUT,
            expected=output,
            calculated=calculated,
        )
    return NodeAnswer(
        receipt=Envelope.from_json(result["receipt"]),
        predicate=predicate,
        output=output,
        prompt_tokens=prompts,
        embeddings=vectors,
    )


@dataclass(frozen=True, slots=True)
class PrefillVouch:
    """A verified prefill check: the checking node, its signed statement, and the output map
    it vouches for (what :func:`veriml.verify.policy.decide` compares)."""

    node: Candidate
    receipt: Envelope
    vouched: dict[str, Digest]
    first_failure: int | None = None
    """The first generated token the check rejected (None when it accepted them all)."""


def check_prefill(
    result: Mapping[str, Any],
    node: Candidate,
    key: VerifyingKey,
    job: CompletionJob,
    answer: NodeAnswer,
) -> PrefillVouch:
    """Verify a prefill node's signed report on ``answer`` (pure; ``VerificationError``).

    The statement opens under the checking node's registered key and is about exactly the
    primary receipt (the SHA-256 of its payload), this model and this request. What it vouches
    for, as the verdict compares it: the primary's output digest when the report accepts every
    generated token, else the digest of the report itself (which no output equals).
    """
    name = node.node_id
    try:
        receipt = Envelope.from_json(result["receipt"])
    except (KeyError, TypeError, Error) as exc:
        raise VerificationError("prefill answer has no readable receipt", node=name) from exc
    check = open_prefill_check(receipt, key)
    _bind("node", check.node_id, name, name)
    _bind("checked receipt", check.receipt, Digest.of(answer.receipt.payload), name)
    _bind("model", check.model, job.model, name)
    _bind("request id", check.request_id, job.request_id, name)
    complete = check.report.get("checked") == answer.completion_count
    vouched = answer.output if check.accepted and complete else Digest.of(receipt.payload)
    failure = check.report.get("first_failure")
    step = failure if isinstance(failure, int) and not isinstance(failure, bool) else None
    return PrefillVouch(node, receipt, {OUTPUT: vouched}, step)


def output_json(answer: NodeAnswer) -> dict[str, Any]:
    if answer.embeddings:
        return {"embeddings": [tensor_to_json(v) for v in answer.embeddings]}
    return {
        "content": answer.content,
        "tool_calls": [dict(c) for c in answer.tool_calls],
        "finish_reason": answer.finish_reason,
        "receipt": answer.receipt.to_json(),
    }


def answer_from_stored(veriml: Mapping[str, Any]) -> CompletionAnswer:
    """A stored answer (verified before it was logged) as the service returns answers."""
    output = veriml["output"]
    receipt = Envelope.from_json(output.get("receipt", veriml["receipts"][0]))
    statement = Statement.from_bytes(receipt.payload)
    embeddings = tuple(tensor_from_json(v) for v in output.get("embeddings", []))
    prompt = veriml["prompt_tokens"]
    answer = NodeAnswer(
        receipt=receipt,
        predicate=CompletionPredicate.from_json(statement.predicate),
        output=statement.subjects[0].digest,
        prompt_tokens=tuple(tuple(p) if isinstance(p, list) else p for p in prompt),
        completion_tokens=tuple(veriml["completion_tokens"]),
        content=output.get("content"),
        tool_calls=tuple(output.get("tool_calls", ())),
        finish_reason=output.get("finish_reason", "stop"),
        embeddings=embeddings,
    )
    return CompletionAnswer(answer, dict(veriml))


def embedding_vectors(answer: NodeAnswer) -> list[np.ndarray[Any, np.dtype[np.float32]]]:
    """The answer's embeddings as float32 vectors (what the OpenAI API returns)."""
    return [np.asarray(v, dtype=np.float32).reshape(-1) for v in answer.embeddings]
