"""Completion receipts: the token, prompt and output digests and the signed predicate for LLM
answers (docs/llm.md, "Canonical request and digests" and "Receipt"). Pure logic.

A canonical request (built and checked by :mod:`veriml.protocol.openai_requests`, which holds
the API policy) names the computation; this module fixes what is signed about its answer. The
receipt is an in-toto Statement (predicate type :data:`COMPLETION_PREDICATE_TYPE`) with one
subject ``completion`` whose digest is the output digest, signed in a DSSE envelope.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast, get_args

import numpy as np

from veriml.core.canonical import canonical_digest
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement, Subject
from veriml.core.errors import Check, FormatError, VerificationError
from veriml.core.keys import SigningKey, VerifyingKey
from veriml.core.tensors import tensor_digest

__all__ = [
    "COMPLETION_PREDICATE_TYPE",
    "COMPLETION_SUBJECT",
    "MAX_SEED",
    "RELAY_PREFIX",
    "CompletionPredicate",
    "FinishReason",
    "RequestKind",
    "Sampling",
    "Trust",
    "completion_output_digest",
    "embedding_output_digest",
    "open_completion",
    "prompt_digest",
    "relay_digest",
    "relay_model_id",
    "relay_name",
    "sampling_of",
    "sign_completion",
    "token_digest",
]

COMPLETION_PREDICATE_TYPE: Final = "https://veriml.dev/completion/v1"
COMPLETION_SUBJECT: Final = "completion"
RequestKind = Literal["chat.completion", "text_completion", "embedding"]
Trust = Literal["reexecutable", "attested-relay"]
RELAY_PREFIX: Final = "relay:"
"""Model ids ``relay:NAME`` name a model that relay nodes forward to an upstream API."""
FinishReason = Literal["stop", "length", "tool_calls"]

MAX_SEED: Final = 2**53 - 1
"""The largest seed: RFC 8785 writes numbers as IEEE doubles, exact only below 2**53."""


@dataclass(frozen=True, slots=True)
class Sampling:
    """The decoding parameters a verifier needs to replay the sampler."""

    temperature: float
    top_p: float
    top_k: int
    seed: int

    def __post_init__(self) -> None:
        if not (0.0 <= self.temperature <= 2.0 and 0.0 < self.top_p <= 1.0 and self.top_k >= 0):
            raise FormatError("sampling parameters out of range", sampling=repr(self))
        if not 0 <= self.seed <= MAX_SEED:
            raise FormatError("seed out of range", seed=self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Sampling:
        t, p, k, s = (obj.get(n) for n in ("temperature", "top_p", "top_k", "seed"))
        if (
            isinstance(t, int | float)
            and isinstance(p, int | float)
            and isinstance(k, int)
            and isinstance(s, int)
            and not any(isinstance(v, bool) for v in (t, p, k, s))
        ):
            return cls(float(t), float(p), k, s)
        raise FormatError("sampling needs numbers temperature, top_p and integers top_k, seed")


def sampling_of(canonical: Mapping[str, Any]) -> Sampling:
    """The :class:`Sampling` of a canonical completion request."""
    return Sampling.from_json(canonical)


def token_digest(ids: Sequence[int]) -> Digest:
    """SHA-256 of the RFC 8785 JSON array of token ids (the prompt digest)."""
    return canonical_digest([int(i) for i in ids])


def prompt_digest(prompts: Sequence[Sequence[int]]) -> Digest:
    """Digest of several prompts (an embedding request): RFC 8785 array of id arrays."""
    return canonical_digest([[int(i) for i in ids] for ids in prompts])


def completion_output_digest(
    *,
    content: str | None,
    tool_calls: Sequence[Mapping[str, Any]],
    tokens: Sequence[int],
    finish_reason: str,
) -> Digest:
    """The output digest of a completion: what the receipt's subject signs."""
    return canonical_digest(
        {
            "content": content,
            "tool_calls": [dict(c) for c in tool_calls],
            "tokens": [int(t) for t in tokens],
            "finish_reason": finish_reason,
        }
    )


def embedding_output_digest(vectors: Sequence[np.ndarray[Any, Any]]) -> Digest:
    """The output digest of an embedding answer: the tensor digests of its vectors, in order."""
    return canonical_digest({"embeddings": [tensor_digest(v).to_text() for v in vectors]})


def _member(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise FormatError(f"completion predicate needs an object {key!r}")
    return value


def _text(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise FormatError(f"completion predicate {where}.{key} must be a string")
    return value


def _count(obj: Mapping[str, Any], where: str) -> int:
    value = obj.get("count")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FormatError(f"completion predicate {where}.count must be a non-negative integer")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionPredicate:
    """The ``predicate`` of a completion receipt (docs/llm.md, "Receipt").

    ``trust`` is ``reexecutable`` (the node ran the model named by ``model_digest``) or
    ``attested-relay`` (the node relayed an upstream API named by ``upstream``: a signature
    only). Embedding receipts have no ``sampling`` and a completion count of 0.
    """

    request_id: str
    request_digest: Digest
    model_digest: Digest | None
    model_files: Digest | None
    prompt_count: int
    prompt_digest: Digest
    completion_count: int
    finish_reason: str
    sampling: Sampling | None
    runtime: Mapping[str, Any]
    node_id: str
    policy: str
    trust: Trust
    started: str
    finished: str
    upstream: Mapping[str, Any] | None = None
    spot: Digest | None = None
    """``spot:P`` jobs: the coordinator's commitment to its spot-check secret, signed here
    before the secret is revealed (docs/verification.md, "Spot checks")."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.trust == "reexecutable" and (self.model_digest is None or self.upstream):
            raise FormatError("a reexecutable receipt names its model by digest, not upstream")
        if self.trust == "attested-relay" and (self.model_digest is not None or not self.upstream):
            raise FormatError("an attested-relay receipt names its upstream, not a digest")
        if self.trust not in get_args(Trust):
            raise FormatError("unknown trust level", trust=self.trust)
        if self.prompt_count < 0 or self.completion_count < 0:
            raise FormatError("token counts are non-negative")

    def to_json(self) -> dict[str, Any]:
        if self.model_digest is not None:
            model: dict[str, Any] = {"digest": self.model_digest.to_text()}
            if self.model_files is not None:
                model["files"] = self.model_files.to_text()
        else:
            model = dict(self.upstream or {})
        out: dict[str, Any] = {
            "request": {"id": self.request_id, "digest": self.request_digest.to_text()},
            "model": model,
            "prompt": {"count": self.prompt_count, "digest": self.prompt_digest.to_text()},
            "completion": {"count": self.completion_count, "finish_reason": self.finish_reason},
            "runtime": dict(self.runtime),
            "node": {"id": self.node_id},
            "policy": self.policy,
            "trust": self.trust,
            "timestamps": {"started": self.started, "finished": self.finished},
        }
        if self.sampling is not None:
            out["sampling"] = self.sampling.to_json()
        if self.spot is not None:
            out["spot"] = {"commitment": self.spot.to_text()}
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> CompletionPredicate:
        """Parse a predicate; :class:`VerificationError` (check ``predicate``) when malformed."""
        try:
            request, model = _member(obj, "request"), _member(obj, "model")
            prompt, completion = _member(obj, "prompt"), _member(obj, "completion")
            times, node = _member(obj, "timestamps"), _member(obj, "node")
            trust = obj.get("trust")
            if trust not in get_args(Trust):
                raise FormatError("completion predicate trust is unknown", trust=trust)
            policy = obj.get("policy")
            if not isinstance(policy, str):
                raise FormatError("completion predicate policy must be a string")
            relay = trust == "attested-relay"
            sampling = Sampling.from_json(_member(obj, "sampling")) if "sampling" in obj else None
            known = {"request", "model", "prompt", "completion", "sampling", "runtime"}
            known |= {"node", "policy", "trust", "timestamps", "spot"}
            spot = None
            if "spot" in obj:
                spot = Digest.from_text(_text(_member(obj, "spot"), "commitment", "spot"))
            return cls(
                request_id=_text(request, "id", "request"),
                request_digest=Digest.from_text(_text(request, "digest", "request")),
                model_digest=None if relay else Digest.from_text(_text(model, "digest", "model")),
                model_files=(
                    Digest.from_text(_text(model, "files", "model"))
                    if not relay and "files" in model
                    else None
                ),
                upstream=dict(model) if relay else None,
                prompt_count=_count(prompt, "prompt"),
                prompt_digest=Digest.from_text(_text(prompt, "digest", "prompt")),
                completion_count=_count(completion, "completion"),
                finish_reason=_text(completion, "finish_reason", "completion"),
                sampling=sampling,
                runtime=dict(_member(obj, "runtime")),
                node_id=_text(node, "id", "node"),
                policy=policy,
                trust=cast(Trust, trust),
                started=_text(times, "started", "timestamps"),
                finished=_text(times, "finished", "timestamps"),
                spot=spot,
                extra={k: v for k, v in obj.items() if k not in known},
            )
        except FormatError as exc:
            raise VerificationError(
                "completion predicate is malformed", check=Check.PREDICATE, reason=exc.diagnostics()
            ) from exc


def sign_completion(output: Digest, predicate: CompletionPredicate, key: SigningKey) -> Envelope:
    """Sign a completion statement over the output digest with the node's key."""
    statement = Statement(
        subjects=(Subject(COMPLETION_SUBJECT, output),),
        predicate_type=COMPLETION_PREDICATE_TYPE,
        predicate=predicate.to_json(),
    )
    return Envelope.sign(statement.to_bytes(), [key])


def open_completion(envelope: Envelope, key: VerifyingKey) -> tuple[CompletionPredicate, Digest]:
    """Verify a completion receipt signed by ``key``; return its predicate and output digest.

    Checks, in order: 1. the DSSE signature (``signature``); 2. the Statement and its
    predicate type (``predicate-type``); 3. exactly one subject named ``completion``
    (``subject``); 4. the predicate's shape (``predicate``). Any failure raises a
    :class:`VerificationError` naming the check; nothing is returned unverified.
    """
    envelope.verify([key])
    try:
        statement = Statement.from_bytes(envelope.payload)
    except FormatError as exc:
        raise VerificationError(
            "receipt payload is not a statement", check=Check.STATEMENT, reason=exc.diagnostics()
        ) from exc
    if statement.predicate_type != COMPLETION_PREDICATE_TYPE:
        raise VerificationError(
            "receipt is not a completion receipt",
            check=Check.PREDICATE_TYPE,
            expected=COMPLETION_PREDICATE_TYPE,
            got=statement.predicate_type,
        )
    if len(statement.subjects) != 1 or statement.subjects[0].name != COMPLETION_SUBJECT:
        raise VerificationError(
            "a completion receipt has exactly one subject named completion",
            check=Check.SUBJECT,
            subjects=",".join(s.name for s in statement.subjects),
        )
    return CompletionPredicate.from_json(statement.predicate), statement.subjects[0].digest


def relay_model_id(name: str) -> str:
    """The model id ``relay:NAME`` of upstream model ``name``: what a relay node lists in its
    descriptor and a client asks for (docs/openai-api.md, "Relayed models")."""
    return f"{RELAY_PREFIX}{name}"


def relay_name(model_id: str) -> str | None:
    """``NAME`` when ``model_id`` names a relayed model ``relay:NAME``, else None."""
    return model_id.removeprefix(RELAY_PREFIX) if model_id.startswith(RELAY_PREFIX) else None


def relay_digest(name: str) -> Digest:
    """The stand-in digest of relayed model ``NAME``: ``SHA-256("relay:NAME")``. A relay has no
    weights to name; requests, jobs and log entries are bound to this instead."""
    return Digest.of(relay_model_id(name).encode())
