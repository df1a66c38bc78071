"""The wire formats as JSON Schema, for the services' OpenAPI documents (OpenAPI 3.1).

The coordinator's and the node's routes read their bodies as raw bytes on purpose: a request
signature covers the exact bytes (docs/network.md, "Signed requests"), and the formats' own
parsers (:class:`~veriml.core.dsse.Envelope`, :func:`~veriml.core.tensors.tensor_from_json`,
...) check them with evidence. The pydantic models here never parse a request: they only
*describe* the bodies, so ``/docs`` can send requests and generated clients are typed. Tests
hold them to what the SDK, the nodes and the coordinator really send
(``tests/unit/coordinator/test_openapi_bodies.py``, ``tests/unit/node/
test_openapi_job_body.py``) and schemathesis holds the servers to the documents
(``tests/integration/test_schemathesis.py``).

This module has the shapes the coordinator and the nodes share (problem details, DSSE
envelopes, tensors, the job body) and the helpers that put schemas into an OpenAPI document;
the coordinator's own bodies are in ``veriml.coordinator.schemas``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, JsonValue
from pydantic.json_schema import models_json_schema

from veriml.core.tensors import SUPPORTED_DTYPES
from veriml.protocol.jobs import JOB_TYPE
from veriml.protocol.messages import HEARTBEAT_TYPE, NODE_DESCRIPTOR_TYPE

__all__ = [
    "BASE64_PATTERN",
    "JSON",
    "PROBLEM",
    "REF",
    "Base64",
    "Digest",
    "DsseEnvelope",
    "HeartbeatEnvelope",
    "JobEnvelope",
    "JobRequest",
    "NodeDescriptorEnvelope",
    "Problem",
    "Responses",
    "Shape",
    "Tensor",
    "complete_document",
    "component_schemas",
    "header",
    "json_body",
    "problems",
    "ref",
]

REF: Final = "#/components/schemas/{model}"
JSON: Final = "application/json"
PROBLEM: Final = "application/problem+json"

Responses = dict[int | str, dict[str, Any]]
"""An operation's ``responses``, by status (as text: OpenAPI's keys, which merge with
FastAPI's own)."""

BASE64_PATTERN: Final = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
Base64 = Annotated[str, Field(pattern=BASE64_PATTERN)]
"""Standard base64 (RFC 4648 §4), padded."""
Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$", examples=["sha256:" + "ab" * 32])]
"""A digest as veriml writes it: ``sha256:<64 lower-case hex>``."""


class Shape(BaseModel):
    """A body's description: members beyond the declared ones are refused, as the parsers
    refuse them."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Problem(BaseModel):
    """RFC 9457 problem details (``application/problem+json``); extension members carry the
    evidence (``check``, ``error``, expected and calculated digests, the member at fault)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = Field(examples=["https://veriml.dev/problems/bad-request"])
    title: str
    status: int = Field(ge=100, le=599)
    detail: str
    check: str | None = Field(default=None, description="which check failed, when one did")
    error: str | None = Field(default=None, description="the veriml error class")


class DsseSignature(Shape):
    keyid: str = Field(default="", description="veriml key id of the signer (may be empty)")
    sig: Base64


class DsseEnvelope(Shape):
    """A DSSE envelope (https://github.com/secure-systems-lab/dsse/blob/master/envelope.md);
    the payload is RFC 8785 JSON whose type ``payloadType`` names."""

    payloadType: str  # DSSE's own member name
    payload: Base64
    signatures: list[DsseSignature] = Field(min_length=1)


def _payload_type(value: str) -> Any:
    """A ``payloadType`` that must be ``value`` (the one the message is signed under)."""
    return Field(json_schema_extra={"const": value})


class NodeDescriptorEnvelope(DsseEnvelope):
    """A node descriptor signed by the node (docs/network.md, "Node descriptor")."""

    payloadType: str = _payload_type(NODE_DESCRIPTOR_TYPE)


class HeartbeatEnvelope(DsseEnvelope):
    """A heartbeat signed by the node (docs/network.md, "Heartbeat")."""

    payloadType: str = _payload_type(HEARTBEAT_TYPE)


class JobEnvelope(DsseEnvelope):
    """A job signed by the coordinator (docs/network.md, "Job")."""

    payloadType: str = _payload_type(JOB_TYPE)


class Tensor(Shape):
    """A tensor as JSON (docs/formats.md): ``dtype``, ``shape`` and exactly one of ``data``
    (nested lists, row-major) and ``b64`` (little-endian C-order bytes, base64)."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["data"]}, {"required": ["b64"]}]}
    )

    dtype: str = Field(json_schema_extra={"enum": list[JsonValue](sorted(SUPPORTED_DTYPES))})
    shape: list[Annotated[int, Field(ge=0)]] = Field(max_length=32)
    data: Any = Field(default=None, description="nested lists of numbers (or booleans)")
    b64: Base64 | None = None


class CompletionClaim(Shape):
    """The completion a ``prefill`` job checks: its receipt and token ids."""

    receipt: DsseEnvelope
    prompt_tokens: list[Annotated[int, Field(ge=0)]]
    completion_tokens: list[Annotated[int, Field(ge=0)]]


class JobRequest(Shape):
    """``POST /v1/jobs`` (docs/network.md, "Job"): the signed job, and the tensors whose
    digests it signs (ONNX) or the canonical request whose digest it signs (LLM jobs), plus
    the completion a ``prefill`` job checks."""

    job: JobEnvelope
    inputs: dict[str, Tensor] = Field(default_factory=dict)
    request: dict[str, Any] | None = Field(
        default=None, description="an LLM job's canonical request (docs/llm.md)"
    )
    completion: CompletionClaim | None = None


SHARED: Final[tuple[type[BaseModel], ...]] = (Problem,)


# -- OpenAPI fragments -----------------------------------------------------------------------


def ref(model: type[BaseModel] | str) -> dict[str, str]:
    """A ``$ref`` to a component schema."""
    name = model if isinstance(model, str) else model.__name__
    return {"$ref": REF.format(model=name)}


def json_body(
    model: type[BaseModel], description: str, *, media_type: str = JSON
) -> dict[str, Any]:
    """A required request body of ``media_type`` described by ``model``."""
    return {
        "required": True,
        "description": description,
        "content": {media_type: {"schema": ref(model)}},
    }


def header(name: str, description: str, *, required: bool = False, **schema: Any) -> dict[str, Any]:
    """A request header parameter; ``schema`` members default to a string's."""
    return {
        "name": name,
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string", **schema},
    }


def problems(statuses: Mapping[int, str]) -> Responses:
    """Responses of ``status: description``, each an RFC 9457 problem (keyed by the status
    as text, as OpenAPI's ``responses`` are, so they merge with FastAPI's own)."""
    return {
        str(status): {"description": text, "content": {PROBLEM: {"schema": ref(Problem)}}}
        for status, text in statuses.items()
    }


def component_schemas(models: Iterable[type[BaseModel]]) -> dict[str, Any]:
    """The JSON Schemas of ``models`` and of every model they use, by name, with references
    into ``#/components/schemas`` (OpenAPI 3.1 takes JSON Schema 2020-12 as it is)."""
    _, top = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    defs: dict[str, Any] = top.get("$defs", {})
    return defs


_FASTAPI_VALIDATION = REF.format(model="HTTPValidationError")


def complete_document(
    document: dict[str, Any], models: Iterable[type[BaseModel]]
) -> dict[str, Any]:
    """``document`` with the schemas of ``models`` among its components, and FastAPI's own
    validation answers (422, ``HTTPValidationError``) described as what the services send
    instead: a problem."""
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components.update(component_schemas([*SHARED, *models]))
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422")
            content = (answer or {}).get("content", {})
            if content.get(JSON, {}).get("schema", {}).get("$ref") == _FASTAPI_VALIDATION:
                answer["content"] = {PROBLEM: {"schema": ref(Problem)}}
                answer["description"] = "a parameter that does not validate (a problem)"
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return document
