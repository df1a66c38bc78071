"""What an LLM engine produces: the token events of a generation, a completion and the signed
result of a run, and the incremental decoder that turns token pieces into text and applies stop
sequences (docs/llm.md, "Engine and determinism")."""

from __future__ import annotations

import codecs
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from veriml.core.completion import CompletionPredicate, completion_output_digest
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.tensors import tensor_to_json

__all__ = ["Completion", "CompletionResult", "FinishReason", "GeneratedText", "TokenEvent"]

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One generated token and the text it adds to the answer.

    ``text`` is ``""`` while a UTF-8 character is incomplete or while the text could still
    turn into a stop string; the event of the last token carries whatever was held back, so
    the texts of all events concatenate to exactly the completion's ``content``.
    """

    token: int
    text: str


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished generation. ``tokens`` are every sampled token, the end-of-generation token
    included (the prefill check verifies it was chosen); ``content`` excludes it and is cut
    before a stop string."""

    content: str
    tokens: tuple[int, ...]
    prompt_tokens: tuple[int, ...]
    finish_reason: FinishReason
    tool_calls: tuple[Mapping[str, Any], ...] = ()

    def output_digest(self) -> Digest:
        return completion_output_digest(
            content=self.content,
            tool_calls=self.tool_calls,
            tokens=self.tokens,
            finish_reason=self.finish_reason,
        )


@dataclass(frozen=True, slots=True)
class CompletionResult:
    """A signed answer: the completion (or embeddings), its receipt and what was signed."""

    receipt: Envelope
    predicate: CompletionPredicate
    output_digest: Digest
    completion: Completion | None = None
    embeddings: tuple[np.ndarray[Any, Any], ...] = ()
    embedding_prompts: tuple[tuple[int, ...], ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        """The node's answer body (contract: non-streaming answer of ``POST /v1/jobs``)."""
        if self.completion is None:
            return {
                "receipt": self.receipt.to_json(),
                "embeddings": [tensor_to_json(v, force_b64=True) for v in self.embeddings],
                "prompt_tokens": [list(p) for p in self.embedding_prompts],
            }
        c = self.completion
        return {
            "receipt": self.receipt.to_json(),
            "content": c.content,
            "tool_calls": [dict(t) for t in c.tool_calls],
            "finish_reason": c.finish_reason,
            "prompt_tokens": list(c.prompt_tokens),
            "completion_tokens": list(c.tokens),
        }


class GeneratedText:
    """The text side of a generation: pieces accumulated, stop strings and ``max_tokens``
    applied, streamed text held back while it could still become a stop string."""

    def __init__(self, stop: Sequence[str], max_tokens: int) -> None:
        self.stops = [s.encode("utf-8") for s in stop]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.max_tokens = max_tokens
        self.text = bytearray()
        self.tokens: list[int] = []
        self.streamed = 0
        self.end = 0
        self.finish: FinishReason | None = None
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def add(self, token: int, end_of_generation: bool, piece: bytes) -> str:
        """Append one token; return the text it releases to a stream."""
        self.tokens.append(token)
        if end_of_generation:
            self.finish, self.end = "stop", len(self.text)
        else:
            before = len(self.text)
            self.text += piece
            hits = [
                i for s in self.stops if (i := self.text.find(s, max(0, before - len(s) + 1))) >= 0
            ]
            if hits:
                self.finish, self.end = "stop", min(hits)
            elif len(self.tokens) == self.max_tokens:
                self.finish, self.end = "length", len(self.text)
        if self.finish is not None:
            return self.decoder.decode(bytes(self.text[self.streamed : self.end]), final=True)
        safe = len(self.text) - self.hold
        if safe <= self.streamed:
            return ""
        out = self.decoder.decode(bytes(self.text[self.streamed : safe]))
        self.streamed = safe
        return out

    def completion(self, prompt: Sequence[int]) -> Completion:
        assert self.finish is not None  # callers stop adding once a finish is set
        return Completion(
            content=bytes(self.text[: self.end]).decode("utf-8", "replace"),
            tokens=tuple(self.tokens),
            prompt_tokens=tuple(prompt),
            finish_reason=self.finish,
        )
