"""The relay engine: a node fronting an OpenAI-compatible upstream (docs/llm.md, "Relay engine").

``veriml node serve --relay URL --relay-model NAME [--relay-key-env VAR]`` runs jobs through
:class:`RelayEngine` instead of llama.cpp: the canonical request is forwarded to the upstream
(a llama.cpp server, vLLM, Ollama, a hosted API, or another veriml network), and what comes
back is signed as a completion receipt with ``trust: attested-relay`` and ``model:
{"upstream": URL, "name": NAME}``.

That receipt is a signature only. The relay sees text, not the upstream's weights or token
ids, so there is no model digest, no prompt or generated token ids (both are signed as empty
lists) and nothing anyone can re-execute: the signature says "this node relayed this answer to
this request from this upstream", and the SDK reports exactly that trust level.

The upstream's API key is read from the environment variable named by ``key_env`` at each
request (so it can be rotated without a restart) and sent only as the upstream's
``Authorization`` header: never logged, never in an error, never in a receipt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any, Final

import httpx
import numpy as np

from veriml.core.canonical import canonical_digest
from veriml.core.completion import (
    CompletionPredicate,
    embedding_output_digest,
    prompt_digest,
    sampling_of,
    sign_completion,
    token_digest,
)
from veriml.core.digest import Digest
from veriml.core.errors import ExecutionError, FormatError, LimitExceededError, NodeUnavailableError
from veriml.core.keys import SigningKey
from veriml.core.timestamps import utc_now
from veriml.protocol.sse import parse_sse
from veriml.runtime.llm import Completion, CompletionResult, TokenEvent

__all__ = ["RELAY_ENGINE", "RELAY_TOKEN", "RelayEngine"]

RELAY_ENGINE: Final = "relay"
"""The engine a relay node's descriptor lists."""
RELAY_TOKEN: Final = -1
"""The token id of a streamed relay piece: the upstream sends text, not token ids."""
MAX_UPSTREAM_BYTES: Final = 64 << 20
_MAX_ERROR_TEXT: Final = 300
# Canonical members forwarded as they are; the rest is either the prompt or checked below.
_SAMPLING: Final = ("seed", "temperature", "top_p", "max_tokens")
_PATHS: Final = {
    "chat.completion": "/chat/completions",
    "text_completion": "/completions",
    "embedding": "/embeddings",
}


def _upstream_body(canonical: Mapping[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """The OpenAI request for the upstream: the canonical request's output-relevant members,
    with the upstream's model name. Members OpenAI's API cannot carry are refused rather
    than dropped, so the relay never signs a request it did not forward."""
    kind = canonical.get("type")
    if kind not in _PATHS:
        raise FormatError("a relay forwards chat, text or embedding requests", got=str(kind))
    if kind == "embedding":
        return {"model": model, "input": canonical["input"]}
    if canonical.get("top_k", 0) != 0:
        raise FormatError("an OpenAI-compatible upstream has no top_k", param="top_k")
    body: dict[str, Any] = {"model": model}
    body |= (
        {"messages": canonical["messages"]}
        if kind == "chat.completion"
        else {"prompt": canonical["prompt"]}
    )
    body |= {k: canonical[k] for k in _SAMPLING if canonical.get(k) is not None}
    for name in ("tools", "tool_choice"):
        if canonical.get(name) is not None:
            body[name] = canonical[name]
    if canonical.get("stop"):
        body["stop"] = canonical["stop"]
    if canonical.get("response_format") not in (None, {"type": "text"}):
        body["response_format"] = canonical["response_format"]
    if stream:
        body["stream"] = True
    return body


def _error(response: httpx.Response, url: str) -> Exception:
    """The upstream's failure, with its own message (the key is never part of it)."""
    try:
        body = response.json()
        error = body.get("error") if isinstance(body, dict) else None
        message = str(error.get("message") if isinstance(error, dict) else body)
    except ValueError:
        message = response.text
    evidence = {"upstream": url, "status": response.status_code}
    if 400 <= response.status_code < 500:
        return FormatError(
            f"the upstream refused the request: {message[:_MAX_ERROR_TEXT]}", **evidence
        )
    return NodeUnavailableError(f"the upstream failed: {message[:_MAX_ERROR_TEXT]}", **evidence)


class RelayEngine:
    """Runs completion and embedding jobs on an OpenAI-compatible upstream and signs them.

    ``url`` is the upstream's OpenAI base URL (``https://api.example.com/v1``), ``model`` the
    upstream's model id, ``key_env`` the environment variable holding its API key (None: no
    key). ``transport`` replaces the network for tests.

    >>> engine = RelayEngine("http://127.0.0.1:8800/v1", "smollm2")  # doctest: +SKIP
    >>> engine.run(canonical, key=node_key, request_id="r1", policy="none")  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        key_env: str | None = None,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise FormatError("a relay upstream URL is http(s)", got=url[:80])
        if not model or len(model) > 256:
            raise FormatError("a relay names the upstream's model (1-256 characters)")
        self.url = url.rstrip("/")
        self.model = model
        self.key_env = key_env
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def fingerprint(self) -> dict[str, Any]:
        """The receipt's ``runtime``: what ran is the upstream, named, not measured."""
        return {"engine": RELAY_ENGINE, "upstream": self.url, "model": self.model}

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.key_env:
            key = os.environ.get(self.key_env)
            if not key:
                raise ExecutionError(
                    "the relay's upstream key variable is not set", variable=self.key_env
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _post(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
        url = self.url + _PATHS[kind]
        try:
            response = self._http.post(url, json=dict(body), headers=self._headers())
        except httpx.HTTPError as exc:
            raise NodeUnavailableError(
                "the upstream could not be reached", upstream=self.url, reason=type(exc).__name__
            ) from exc
        if response.status_code >= 400:
            raise _error(response, self.url)
        if len(response.content) > MAX_UPSTREAM_BYTES:
            raise LimitExceededError("the upstream's answer is too large", limit=MAX_UPSTREAM_BYTES)
        try:
            answer = response.json()
        except ValueError as exc:
            raise ExecutionError("the upstream's answer is not JSON", upstream=self.url) from exc
        if not isinstance(answer, dict):
            raise ExecutionError("the upstream's answer is not a JSON object", upstream=self.url)
        return answer

    def _stream(
        self, kind: str, body: Mapping[str, Any], on_token: Callable[[TokenEvent], None]
    ) -> dict[str, Any]:
        """Stream from the upstream, passing each text piece on as it arrives; the answer
        rebuilt as a non-streaming body (the upstream's own extra events are ignored)."""
        url = self.url + _PATHS[kind]
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        finish: str | None = None
        try:
            with self._http.stream("POST", url, json=dict(body), headers=self._headers()) as r:
                if r.status_code >= 400:
                    r.read()
                    raise _error(r, self.url)
                for event, data in parse_sse(r.iter_lines()):
                    if data == "[DONE]":
                        break
                    if event not in ("", "message"):
                        continue
                    for choice in json.loads(data).get("choices") or []:
                        delta = choice.get("delta") or {}
                        piece = choice.get("text") if kind == "text_completion" else None
                        piece = piece or delta.get("content") or ""
                        for call in delta.get("tool_calls") or []:
                            _merge_call(calls, call)
                        if piece:
                            text.append(piece)
                            on_token(TokenEvent(RELAY_TOKEN, piece))
                        finish = choice.get("finish_reason") or finish
        except httpx.HTTPError as exc:
            raise NodeUnavailableError(
                "the upstream stream broke off", upstream=self.url, reason=type(exc).__name__
            ) from exc
        except (ValueError, AttributeError) as exc:
            raise ExecutionError(
                "the upstream streamed malformed events", upstream=self.url
            ) from exc
        message: dict[str, Any] = {"content": "".join(text)}
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        choice_out: dict[str, Any] = {"finish_reason": finish or "stop"}
        choice_out |= (
            {"text": message["content"]} if kind == "text_completion" else {"message": message}
        )
        return {"choices": [choice_out]}

    def run(
        self,
        canonical: Mapping[str, Any],
        *,
        key: SigningKey,
        request_id: str,
        policy: str,
        on_token: Callable[[TokenEvent], None] | None = None,
        spot: Digest | None = None,
    ) -> CompletionResult:
        """Forward ``canonical`` to the upstream and sign what it answered (``LLMEngine.run``'s
        signature, so a node runs either engine the same way)."""
        kind = str(canonical.get("type"))
        started = utc_now()
        body = _upstream_body(canonical, self.model, stream=on_token is not None)
        common: dict[str, Any] = {
            "request_id": request_id,
            "request_digest": canonical_digest(dict(canonical)),
            "model_digest": None,
            "model_files": None,
            "runtime": self.fingerprint(),
            "node_id": key.key_id,
            "policy": policy,
            "trust": "attested-relay",
            "started": started,
            "upstream": {"upstream": self.url, "name": self.model},
            "spot": spot,
            # The relay sees text, not token ids: both lists are signed empty.
            "prompt_count": 0,
            "completion_count": 0,
        }
        if kind == "embedding":
            vectors = _vectors(self._post(kind, body))
            output = embedding_output_digest(vectors)
            predicate = CompletionPredicate(
                **common,
                prompt_digest=prompt_digest([]),
                finish_reason="stop",
                sampling=None,
                finished=utc_now(),
            )
            return CompletionResult(
                receipt=sign_completion(output, predicate, key),
                predicate=predicate,
                output_digest=output,
                embeddings=tuple(vectors),
            )
        answer = self._post(kind, body) if on_token is None else self._stream(kind, body, on_token)
        content, tool_calls, finish = _choice(kind, answer)
        completion = Completion(
            content=content,
            tokens=(),
            prompt_tokens=(),
            finish_reason=finish,  # type: ignore[arg-type]  # an upstream may end in tool_calls
            tool_calls=tuple(tool_calls),
        )
        output = completion.output_digest()
        predicate = CompletionPredicate(
            **common,
            prompt_digest=token_digest([]),
            finish_reason=finish,
            sampling=sampling_of(canonical),
            finished=utc_now(),
        )
        return CompletionResult(
            receipt=sign_completion(output, predicate, key),
            predicate=predicate,
            output_digest=output,
            completion=completion,
        )


def _choice(kind: str, answer: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]], str]:
    """The first choice's text, tool calls and finish reason (``n`` is 1)."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ExecutionError("the upstream's answer has no choice")
    choice = choices[0]
    finish = choice.get("finish_reason") or "stop"
    if kind == "text_completion":
        return str(choice.get("text") or ""), [], str(finish)
    message = choice.get("message") or {}
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise ExecutionError("the upstream's tool_calls is not a list")
    return str(message.get("content") or ""), [dict(c) for c in calls], str(finish)


def _vectors(answer: Mapping[str, Any]) -> list[np.ndarray[Any, np.dtype[np.float32]]]:
    data = answer.get("data")
    if not isinstance(data, list) or not data:
        raise ExecutionError("the upstream's embedding answer has no data")
    ordered = sorted(data, key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
    try:
        return [np.asarray(d["embedding"], dtype=np.float32).reshape(-1) for d in ordered]
    except (KeyError, TypeError, ValueError) as exc:
        raise ExecutionError("the upstream's embeddings are not number lists") from exc


def _merge_call(calls: dict[int, dict[str, Any]], call: Mapping[str, Any]) -> None:
    index = int(call.get("index", 0))
    merged = calls.setdefault(index, {"function": {"name": "", "arguments": ""}})
    for name in ("id", "type"):
        if call.get(name) is not None:
            merged[name] = call[name]
    function = call.get("function") or {}
    merged["function"]["name"] += function.get("name") or ""
    merged["function"]["arguments"] += function.get("arguments") or ""
