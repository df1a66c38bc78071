"""The coordinator's request bodies, headers and answers, described for its OpenAPI document.

The routes read raw bytes on purpose (a request signature covers the exact bytes: see
:func:`veriml.coordinator.auth.read_signed_body`), so FastAPI never parses a body; each route
declares its body here instead, as ``openapi_extra``: a ``$ref`` to a component schema made
from a pydantic model that only *describes* the body, the headers the route reads from
``request.headers``, and the answers that matter (RFC 9457 problems, or OpenAI error objects
on the OpenAI routes). ``create_app`` adds the component schemas (:data:`MODELS`) to the
document (:func:`veriml.protocol.openapi.complete_document`). Shapes the nodes share (DSSE
envelopes, tensors, problems) are in :mod:`veriml.protocol.openapi`.

The models say what the coordinator accepts, no more: where the coordinator refuses a value
(``n`` other than 1, penalties other than 0, a ``response_format`` other than text), the
schema does too, so a generated client cannot build a request that is refused for its shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from veriml.core.completion import MAX_SEED
from veriml.protocol.accounts import LEDGER_REQUEST_TYPE
from veriml.protocol.openai_requests import MAX_STOP
from veriml.protocol.openapi import (
    BASE64_PATTERN,
    JSON,
    PROBLEM,
    Digest,
    DsseEnvelope,
    HeartbeatEnvelope,
    NodeDescriptorEnvelope,
    Problem,
    Responses,
    Shape,
    Tensor,
    header,
    json_body,
    problems,
    ref,
)

__all__ = [
    "CREATE_DISPUTE",
    "CREATE_INFERENCE",
    "HEARTBEAT",
    "LEDGER_MOVE",
    "MODELS",
    "OPENAI_CHAT",
    "OPENAI_COMPLETION",
    "OPENAI_EMBEDDING",
    "PUBLISH_MODEL",
    "REGISTER_NODE",
    "ChatCompletionRequest",
    "CompletionRequest",
    "DisputeChallenge",
    "DisputeReveal",
    "DisputeTensors",
    "EmbeddingRequest",
    "InferenceRequest",
    "LedgerRequestEnvelope",
    "OpenAIError",
    "PrefillChallenge",
    "dispute_move",
]


# -- POST /v1/inferences ---------------------------------------------------------------------

POLICY_PATTERN: Final = (
    r"^(?:none|prefill|quorum:[0-9]{1,2}/[0-9]{1,2}|spot:[0-9](?:\.[0-9]+)?"
    r"|optimistic:[0-9]{1,7}[smhd])(?:,(?:bitwise|tolerance))?$"
)
"""The policy grammar of :meth:`veriml.protocol.policy.Policy.parse` (a test holds the two
together); the numbers' ranges are checked by the coordinator (400)."""

Policy = Annotated[
    str,
    Field(
        max_length=64,
        pattern=POLICY_PATTERN,
        description="none, quorum:N/K, spot:P, optimistic:W or prefill, with ,tolerance "
        "after quorum or spot (docs/verification.md)",
        examples=["none", "quorum:3/2", "spot:0.1,tolerance"],
    ),
]


class InferenceRequest(Shape):
    """``POST /v1/inferences`` (docs/network.md, "Inference request and answer")."""

    model: str = Field(
        min_length=1,
        max_length=512,
        description="a hub name, name@version or sha256 digest of an ONNX model",
        examples=["acme/iris", "acme/iris@1.0.0"],
    )
    inputs: dict[str, Tensor] = Field(description="the model's inputs by name")
    policy: Policy = "none"


# -- the OpenAI-compatible API ---------------------------------------------------------------


class VerimlExtension(Shape):
    """veriml's member of an OpenAI body (the OpenAI SDK's ``extra_body``)."""

    policy: Policy


class FunctionCall(Shape):
    name: str
    arguments: str = Field(description="the arguments as a JSON text")


class ToolCall(Shape):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Shape):
    """One message; ``content`` is text (null only beside an assistant's ``tool_calls``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                {  # no text: an assistant's tool calls
                    "if": {
                        "not": {
                            "required": ["content"],
                            "properties": {"content": {"type": "string"}},
                        }
                    },
                    "then": {
                        "required": ["role", "tool_calls"],
                        "properties": {
                            "role": {"const": "assistant"},
                            "tool_calls": {"type": "array", "minItems": 1},
                        },
                    },
                },
                {  # a tool's answer names the call it answers
                    "if": {"required": ["role"], "properties": {"role": {"const": "tool"}}},
                    "then": {
                        "required": ["tool_call_id"],
                        "properties": {"tool_call_id": {"type": "string"}},
                    },
                },
            ]
        }
    )

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = Field(default=None, description="required on a tool message")


class FunctionDefinition(Shape):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = Field(default=None, description="a JSON Schema")
    strict: bool | None = None


class Tool(Shape):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Shape):
    name: str


class ToolChoiceFunction(Shape):
    type: Literal["function"]
    function: NamedFunction


class ResponseFormat(Shape):
    type: Literal["text"] = Field(description="only text: veriml compares every token")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    include_usage: bool | None = None


Zero = Annotated[float, Field(ge=0, le=0, description="not supported: 0 only")]


class _Generation(Shape):
    """What chat and text completions share: sampling, transport and veriml's member."""

    model: str = Field(
        min_length=1,
        description="a GGUF model's hub name, name@version or digest; or relay:NAME",
        examples=["smollm2", "relay:gpt-4o-mini"],
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, description="0: no limit (veriml's)")
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)]
        | None
    ) = None
    presence_penalty: Zero | None = None
    frequency_penalty: Zero | None = None
    logit_bias: Annotated[dict[str, float], Field(max_length=0)] | None = Field(
        default=None, description="not supported: empty only"
    )
    n: Annotated[int, Field(ge=1, le=1)] | None = Field(default=None, description="1 only")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    veriml: VerimlExtension | None = None


class ChatCompletionRequest(_Generation):
    """``POST /v1/chat/completions``: OpenAI's body, with veriml's ``veriml`` member."""

    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceFunction | None = None
    response_format: ResponseFormat | None = None
    parallel_tool_calls: bool | None = None
    logprobs: Literal[False] | None = Field(default=None, description="not supported")


class CompletionRequest(_Generation):
    """``POST /v1/completions``: OpenAI's body, with veriml's ``veriml`` member."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: Literal[False] | None = None
    logprobs: Literal[0, False] | None = Field(default=None, description="not supported")
    suffix: None = None
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None


class EmbeddingRequest(Shape):
    """``POST /v1/embeddings``: OpenAI's body, with veriml's ``veriml`` member."""

    model: str = Field(min_length=1, examples=["smollm2"])
    input: str | Annotated[list[str], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: None = Field(default=None, description="not supported")
    user: str | None = None
    veriml: VerimlExtension | None = None


class OpenAIErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """OpenAI's error object (docs/openai-api.md, "Errors")."""

    model_config = ConfigDict(frozen=True)

    error: OpenAIErrorDetail


# -- signed messages: nodes and the ledger ---------------------------------------------------


class LedgerRequestEnvelope(DsseEnvelope):
    """An account's signed ledger request (docs/ledger.md, "Authority")."""

    payloadType: str = Field(json_schema_extra={"const": LEDGER_REQUEST_TYPE})


class NodeRegistered(Shape):
    node_id: Digest
    log_index: int = Field(ge=0)


class HeartbeatAccepted(Shape):
    node_id: str
    heartbeat_interval: float


class LedgerMove(Shape):
    log_index: int = Field(ge=0)
    account: Digest
    state: dict[str, Any] = Field(description="the account's state after the move")


# -- disputes --------------------------------------------------------------------------------


class TraceCommitment(Shape):
    root: Digest
    size: int = Field(ge=1)


class DisputeChallenge(Shape):
    """``POST /v1/disputes``: a challenge of a node's answer with the challenger's trace
    (docs/verification.md, "Opening a dispute")."""

    inference: str = Field(min_length=1, max_length=200)
    node: str = Field(min_length=1, max_length=256)
    trace: TraceCommitment
    outputs: dict[str, Digest] = Field(min_length=1)
    mode: Literal["bitwise", "tolerance"] | None = None
    authorization: LedgerRequestEnvelope = Field(
        description="the challenger's signed challenge request for the rules' bond"
    )


class PrefillChallenge(Shape):
    """``POST /v1/disputes``: an LLM completion challenged by a failed prefill check."""

    inference: str = Field(min_length=1, max_length=200)
    node: str = Field(min_length=1, max_length=256)
    kind: Literal["prefill"]
    authorization: LedgerRequestEnvelope


Hash = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]


class TraceEntry(Shape):
    node: int = Field(ge=0)
    op_type: str
    name: str
    inputs: list[str]
    output: str
    digest: Digest


class DisputeReveal(Shape):
    """``POST /v1/disputes/{id}/reveal``: the trace entry asked for and its inclusion proof."""

    index: int = Field(ge=0)
    entry: TraceEntry
    proof: list[Hash] = Field(max_length=64)
    root: Digest | None = None
    size: int | None = Field(default=None, ge=1)


class DisputeTensors(Shape):
    """``POST /v1/disputes/{id}/tensors``: the recorded tensors asked for."""

    tensors: dict[str, Tensor] = Field(min_length=1)


MODELS: Final[tuple[type[BaseModel], ...]] = (
    InferenceRequest,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIError,
    NodeDescriptorEnvelope,
    HeartbeatEnvelope,
    NodeRegistered,
    HeartbeatAccepted,
    LedgerRequestEnvelope,
    LedgerMove,
    DisputeChallenge,
    PrefillChallenge,
    DisputeReveal,
    DisputeTensors,
)
"""The component schemas of the coordinator's document (beyond the shared ones)."""


# -- headers ---------------------------------------------------------------------------------

_SIGNED = "RFC 9421 request signature (docs/network.md, 'Signed requests')"
SIGNATURE_HEADERS: Final = [
    header("X-Veriml-Key", f"{_SIGNED}: base64 of the signer's PEM public key"),
    header(
        "Content-Digest",
        f"{_SIGNED}: RFC 9530 digest of the body, sha-256=:<base64>:",
        examples=["sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"],
    ),
    header("Signature-Input", f"{_SIGNED}: the covered components and parameters"),
    header("Signature", f"{_SIGNED}: the signature, veriml=:<base64>:"),
]
IDEMPOTENCY: Final = header(
    "Idempotency-Key",
    "the request id; a retry with it returns the stored answer",
    pattern=r"^[A-Za-z0-9._:~+/=-]{1,200}$",
)
EPOCH: Final = header(
    "X-Veriml-Epoch",
    "the randomness epoch the request draws from (the current one or the one before)",
    pattern=r"^[0-9]{1,15}$",
)
LOG_SIZE: Final = header(
    "X-Veriml-Log-Size",
    "the size of the client's last checkpoint: the answer proves consistency from it",
    pattern=r"^[0-9]{1,19}$",
)
PAYMENT: Final = header(
    "X-Veriml-Payment",
    "base64 of the client's signed payment ledger request (a DSSE envelope), when the "
    "rules charge fees",
    maxLength=16 * 1024,
    pattern=BASE64_PATTERN,
)
POLICY: Final = header(
    "X-Veriml-Policy",
    "the verification policy (or the body's veriml.policy; both must agree)",
    maxLength=128,
)
PUBLISHER_KEY: Final = header(
    "X-Veriml-Publisher-Key",
    "base64 of the publisher's PEM public key (EC); the request is signed by it",
)


# -- operations ------------------------------------------------------------------------------


def _operation(
    body: dict[str, Any], parameters: list[dict[str, Any]], answers: Responses
) -> dict[str, Any]:
    return {"requestBody": body, "parameters": parameters, "responses": answers}


_TOO_LARGE = "the body is over the limit"

CREATE_INFERENCE: Final = _operation(
    json_body(InferenceRequest, "the model, its inputs and the verification policy"),
    [IDEMPOTENCY, EPOCH, LOG_SIZE, PAYMENT, *SIGNATURE_HEADERS],
    problems(
        {
            400: "a malformed body, policy or header",
            402: "the rules charge fees and the request carries no payment that covers them",
            403: "a request signature or payment that does not verify",
            404: "no such model",
            409: "the Idempotency-Key was used for another request, or the epoch is not "
            "the current one or the one before",
            413: _TOO_LARGE,
            422: "inputs that do not decode or do not fit the model",
            502: "a node refused the job",
            503: "too few live nodes of distinct operators, or too few verified answers",
        }
    ),
)


def _openai(model: type[BaseModel], what: str, *, streams: bool) -> dict[str, Any]:
    error = {"schema": ref(OpenAIError)}
    answers: Responses = {
        str(status): {"description": text, "content": {JSON: error}}
        for status, text in {
            400: "OpenAI error: invalid parameter, context overflow, bad JSON",
            402: "OpenAI error: no payment that covers the fees",
            403: "OpenAI error: a request signature that does not verify",
            404: "OpenAI error: unknown model (model_not_found)",
            409: "OpenAI error: the Idempotency-Key is in use, or a balance below the fees",
            502: "OpenAI error: a node refused the job, or its answer did not verify",
            503: "OpenAI error: no live node runs this model",
        }.items()
    }
    # Over the coordinator's limit before it is read: a problem; while it is read: OpenAI's.
    answers["413"] = {
        "description": _TOO_LARGE,
        "content": {JSON: error, PROBLEM: {"schema": ref(Problem)}},
    }
    success: dict[str, Any] = {JSON: {"schema": {"type": "object"}}}
    if streams:
        success["text/event-stream"] = {"schema": {"type": "string"}}
    answers["200"] = {"content": success}
    return _operation(
        json_body(model, what),
        [IDEMPOTENCY, POLICY, EPOCH, LOG_SIZE, PAYMENT, *SIGNATURE_HEADERS],
        answers,
    )


OPENAI_CHAT: Final = _openai(ChatCompletionRequest, "OpenAI's chat request", streams=True)
OPENAI_COMPLETION: Final = _openai(CompletionRequest, "OpenAI's completion request", streams=True)
OPENAI_EMBEDDING: Final = _openai(EmbeddingRequest, "OpenAI's embedding request", streams=False)

PUBLISH_MODEL: Final = _operation(
    {
        "required": True,
        "description": "the model folder as a tar stream, model.sig inside",
        "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
    },
    [PUBLISHER_KEY, *SIGNATURE_HEADERS],
    {
        "200": {
            "description": "already registered: the model",
            "content": {JSON: {"schema": {"type": "object"}}},
        },
        **problems(
            {
                400: "an unsafe or invalid archive or model, or a malformed header",
                403: "no publisher key, a request or OMS signature that does not verify, or "
                "a namespace owned by another key",
                409: "name@version is taken",
                413: _TOO_LARGE,
            }
        ),
    },
)

_SIGNED_MESSAGE = {
    400: "a body that is not a DSSE envelope",
    403: "a forged, unsigned or stale message",
    413: _TOO_LARGE,
}

REGISTER_NODE: Final = _operation(
    json_body(NodeDescriptorEnvelope, "the node descriptor, signed by the node"),
    [],
    {
        "201": {"content": {JSON: {"schema": ref(NodeRegistered)}}},
        **problems(
            _SIGNED_MESSAGE
            | {409: "the nonce was used before, or the node is bound to another operator"}
        ),
    },
)

HEARTBEAT: Final = _operation(
    json_body(HeartbeatEnvelope, "the heartbeat, signed by the registered node key"),
    [],
    {
        "200": {"content": {JSON: {"schema": ref(HeartbeatAccepted)}}},
        **problems(
            _SIGNED_MESSAGE | {404: "no such node", 409: "not newer than the node's last heartbeat"}
        ),
    },
)

LEDGER_MOVE: Final = _operation(
    json_body(LedgerRequestEnvelope, "the account's signed ledger request"),
    [],
    {
        "200": {"content": {JSON: {"schema": ref(LedgerMove)}}},
        **problems(
            {
                400: "a body that is not a signed ledger request of this operation",
                402: "a balance or stake too small",
                403: "a signature that does not verify, a stale request, or (deposits) "
                "a signer other than the rules' admin",
                409: "a request the ledger took before",
                413: _TOO_LARGE,
            }
        ),
    },
)

_DISPUTE_ANSWERS = {
    400: "a malformed body",
    403: "an unsigned request, or another account's signature",
    404: "no such dispute",
    413: _TOO_LARGE,
    503: "this coordinator hosts no disputes (it is starting)",
}

CREATE_DISPUTE: Final = _operation(
    {
        "required": True,
        "description": "a challenge with the challenger's trace, or an LLM prefill challenge",
        "content": {JSON: {"schema": {"oneOf": [ref(DisputeChallenge), ref(PrefillChallenge)]}}},
    },
    SIGNATURE_HEADERS,
    problems(
        _DISPUTE_ANSWERS
        | {
            402: "no valid bond authorization, or a balance below the bond",
            404: "no such inference, or no receipt of that node in it",
            409: "this receipt was already disputed with this claim",
            410: "the answer's challenge window has closed",
            429: "the defendant has the most open disputes a node may have",
        }
    ),
)


def dispute_move(model: type[BaseModel], what: str) -> dict[str, Any]:
    """A challenger's move in an open dispute."""
    return _operation(
        json_body(model, what),
        SIGNATURE_HEADERS,
        problems(
            _DISPUTE_ANSWERS
            | {
                409: "a move the dispute is not asking for",
                410: "the dispute is settled",
                422: "tensors that do not decode",
            }
        ),
    )


# -- reads -----------------------------------------------------------------------------------

OCTETS: Final = "application/octet-stream"
GET_MODEL: Final[Responses] = problems({404: "no such model (names reach signed models only)"})
_PRIVATE = "a private request, and not its requester asking (docs/privacy.md)"
GET_INFERENCE: Final[Responses] = problems({403: _PRIVATE, 404: "no answer with this id (yet)"})
GET_DISPUTE: Final[Responses] = problems(_DISPUTE_ANSWERS)
LEDGER_STATE: Final[Responses] = problems({404: "the log has fewer entries than size"})
GET_TENSOR: Final[Responses] = {
    "200": {
        "description": "the tensor in its canonical encoding (veriml-tensor/v1)",
        "content": {"application/vnd.veriml.tensor": {"schema": {"type": "string"}}},
    },
    **problems({400: "not a sha256 digest", 403: _PRIVATE, 404: "no such input of this request"}),
}
_BLOB: Final = {"schema": {"type": "string", "format": "binary"}}
GET_BLOB: Final[Responses] = {
    "200": {"description": "the blob", "content": {OCTETS: _BLOB}},
    "206": {"description": "the range asked for", "content": {OCTETS: _BLOB}},
    "304": {"description": "the blob has not changed (If-None-Match)"},
    **problems(
        {
            400: "not a sha256 digest",
            404: "no such blob",
            416: "a range beyond the blob's end",
        }
    ),
}
HEALTHZ: Final[Responses] = problems({503: "the database or the log does not answer"})
METRICS: Final[Responses] = {
    "200": {
        "description": "Prometheus text exposition",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}
