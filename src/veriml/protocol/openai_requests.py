"""OpenAI request bodies as veriml accepts them: validation, defaults and refusals, giving the
canonical request whose digest names an LLM computation (docs/llm.md, "Canonical request and
digests"; docs/openai-api.md for the accepted parameters).

This is API policy, kept apart from the receipt format in :mod:`veriml.core.completion`: the
canonical request holds every field that can change the output, defaults filled in and nothing
else, so two nodes given the same canonical request and model must produce the same tokens.
Every refusal is a :class:`~veriml.errors.FormatError` whose ``param`` evidence names the field
at fault (the coordinator turns it into an OpenAI error object with that ``param``).
Unsupported parameters are refused, never silently ignored, since ignoring one would sign an
answer to a question that was not asked.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from typing import Any, Final, cast, get_args

from veriml.core.completion import MAX_SEED, RequestKind
from veriml.core.digest import Digest
from veriml.core.errors import FormatError, LimitExceededError

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "MAX_STOP",
    "ROLES",
    "canonical_request",
    "check_canonical",
]

DEFAULT_MAX_TOKENS: Final = 256
MAX_STOP: Final = 4  # OpenAI's limit on stop sequences
ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool"})
_MESSAGE_KEYS: Final = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})
# Members that change the transport or the bookkeeping, never the tokens.
_TRANSPORT: Final = frozenset(
    {"model", "stream", "stream_options", "user", "n", "veriml", "metadata", "store"}
)
_SAMPLING_KEYS: Final = (
    "seed",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
)
_CHAT_KEYS: Final = frozenset(
    {"messages", "tools", "tool_choice", "response_format", "parallel_tool_calls", "logprobs"}
    | set(_SAMPLING_KEYS)
)
_TEXT_KEYS: Final = frozenset(
    {"prompt", "echo", "logprobs", "suffix", "best_of"} | set(_SAMPLING_KEYS)
)
_EMBEDDING_KEYS: Final = frozenset({"input", "encoding_format", "dimensions"})


def _bad(param: str, message: str, **evidence: Any) -> FormatError:
    return FormatError(message, param=param, **evidence)


def _number(body: Mapping[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(key, f"{key} must be a finite number", value=value)
    try:
        number = float(value)
    except OverflowError:  # an integer beyond every double
        number = math.inf
    if not math.isfinite(number):
        raise _bad(key, f"{key} must be a finite number", value=value)
    return number


def _integer(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(key, f"{key} must be an integer", value=value)
    return value


def _tool_calls(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _bad(where, "tool_calls must be a list")
    out = []
    for i, call in enumerate(value):
        fn = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(call, dict)
            or call.get("type", "function") != "function"
            or not isinstance(call.get("id"), str)
            or not isinstance(fn, dict)
            or not isinstance(fn.get("name"), str)
            or not isinstance(fn.get("arguments"), str)
        ):
            raise _bad(
                f"{where}[{i}]",
                "a tool call is {id, type: function, function: {name, arguments: str}}",
            )
        out.append(
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": fn["name"], "arguments": fn["arguments"]},
            }
        )
    return out


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _bad("messages", "messages must be a non-empty list")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(where, "each message is an object")
        unknown = sorted(set(message) - _MESSAGE_KEYS)
        if unknown:
            raise _bad(f"{where}.{unknown[0]}", "unsupported message member")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or object is unhashable
            raise _bad(f"{where}.role", "unknown message role", role=role, roles=sorted(ROLES))
        content = message.get("content")
        clean: dict[str, Any] = {"role": role}
        if role == "assistant" and message.get("tool_calls"):
            clean["tool_calls"] = _tool_calls(message["tool_calls"], f"{where}.tool_calls")
            if content is not None and not isinstance(content, str):
                raise _bad(f"{where}.content", "message content must be a string or null")
        elif not isinstance(content, str):
            raise _bad(f"{where}.content", "message content must be a string")
        clean["content"] = content
        for key in ("name", "tool_call_id"):
            if message.get(key) is not None:
                if not isinstance(message[key], str):
                    raise _bad(f"{where}.{key}", f"{key} must be a string")
                clean[key] = message[key]
        if role == "tool" and "tool_call_id" not in clean:
            raise _bad(f"{where}.tool_call_id", "a tool message needs tool_call_id")
        out.append(clean)
    return out


def _tools(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _bad("tools", "tools must be a list")
    out = []
    for i, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(fn, dict)
            or not isinstance(fn.get("name"), str)
            or not fn["name"]
        ):
            raise _bad(f"tools[{i}]", "a tool is {type: function, function: {name, ...}}")
        clean: dict[str, Any] = {"name": fn["name"]}
        for key, kind in (("description", str), ("parameters", dict), ("strict", bool)):
            if fn.get(key) is not None:
                if not isinstance(fn[key], kind):
                    raise _bad(f"tools[{i}].function.{key}", f"{key} has the wrong type")
                clean[key] = fn[key]
        out.append({"type": "function", "function": clean})
    return out


def _tool_choice(value: Any, tools: list[dict[str, Any]] | None) -> Any:
    if value is None:
        return None
    if value in ("none", "auto", "required"):
        return value
    fn = value.get("function") if isinstance(value, dict) else None
    if (
        isinstance(value, dict)
        and value.get("type") == "function"
        and isinstance(fn, dict)
        and isinstance(fn.get("name"), str)
    ):
        if not any(t["function"]["name"] == fn["name"] for t in tools or ()):
            raise _bad("tool_choice", "tool_choice names a tool not in tools", name=fn["name"])
        return {"type": "function", "function": {"name": fn["name"]}}
    raise _bad("tool_choice", 'tool_choice is "none", "auto", "required" or a function')


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list)
        or len(items) > MAX_STOP
        or not all(isinstance(s, str) and s for s in items)
    ):
        raise _bad("stop", f"stop is a non-empty string or a list of up to {MAX_STOP} of them")
    return list(items)


def _refuse_unknown(body: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for key in sorted(body):
        if key not in allowed and key not in _TRANSPORT:
            raise _bad(key, "unsupported parameter")


def _sampling(body: Mapping[str, Any], seed: int | None, max_context: int | None) -> dict[str, Any]:
    n = _integer(body, "n")
    if n is not None and n != 1:
        raise _bad("n", "only n = 1 is supported", value=n)
    temperature = _number(body, "temperature", 1.0)
    if not 0.0 <= temperature <= 2.0:
        raise _bad("temperature", "temperature must be in [0, 2]", value=temperature)
    top_p = _number(body, "top_p", 1.0)
    if not 0.0 < top_p <= 1.0:
        raise _bad("top_p", "top_p must be in (0, 1]", value=top_p)
    top_k = _integer(body, "top_k")
    if top_k is not None and top_k < 0:
        raise _bad("top_k", "top_k must be >= 0 (0: no limit)", value=top_k)
    for key in ("presence_penalty", "frequency_penalty"):
        if _number(body, key, 0.0) != 0.0:
            raise _bad(key, f"{key} is not supported (must be 0)", value=body[key])
    if body.get("logit_bias"):
        raise _bad("logit_bias", "logit_bias is not supported")
    max_tokens = _integer(body, "max_tokens")
    newer = _integer(body, "max_completion_tokens")
    if max_tokens is not None and newer is not None and max_tokens != newer:
        raise _bad("max_completion_tokens", "max_tokens and max_completion_tokens disagree")
    param = "max_tokens" if max_tokens is not None else "max_completion_tokens"
    limit = max_tokens if max_tokens is not None else newer
    if limit is None:
        limit = DEFAULT_MAX_TOKENS if max_context is None else min(DEFAULT_MAX_TOKENS, max_context)
    if limit < 1:
        raise _bad(param, f"{param} must be >= 1", value=limit)
    if max_context is not None and limit > max_context:
        raise LimitExceededError(
            f"{param} exceeds the model's context", param=param, value=limit, limit=max_context
        )
    chosen = _integer(body, "seed")
    if chosen is None:
        # The node's choice, recorded in the canonical request (and so in the receipt).
        chosen = seed if seed is not None else secrets.randbits(53)
    if not 0 <= chosen <= MAX_SEED:
        raise _bad("seed", "seed must be in [0, 2^53)", value=chosen)
    return {
        "seed": chosen,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k or 0,
        "max_tokens": limit,
        "stop": _stop(body.get("stop")),
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "logit_bias": {},
    }


def canonical_request(
    kind: RequestKind,
    model: Digest,
    body: Mapping[str, Any],
    *,
    seed: int | None = None,
    max_context: int | None = None,
) -> dict[str, Any]:
    """The canonical form of the OpenAI request ``body`` for ``model`` (docs/llm.md).

    Validates the body (:class:`FormatError` with ``param``), fills defaults (OpenAI's:
    temperature 1, top_p 1; veriml's: top_k 0, max_tokens :data:`DEFAULT_MAX_TOKENS`), drops
    ``stream``, ``stream_options``, ``user``, ``n`` and the ``model`` name (the digest replaces
    it). ``seed`` fills a missing seed (the node's choice; a random one when neither is given);
    ``max_context``, when known, refuses a ``max_tokens`` above it with
    :class:`LimitExceededError`.

    >>> canonical_request("text_completion", digest, {"prompt": "Hi", "temperature": 0},
    ...                   seed=7)["seed"]  # doctest: +SKIP
    7
    """
    if kind not in get_args(RequestKind):
        raise _bad("type", "unknown request kind", kind=kind)
    if not isinstance(body, Mapping):
        raise _bad("body", "a request body is a JSON object")
    out: dict[str, Any] = {"type": kind, "model": model.to_text()}
    if kind == "embedding":
        _refuse_unknown(body, _EMBEDDING_KEYS)
        if body.get("dimensions") is not None:
            raise _bad("dimensions", "dimensions is not supported")
        if body.get("encoding_format", "float") not in ("float", "base64"):
            raise _bad("encoding_format", 'encoding_format is "float" or "base64"')
        inputs = body.get("input")
        items = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(items, list) or not items or not all(isinstance(s, str) for s in items):
            raise _bad("input", "input is a string or a non-empty list of strings")
        out["input"] = list(items)
        return out
    if kind == "chat.completion":
        _refuse_unknown(body, _CHAT_KEYS)
        out["messages"] = _messages(body.get("messages"))
        out["tools"] = _tools(body.get("tools"))
        out["tool_choice"] = _tool_choice(body.get("tool_choice"), out["tools"])
        response_format = body.get("response_format")
        if response_format is not None and response_format != {"type": "text"}:
            raise _bad("response_format", 'only response_format {"type": "text"} is supported')
        out["response_format"] = {"type": "text"}
    else:
        _refuse_unknown(body, _TEXT_KEYS)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise _bad("prompt", "prompt must be a string")
        out["prompt"] = prompt
        for key, default in (("echo", False), ("suffix", None), ("best_of", 1)):
            if body.get(key, default) not in (default, None):
                raise _bad(key, f"{key} is not supported")
    if body.get("logprobs"):
        raise _bad("logprobs", "logprobs is not supported")
    out.update(_sampling(body, seed, max_context))
    return out


def check_canonical(request: Mapping[str, Any]) -> dict[str, Any]:
    """Check that ``request`` is a canonical request (as a node receives it) and return it.

    Recomputes the canonical form from the request itself; any difference (a missing default,
    an extra member, an invalid value) is a :class:`FormatError`.
    """
    kind, model = request.get("type"), request.get("model")
    if kind not in get_args(RequestKind):
        raise _bad("type", "unknown request kind", kind=kind)
    if not isinstance(model, str):
        raise _bad("model", "a canonical request names its model by digest")
    body = {k: v for k, v in request.items() if k not in ("type", "model")}
    # Canonical values are fixed points of validation, so a canonical request maps to itself.
    again = canonical_request(cast(RequestKind, kind), Digest.from_text(model), body)
    if again != dict(request):
        raise FormatError("request is not in canonical form", param="request")
    return again
