"""The coordinator's request bodies, headers and answers, described for its OpenAPI document.

The routes read raw bytes on purpose (a request signature covers the exact bytes: see
:func:`veriml.coordinator.auth.read_signed_body`), so FastAPI never parses a body; each route
declares its body here instead, as ``openapi_extra``: a ``$ref`` to a component schema made
from a pydantic model that only *describes* the body, the headers the route reads from
``request.headers``, and the answers that matter (RFC 9457 problems, or OpenAI error objects
on the OpenAI routes, whose bodies are in :mod:`veriml.coordinator.llm.schemas`).
``create_app`` adds the component schemas (:data:`MODELS`, and the OpenAI ones) to the
document (:func:`veriml.protocol.openapi.complete_document`). Shapes the nodes share (DSSE
envelopes, tensors, problems) are in :mod:`veriml.protocol.openapi`.

The models say what the coordinator accepts, no more: where the coordinator refuses a value
(``n`` other than 1, penalties other than 0, a ``response_format`` other than text), the
schema does too, so a generated client cannot build a request that is refused for its shape.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, Field

from veriml.protocol.accounts import LEDGER_REQUEST_TYPE
from veriml.protocol.openapi import (
    BASE64_PATTERN,
    JSON,
    Digest,
    DsseEnvelope,
    HeartbeatEnvelope,
    NodeDescriptorEnvelope,
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
    "EPOCH",
    "HEARTBEAT",
    "IDEMPOTENCY",
    "LEDGER_MOVE",
    "LOG_SIZE",
    "MODELS",
    "PAYMENT",
    "POLICY",
    "PUBLISH_MODEL",
    "REGISTER_NODE",
    "SIGNATURE_HEADERS",
    "TOO_LARGE",
    "DisputeChallenge",
    "DisputeReveal",
    "DisputeTensors",
    "InferenceRequest",
    "LedgerRequestEnvelope",
    "Policy",
    "PrefillChallenge",
    "dispute_move",
    "operation",
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


def operation(
    body: dict[str, Any], parameters: list[dict[str, Any]], answers: Responses
) -> dict[str, Any]:
    return {"requestBody": body, "parameters": parameters, "responses": answers}


TOO_LARGE = "the body is over the limit"

CREATE_INFERENCE: Final = operation(
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
            413: TOO_LARGE,
            422: "inputs that do not decode or do not fit the model",
            502: "a node refused the job",
            503: "too few live nodes of distinct operators, or too few verified answers",
        }
    ),
)


PUBLISH_MODEL: Final = operation(
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
                413: TOO_LARGE,
            }
        ),
    },
)

_SIGNED_MESSAGE = {
    400: "a body that is not a DSSE envelope",
    403: "a forged, unsigned or stale message",
    413: TOO_LARGE,
}

REGISTER_NODE: Final = operation(
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

HEARTBEAT: Final = operation(
    json_body(HeartbeatEnvelope, "the heartbeat, signed by the registered node key"),
    [],
    {
        "200": {"content": {JSON: {"schema": ref(HeartbeatAccepted)}}},
        **problems(
            _SIGNED_MESSAGE | {404: "no such node", 409: "not newer than the node's last heartbeat"}
        ),
    },
)

LEDGER_MOVE: Final = operation(
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
                413: TOO_LARGE,
            }
        ),
    },
)

_DISPUTE_ANSWERS = {
    400: "a malformed body",
    403: "an unsigned request, or another account's signature",
    404: "no such dispute",
    413: TOO_LARGE,
    503: "this coordinator hosts no disputes (it is starting)",
}

CREATE_DISPUTE: Final = operation(
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
    return operation(
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
