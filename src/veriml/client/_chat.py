"""LLM answers as the SDK returns them, and the wire around them (docs/llm.md, "OpenAI-compatible
API"): :class:`ChatResult`, the request as sent (:class:`LLMRequest`), OpenAI error objects as
veriml errors, and server-sent events (read by :mod:`veriml.protocol.sse`) rebuilt into the
body a non-streaming request would have returned (:class:`StreamAssembler`), so a stream
verifies exactly like an answer. No I/O: the HTTP lives in the clients
(:mod:`veriml.client._base`), the verification in :mod:`veriml.verify.completion`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from veriml.client._requests import check_epoch, epoch_header, error_for_status
from veriml.core.canonical import parse_json_object
from veriml.core.completion import Trust
from veriml.core.dsse import Envelope, Statement
from veriml.core.errors import (
    Check,
    Error,
    FormatError,
    LimitExceededError,
    VerificationError,
)
from veriml.protocol.policy import Policy, Verdict
from veriml.verify.completion import VerifiedCompletion
from veriml.verify.completion_answer import CompletionEvidence, Kind, completion_output

__all__ = [
    "PATHS",
    "POLICY_HEADER",
    "ChatResult",
    "LLMRequest",
    "StreamAssembler",
    "StreamedAnswer",
    "canonical_policy",
    "llm_request",
    "openai_error",
]


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A verified LLM answer as :meth:`veriml.Client.chat`, ``complete`` and ``embed`` return it.

    ``content``, ``tool_calls`` and ``finish_reason`` are the first choice's (``embeddings`` for
    an embedding answer); ``usage`` is OpenAI's token counts; ``trust`` is the level the
    receipts sign (``reexecutable`` or ``attested-relay``: a relay's signature only).
    ``verified`` names the checks that passed and ``notes`` what was taken as signed; both are
    empty when verification was skipped (``verify=False``), and ``trust`` is then the
    receipt's unverified claim. ``response`` is the answer body as received.
    """

    kind: Kind
    id: str
    model: str
    content: str | None
    tool_calls: tuple[Mapping[str, Any], ...]
    finish_reason: str
    usage: Mapping[str, Any]
    receipts: tuple[Envelope, ...]
    verdict: Verdict
    trust: Trust
    policy: str
    prompt_tokens: tuple[tuple[int, ...], ...] = ()
    completion_tokens: tuple[int, ...] = ()
    embeddings: tuple[npt.NDArray[np.float32], ...] = ()
    verified: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    log_index: int | None = None
    response: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def message(self) -> dict[str, Any]:
        """The assistant message, ready to append to the next request's ``messages``."""
        out: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [dict(c) for c in self.tool_calls]
        return out

    @property
    def text(self) -> str:
        """The generated text (empty for tool calls and embeddings)."""
        return self.content or ""

    def to_json(self) -> dict[str, Any]:
        """A summary for scripts (``veriml chat --json``): the answer, its trust and checks."""
        out: dict[str, Any] = {
            "id": self.id,
            "model": self.model,
            "policy": self.policy,
            "trust": self.trust,
            "verdict": self.verdict.outcome,
            "agreeing": list(self.verdict.agreeing),
            "log_index": self.log_index,
            "usage": dict(self.usage),
            "verified": list(self.verified),
            "notes": list(self.notes),
        }
        if self.kind == "embedding":
            out["embeddings"] = [e.tolist() for e in self.embeddings]
        else:
            out |= {"content": self.content, "finish_reason": self.finish_reason}
            if self.tool_calls:
                out["tool_calls"] = [dict(c) for c in self.tool_calls]
        return out

    @classmethod
    def of(
        cls, kind: Kind, body: Mapping[str, Any], verified: VerifiedCompletion | None = None
    ) -> ChatResult:
        """The result for an answer ``body``, with what ``verified`` established (if run)."""
        evidence = verified.evidence if verified is not None else None
        if evidence is None:
            evidence = CompletionEvidence.from_json(body.get("veriml"))
        output = completion_output(kind, body)
        usage = body.get("usage")
        return cls(
            kind=kind,
            id=str(body.get("id", evidence.id)),
            model=str(body.get("model", "")),
            content=output.content,
            tool_calls=output.tool_calls,
            finish_reason=output.finish_reason,
            usage=dict(usage) if isinstance(usage, Mapping) else {},
            receipts=evidence.receipts,
            verdict=evidence.verdict,
            trust=verified.trust if verified is not None else _claimed_trust(evidence),
            policy=evidence.policy,
            prompt_tokens=evidence.prompt_tokens,
            completion_tokens=evidence.completion_tokens,
            embeddings=output.embeddings,
            verified=verified.checks if verified is not None else (),
            notes=verified.notes if verified is not None else (),
            log_index=evidence.log.index,
            response=dict(body),
        )


def _claimed_trust(evidence: CompletionEvidence) -> Trust:
    """The first receipt's trust claim, unverified (``verify=False``)."""
    try:
        predicate = Statement.from_bytes(evidence.receipts[0].payload).predicate
    except FormatError:
        return "attested-relay"
    # Anything but an explicit re-executable claim is reported as the weaker level.
    return "reexecutable" if predicate.get("trust") == "reexecutable" else "attested-relay"


class StreamAssembler:
    """Rebuilds a streamed answer (OpenAI SSE chunks, then veriml's final ``event: veriml``)
    into the body a non-streaming request would have returned, so it verifies the same way.

    Feed it each SSE event with :meth:`feed`; it returns the text delta to show, if any.
    :meth:`body` fails closed: a stream that ended without ``[DONE]``, without the ``veriml``
    event, or with a chunk after it, has no body to verify.
    """

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self._id = ""
        self._model = ""
        self._parts: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self._finish: str | None = None
        self._usage: Mapping[str, Any] | None = None
        self._veriml: Mapping[str, Any] | None = None
        self._done = False
        self._role_only = True

    def feed(self, event: str, data: str) -> str:
        """One SSE event (``event`` is ``""`` for the default type); the new text, or ``""``."""
        if self._done:
            raise FormatError("the stream continued after [DONE]")
        if data == "[DONE]":
            self._done = True
            return ""
        obj = parse_json_object(data, what="stream event")
        if event == "veriml":
            if self._veriml is not None:
                raise FormatError("the stream has two veriml events")
            # The object itself (docs/llm.md), or wrapped in a chunk without choices (what
            # OpenAI's SDKs pass through harmlessly, like their usage chunk).
            inner = obj.get("veriml")
            self._veriml = inner if isinstance(inner, Mapping) and "receipts" not in obj else obj
            return ""
        if event not in ("", "message"):
            raise FormatError("unknown stream event", event=event[:40])
        if self._veriml is not None:
            raise FormatError("a completion chunk came after the veriml event")
        return self._chunk(obj)

    def _chunk(self, obj: Mapping[str, Any]) -> str:
        self._id = str(obj.get("id", self._id))
        self._model = str(obj.get("model", self._model))
        if isinstance(obj.get("usage"), Mapping):
            self._usage = obj["usage"]
        choices = obj.get("choices") or []
        if not isinstance(choices, list):
            raise FormatError("a chunk's choices is a list")
        text = ""
        for choice in choices:
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                raise FormatError("a stream has one choice, index 0")
            if self.kind == "text_completion":
                piece = choice.get("text") or ""
            else:
                delta = choice.get("delta") or {}
                piece = delta.get("content") or ""
                for call in delta.get("tool_calls") or []:
                    self._tool_call(call)
            if not isinstance(piece, str):
                raise FormatError("a chunk's text is a string")
            text += piece
            if choice.get("finish_reason") is not None:
                self._finish = str(choice["finish_reason"])
        self._parts.append(text)
        return text

    def _tool_call(self, call: Mapping[str, Any]) -> None:
        """OpenAI streams a tool call as pieces: its id, type and name once, then arguments."""
        index = int(call.get("index", 0))
        merged = self._calls.setdefault(index, {"function": {"name": "", "arguments": ""}})
        for key in ("id", "type"):
            if call.get(key) is not None:
                merged[key] = call[key]
        function = call.get("function") or {}
        merged["function"]["name"] += function.get("name") or ""
        merged["function"]["arguments"] += function.get("arguments") or ""

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def body(self) -> dict[str, Any]:
        """The non-streaming body this stream amounts to, with its ``veriml`` member."""
        if self._veriml is None:
            raise VerificationError(
                "the stream ended without its veriml event: nothing to verify it by",
                check=Check.STREAM,
            )
        if not self._done:
            raise VerificationError("the stream ended before [DONE]", check=Check.STREAM)
        if self._finish is None:
            raise VerificationError("the stream never gave a finish_reason", check=Check.STREAM)
        content = self.text
        calls = [self._calls[i] for i in sorted(self._calls)]
        if self.kind == "text_completion":
            choice: dict[str, Any] = {"index": 0, "text": content}
        else:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
                message["content"] = content or None
            choice = {"index": 0, "message": message}
        choice["finish_reason"] = self._finish
        body: dict[str, Any] = {
            "id": self._id,
            "model": self._model,
            "choices": [choice],
            "veriml": dict(self._veriml),
        }
        if self._usage is not None:
            body["usage"] = dict(self._usage)
        return body


PATHS: Mapping[Kind, str] = {
    "chat.completion": "/v1/chat/completions",
    "text_completion": "/v1/completions",
    "embedding": "/v1/embeddings",
}
POLICY_HEADER = "X-Veriml-Policy"


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """One OpenAI-style request as this client sends it, and what its answer must be about.

    ``body`` is the OpenAI request body exactly as sent (the canonical request is rebuilt from
    it); the policy travels in the ``X-Veriml-Policy`` header so the body stays OpenAI's own.
    """

    kind: Kind
    body: Mapping[str, Any]
    policy: str
    request_id: str
    epoch: int | None = None
    """The randomness epoch this client named (``X-Veriml-Epoch``; :func:`check_epoch`)."""
    own_id: bool = True
    """The request id is one this client made, not the caller's."""

    @property
    def path(self) -> str:
        return PATHS[self.kind]

    @property
    def model(self) -> str:
        return str(self.body["model"])

    def content(self) -> bytes:
        """The exact body bytes sent (and signed, with a client key)."""
        return json.dumps(dict(self.body), separators=(",", ":")).encode()

    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "Idempotency-Key": self.request_id,
            POLICY_HEADER: self.policy,
        } | epoch_header(self.epoch)

    def check(self, verified: VerifiedCompletion) -> None:
        """The answer is for this request: its id (sent as ``Idempotency-Key``, which the
        coordinator makes the request id) and policy; the request digest covers the rest."""
        if self.request_id and verified.evidence.id != self.request_id:
            raise VerificationError(
                "the answer is for another request than the one sent",
                check=Check.REQUEST,
                request=self.request_id,
                answered=verified.evidence.id,
            )
        if verified.evidence.policy != canonical_policy(self.policy):
            raise VerificationError(
                "the answer is under another policy than the one asked for",
                check=Check.REQUEST,
                asked=self.policy,
                answered=verified.evidence.policy,
            )
        check_epoch(verified.evidence.verdict.draw, self.epoch, own_id=self.own_id)


def llm_request(
    kind: Kind,
    model: str,
    payload: Mapping[str, Any],
    params: Mapping[str, Any],
    policy: str,
    request_id: str | None,
    public: bool = False,
) -> LLMRequest:
    """The OpenAI request body: the model, the prompt member, then the caller's parameters
    as given (the coordinator validates them; unset ones are left to its defaults), and
    ``veriml.visibility`` when the caller lets anyone read what the request leaves."""
    if not isinstance(model, str) or not model:
        raise FormatError("a model is a hub name, name@version or digest")
    reserved = sorted(set(params) & {"model", "messages", "prompt", "input", "veriml"})
    if reserved:
        raise FormatError("parameters repeat a request member", members=",".join(reserved))
    body = {"model": model, **payload, **{k: v for k, v in params.items() if v is not None}}
    if public:
        body["veriml"] = {"visibility": "public"}
    return LLMRequest(
        kind,
        body,
        canonical_policy(policy),
        request_id or str(uuid.uuid4()),
        own_id=request_id is None,
    )


class StreamedAnswer:
    """What :class:`veriml.client.ChatStream` and its asyncio twin keep while a stream is
    read: the request, the open response, the assembler rebuilding the answer's body and,
    once the stream has ended, the result."""

    def __init__(self, request: LLMRequest, response: httpx.Response, verify: bool | None) -> None:
        self._request = request
        self._response = response
        self._verify = verify
        self._assembler = StreamAssembler(request.kind)
        self._result: ChatResult | None = None

    @property
    def result(self) -> ChatResult:
        """The verified answer; only once the stream has been read to its end."""
        if self._result is None:
            raise VerificationError("the stream has not been read to its end", check=Check.STREAM)
        return self._result

    @property
    def text(self) -> str:
        """The text received so far."""
        return self._assembler.text


def canonical_policy(text: str) -> str:
    """The canonical text of a policy; a malformed one is a :class:`FormatError` before any
    request is sent."""
    return str(Policy.parse(text))


def openai_error(status: int, body: object, url: str) -> Error:
    """The veriml error for an OpenAI error object ``{"error": {"message", "type", "param",
    "code"}}`` (or a problem JSON) answered with ``status`` (:func:`error_for_status`; a
    context too long for the model is :class:`LimitExceededError`)."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping):
        message = str(error.get("message") or "request failed")
        param, code = error.get("param"), error.get("code")
    else:
        problem = body if isinstance(body, Mapping) else {}
        message = str(problem.get("detail") or problem.get("title") or "request failed")
        param, code = None, None
    evidence = {"status": status, "url": url, "param": param, "code": code}
    if status == 400 and code in ("context_length_exceeded", "too_many_tokens"):
        return LimitExceededError(message, **evidence)
    return error_for_status(status, message, evidence)
