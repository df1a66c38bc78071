"""The OpenAI-compatible API's request bodies and answers, described for the coordinator's
OpenAPI document (the shared headers and operations are in :mod:`veriml.coordinator.schemas`).

The models say what the coordinator accepts, no more: where the coordinator refuses a value
(``n`` other than 1, penalties other than 0, a ``response_format`` other than text), the
schema does too, so a generated client cannot build a request that is refused for its shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from veriml.coordinator.schemas import (
    EPOCH,
    IDEMPOTENCY,
    LOG_SIZE,
    PAYMENT,
    POLICY,
    SIGNATURE_HEADERS,
    TOO_LARGE,
    Policy,
    operation,
)
from veriml.core.completion import MAX_SEED
from veriml.protocol.openai_requests import MAX_STOP
from veriml.protocol.openapi import JSON, PROBLEM, Problem, Responses, Shape, json_body, ref

__all__ = [
    "MODELS",
    "OPENAI_CHAT",
    "OPENAI_COMPLETION",
    "OPENAI_EMBEDDING",
    "ChatCompletionRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "OpenAIError",
]


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
        "description": TOO_LARGE,
        "content": {JSON: error, PROBLEM: {"schema": ref(Problem)}},
    }
    success: dict[str, Any] = {JSON: {"schema": {"type": "object"}}}
    if streams:
        success["text/event-stream"] = {"schema": {"type": "string"}}
    answers["200"] = {"content": success}
    return operation(
        json_body(model, what),
        [IDEMPOTENCY, POLICY, EPOCH, LOG_SIZE, PAYMENT, *SIGNATURE_HEADERS],
        answers,
    )


OPENAI_CHAT: Final = _openai(ChatCompletionRequest, "OpenAI's chat request", streams=True)
OPENAI_COMPLETION: Final = _openai(CompletionRequest, "OpenAI's completion request", streams=True)
OPENAI_EMBEDDING: Final = _openai(EmbeddingRequest, "OpenAI's embedding request", streams=False)


MODELS: Final[tuple[type[BaseModel], ...]] = (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIError,
)
"""The OpenAI component schemas of the coordinator's document."""
