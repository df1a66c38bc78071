"""Completion receipts: the canonical request, output digests and the signed predicate for
LLM answers (docs/llm.md, "Canonical request and digests" and "Receipt"). Pure logic.

The canonical request holds every field that can change the output, defaults filled in and
nothing else, so its RFC 8785 digest names the computation: two nodes given the same canonical
request and model must produce the same tokens. OpenAI request bodies are validated here;
every refusal is a :class:`~veriml.core.errors.FormatError` whose ``param`` evidence names the
field at fault (the coordinator turns it into an OpenAI error object with that ``param``).
Unsupported parameters are refused, never silently ignored, since ignoring one would sign an
answer to a question that was not asked.

The receipt is an in-toto Statement (predicate type :data:`COMPLETION_PREDICATE_TYPE`) with
one subject ``completion`` whose digest is the output digest, signed in a DSSE envelope.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, cast, get_args

import numpy as np

from veriml.core.canonical import canonical_digest
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement, Subject
from veriml.core.errors import FormatError, LimitExceeded, VerificationError
from veriml.core.keys import SigningKey, VerifyingKey
from veriml.core.tensors import tensor_digest

__all__ = [
    "COMPLETION_PREDICATE_TYPE",
    "COMPLETION_SUBJECT",
    "DEFAULT_MAX_TOKENS",
    "RELAY_PREFIX",
    "CompletionPredicate",
    "RequestKind",
    "Sampling",
    "Trust",
    "canonical_request",
    "check_canonical",
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

DEFAULT_MAX_TOKENS: Final = 256
MAX_SEED: Final = 2**53 - 1
"""The largest seed: RFC 8785 writes numbers as IEEE doubles, exact only below 2**53."""
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
        raise LimitExceeded(
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
    :class:`LimitExceeded`.

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
                "completion predicate is malformed", check="predicate", reason=exc.diagnostics()
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
            "receipt payload is not a statement", check="statement", reason=exc.diagnostics()
        ) from exc
    if statement.predicate_type != COMPLETION_PREDICATE_TYPE:
        raise VerificationError(
            "receipt is not a completion receipt",
            check="predicate-type",
            expected=COMPLETION_PREDICATE_TYPE,
            got=statement.predicate_type,
        )
    if len(statement.subjects) != 1 or statement.subjects[0].name != COMPLETION_SUBJECT:
        raise VerificationError(
            "a completion receipt has exactly one subject named completion",
            check="subject",
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
