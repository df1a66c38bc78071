"""The ``veriml`` member of an OpenAI-compatible answer, and the output it vouches for (pure
formats: parsing proves nothing; :func:`veriml.verify.completion.verify_completion` does).

A chat completion, text completion or embedding answer carries a ``veriml`` member
(docs/llm.md, "OpenAI-compatible API")::

    {"id", "policy", "receipts": [DSSE…], "prompt_tokens": [ids], "completion_tokens": [ids],
     "verdict": {…}, "nodes": [{"id", "log_index"}…], "request": {…},
     "log": {"index", "checkpoint", "proof"}}

:class:`CompletionEvidence` parses it; :func:`completion_output` reads what the answer body
says was generated, whose digest the receipts sign (docs/llm.md, "Canonical request and
digests").
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from veriml.core.completion import RequestKind, completion_output_digest, embedding_output_digest
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import FormatError
from veriml.protocol.policy import Verdict
from veriml.verify.answer import LogEvidence, NodeEvidence
from veriml.verify.network import NetworkEvidence

__all__ = [
    "MAX_TOKENS",
    "CompletionEvidence",
    "CompletionOutput",
    "Kind",
    "completion_output",
]

MAX_TOKENS = 1 << 20

Kind = RequestKind


def _ids(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_TOKENS:
        raise FormatError(f"{what} must be a list of token ids")
    if not all(type(v) is int and 0 <= v < 1 << 31 for v in value):
        raise FormatError(f"{what} must hold non-negative integer token ids")
    return tuple(value)


def _log(obj: object) -> LogEvidence:
    # docs/llm.md spells the inclusion proof ``proof``; saved network answers ``inclusion_proof``.
    if isinstance(obj, Mapping) and "proof" in obj and "inclusion_proof" not in obj:
        obj = {**obj, "inclusion_proof": obj["proof"]}
    return LogEvidence.from_json(obj)


@dataclass(frozen=True, slots=True)
class CompletionEvidence:
    """The ``veriml`` member of an answer, parsed (parsing proves nothing).

    ``prompt_tokens`` holds one id list per prompt: one for chat and text completions (none
    for a relay, which sees no tokens), one per input for embeddings."""

    id: str
    policy: str
    receipts: tuple[Envelope, ...]
    prompt_tokens: tuple[tuple[int, ...], ...]
    completion_tokens: tuple[int, ...]
    verdict: Verdict
    log: LogEvidence
    nodes: tuple[NodeEvidence, ...]
    request: Mapping[str, Any] = field(default_factory=dict)
    model: Digest | None = None
    """The model digest the entry was logged under, when the coordinator states it (a relayed
    answer's receipts have none)."""
    network: NetworkEvidence = field(default_factory=NetworkEvidence)
    """The entries the answer cites, its operators' stake proofs and its model's provenance."""

    @classmethod
    def from_json(cls, obj: object) -> CompletionEvidence:
        if not isinstance(obj, Mapping):
            raise FormatError("the answer has no veriml member: nothing to verify it by")
        try:
            receipts = obj["receipts"]
            if not isinstance(receipts, list) or not receipts:
                raise FormatError("veriml.receipts must be a non-empty list of DSSE envelopes")
            prompt = obj.get("prompt_tokens", [])
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
                prompts = tuple(_ids(p, "veriml.prompt_tokens[]") for p in prompt)
            else:
                ids = _ids(prompt, "veriml.prompt_tokens")
                prompts = (ids,) if ids else ()
            nodes = obj.get("nodes", [])
            request = obj.get("request", {})
            if not isinstance(nodes, list) or not isinstance(request, Mapping):
                raise FormatError("veriml.nodes must be a list and veriml.request an object")
            return cls(
                id=str(obj["id"]),
                policy=str(obj["policy"]),
                receipts=tuple(Envelope.from_json(r) for r in receipts),
                prompt_tokens=prompts,
                completion_tokens=_ids(obj.get("completion_tokens", []), "completion_tokens"),
                verdict=Verdict.from_json(obj["verdict"]),
                log=_log(obj["log"]),
                nodes=tuple(NodeEvidence.from_json(n) for n in nodes),
                request=dict(request),
                model=None if obj.get("model") is None else Digest.from_text(str(obj["model"])),
                network=NetworkEvidence.from_answer(obj),
            )
        except KeyError as exc:
            raise FormatError("the veriml member is missing a member", member=str(exc)) from exc

    def with_nodes(self, nodes: Sequence[NodeEvidence]) -> CompletionEvidence:
        return replace(self, nodes=tuple(nodes))


@dataclass(frozen=True, slots=True)
class CompletionOutput:
    """What the answer says was generated: the first choice's message or text and finish
    reason, or the embedding vectors (in input order)."""

    content: str | None = None
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    finish_reason: str = "stop"
    embeddings: tuple[npt.NDArray[np.float32], ...] = ()

    def digest(self, kind: Kind, tokens: Sequence[int]) -> Digest:
        """The output digest of docs/llm.md, "Canonical request and digests"."""
        if kind == "embedding":
            return embedding_output_digest(list(self.embeddings))
        return completion_output_digest(
            content=self.content,
            tool_calls=list(self.tool_calls),
            tokens=list(tokens),
            finish_reason=self.finish_reason,
        )


def _embedding(item: object) -> npt.NDArray[np.float32]:
    if not isinstance(item, Mapping):
        raise FormatError("each embedding is an object with an embedding member")
    value = item.get("embedding")
    if isinstance(value, str):  # encoding_format=base64: little-endian float32
        try:
            return np.frombuffer(base64.b64decode(value, validate=True), dtype="<f4").copy()
        except (binascii.Error, ValueError) as exc:
            raise FormatError("a base64 embedding is not valid base64") from exc
    if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
        raise FormatError("an embedding is a list of numbers")
    return np.asarray(value, dtype=np.float32)


def completion_output(kind: Kind, body: Mapping[str, Any]) -> CompletionOutput:
    """The generated output as an OpenAI answer body states it (first choice; ``n`` is 1)."""
    if kind == "embedding":
        data = body.get("data")
        if not isinstance(data, list) or not data:
            raise FormatError("an embedding answer has a non-empty data list")
        ordered = sorted(data, key=lambda d: d.get("index", 0) if isinstance(d, Mapping) else 0)
        return CompletionOutput(embeddings=tuple(_embedding(d) for d in ordered))
    choices = body.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0], Mapping):
        raise FormatError("a completion answer has exactly one choice")
    choice = choices[0]
    finish = choice.get("finish_reason")
    if not isinstance(finish, str):
        raise FormatError("the choice has no finish_reason")
    if kind == "text_completion":
        text = choice.get("text")
        if not isinstance(text, str):
            raise FormatError("a text completion's choice has a text")
        return CompletionOutput(content=text, finish_reason=finish)
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise FormatError("a chat completion's choice has a message")
    content = message.get("content")
    calls = message.get("tool_calls") or []
    if (content is not None and not isinstance(content, str)) or not isinstance(calls, list):
        raise FormatError("the message's content is text or null and its tool_calls a list")
    return CompletionOutput(content=content, tool_calls=tuple(calls), finish_reason=finish)
