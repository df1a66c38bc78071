"""``POST /v1/inferences`` and ``GET /v1/inferences/{id}`` (docs/network.md, "Inference
request and answer"), over :class:`~veriml.coordinator.inference.service.InferenceService`.

The app's lifespan builds the service with :func:`service_over`; routes take it as
:data:`~veriml.coordinator.deps.InferenceDep`. Errors are RFC 9457 problem details through
the app's handlers, except two statuses this API sets itself: too few nodes (none live, or
every attempt failed) is **503** with ``Retry-After``, since trying again later may succeed;
a node refusing the job is **502**, the coordinator's upstream having failed. The service
reports to the app's Prometheus registry:
``veriml_inference_verdicts_total{policy,outcome}`` and
``veriml_inference_node_failures_total{reason="unavailable"|"unverified"}``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request, Response

from veriml.coordinator import schemas
from veriml.coordinator.auth import (
    authorize_read,
    capability_header,
    payment_from_headers,
    read_signed_body,
)
from veriml.coordinator.deps import InferenceDep, SettingsDep, TensorsDep
from veriml.coordinator.disputes.service import DisputeService
from veriml.coordinator.inference import faults
from veriml.coordinator.inference.service import InferenceOptions, InferenceService, ResolvedModel
from veriml.coordinator.ledger.service import TENSOR_MEDIA_TYPE
from veriml.coordinator.nodes.dispatch import JobRejectedError
from veriml.coordinator.nodes.scheduler import Candidate
from veriml.coordinator.problems import problem
from veriml.coordinator.state import Resources
from veriml.core.canonical import parse_json_object
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import (
    Error,
    FormatError,
    InvalidInputError,
    NodeUnavailableError,
    NotFoundError,
)
from veriml.models import IOSignature

__all__ = [
    "EPOCH_HEADER",
    "LOG_SIZE_HEADER",
    "known_size",
    "named_epoch",
    "node_lister",
    "router",
    "service_over",
]

router = APIRouter(tags=["inference"])
_RETRY_AFTER = "1"
LOG_SIZE_HEADER = "X-Veriml-Log-Size"
EPOCH_HEADER = "X-Veriml-Epoch"


def node_lister(
    resources: Resources, *, schedulable_only: bool = True, engine: str | None = None
) -> Callable[[Digest], list[Candidate]]:
    """``list_nodes(model)``: the live nodes serving ``model`` that the ledger's rules let
    receive jobs (an operator with the minimum stake, enough reputation), with their
    reputation and their operator's stake for the scheduler's draw. Blocking: it reads the
    node table and the folded ledger.

    ``schedulable_only=False`` keeps the nodes the rules exclude: the dispute service still
    reaches a node slashed below the minimum stake, whose earlier answers stay challengeable.
    ``engine`` keeps the nodes whose descriptor lists that runtime (``llama.cpp``)."""
    nodes, book = resources.nodes, resources.ledger

    def list_nodes(model: Digest) -> list[Candidate]:
        ledger = book.state()
        return [
            Candidate.of(
                row,
                active=row.active + row.queued,
                capacity=row.capacity,
                cached=frozenset(row.cached),
                models=row.models,
                reputation=ledger.reputation_of(row.node_id),
                stake=ledger.stake_of(row.operator),
            )
            for row in nodes.live_nodes(model)
            if (not schedulable_only or book.schedulable(row.node_id, ledger))
            and (engine is None or engine in row.engines)
        ]

    return list_nodes


def service_over(resources: Resources, disputes: DisputeService) -> InferenceService:
    """The app's inference service over its resources and its dispute service."""
    settings = resources.settings
    models = resources.models

    def resolve_model(ref: str) -> ResolvedModel:
        record = models.resolve(ref)
        if record.kind != "onnx":  # a GGUF language model answers on the OpenAI routes
            raise InvalidInputError(
                "this model is a language model: use /v1/chat/completions, /v1/completions "
                "or /v1/embeddings",
                model=ref[:200],
                kind=record.kind,
            )
        provenance = resources.hub.provenance(record.digest)
        return ResolvedModel(
            record.digest,
            IOSignature.from_json(record.io),
            (provenance.model, provenance.namespace),
        )

    return InferenceService(
        engine=resources.engine,
        log=resources.log,
        key=resources.coordinator_key,
        http=resources.http,
        resolve_model=resolve_model,
        list_nodes=node_lister(resources),
        node_failed=resources.nodes.mark_failed,
        observe=resources.metrics.observer("inference"),
        options=InferenceOptions(
            job_timeout=settings.job_timeout,
            attempts_per_slot=settings.max_job_attempts,
            live_within=settings.live_after,
            max_tensor_bytes=settings.max_json_bytes,
        ),
        # The verification policies' collaborators: disputes, the model for tolerance
        # bounds, and the store of request inputs.
        disputes=disputes,
        load_model=resources.load_model,
        store_tensors=resources.tensors.put,
        ledger=resources.ledger,
        beacon=resources.beacon,
        on_fault=faults.from_environment(),
    )


def named_epoch(headers: Mapping[str, str]) -> int | None:
    """``X-Veriml-Epoch``: the randomness epoch the client wants its request drawn from (the
    SDK sends the one ``GET /v1/ledger/rules`` named); a value that is not a non-negative
    integer is a :class:`FormatError` (400)."""
    value = headers.get(EPOCH_HEADER.lower()) or headers.get(EPOCH_HEADER)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 15:
        raise FormatError(f"{EPOCH_HEADER} is an epoch number", got=value[:20])
    return int(value)


def known_size(headers: Mapping[str, str]) -> int | None:
    """``X-Veriml-Log-Size``: the size of the last checkpoint the client saw (an answer then
    carries a consistency proof from it); ignored when it is not a non-negative integer."""
    value = headers.get(LOG_SIZE_HEADER.lower()) or headers.get(LOG_SIZE_HEADER)
    if value is None or not value.isdigit() or len(value) > 19:
        return None
    return int(value)


def _json(content: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, media_type="application/json", headers=headers)


def _upstream_problem(exc: Error, status: int) -> Response:
    members: dict[str, Any] = dict(exc.evidence)
    check = getattr(exc, "check", None)
    if check:
        members["check"] = check
    members["error"] = type(exc).__name__
    headers = {"Retry-After": _RETRY_AFTER} if status == 503 else None
    return problem(status, exc.diagnostics(), headers=headers, **members)


@router.post(
    "/v1/inferences",
    operation_id="create_inference",
    summary="Run an inference on nodes under a verification policy, logged once",
    responses={200: {"description": "the answer: outputs, receipts, verdict, log inclusion"}},
    openapi_extra=schemas.CREATE_INFERENCE,
)
async def create_inference(
    request: Request, service: InferenceDep, settings: SettingsDep
) -> Response:
    """``{"model", "inputs", "policy"}`` -> ``{"id", "outputs", "receipts", "verdict", "log"}``.

    With an ``Idempotency-Key`` header the key is the request id, and retrying the request
    returns the stored answer instead of running and logging it again. A signed request
    (RFC 9421, docs/network.md "Signed requests") is logged with the signer's key id
    (``request.client``); a signature that does not verify, or a signed request sent again
    without an ``Idempotency-Key``, is refused (403).
    """
    payment = payment_from_headers(request.headers)
    limit = settings.max_json_bytes
    raw, client = await read_signed_body(request, limit, idempotent=True)
    body = parse_json_object(raw, what="inference request")
    try:
        answer = await service.create(
            body,
            idempotency_key=request.headers.get("idempotency-key"),
            client=client,
            payment=payment,
            known_size=known_size(request.headers),
            epoch=named_epoch(request.headers),
        )
    except NodeUnavailableError as exc:
        return _upstream_problem(exc, 503)
    except JobRejectedError as exc:
        return _upstream_problem(exc, 502)
    return _json(answer, capability_header(request, str(answer["id"])))


@router.get(
    "/v1/inferences/{inference_id}/tensors/{digest}",
    operation_id="get_inference_tensor",
    summary="An input of an answered inference, in its canonical encoding",
    response_class=Response,
    responses=schemas.GET_TENSOR,
)
async def get_inference_tensor(
    inference_id: str, digest: str, request: Request, service: InferenceDep, store: TensorsDep
) -> Response:
    """One input tensor of ``inference_id`` (``veriml-tensor/v1``; its SHA-256 is ``digest``),
    to whoever may read the inference (docs/privacy.md): watchers of a public request, the
    requester, the referee. A digest that is not one of its inputs is 404."""
    try:
        wanted = Digest.from_text(digest)
    except FormatError as exc:
        raise FormatError("tensor digest must be sha256:<64 hex>", got=digest[:80]) from exc
    answer = await service.get(inference_id)
    authorize_read(request, answer)
    if wanted not in answer_inputs(answer):
        raise NotFoundError("this inference has no input with this digest", digest=digest[:80])
    data = await asyncio.to_thread(store.get_bytes, wanted)
    return Response(data, media_type=TENSOR_MEDIA_TYPE)


def answer_inputs(answer: Mapping[str, Any]) -> frozenset[Digest]:
    """The input digests an answer's receipts name (every receipt names the same inputs)."""
    out: set[Digest] = set()
    for receipt in answer.get("receipts") or []:
        try:
            statement = json.loads(Envelope.from_json(receipt).payload)
            out.update(Digest.from_text(i["digest"]) for i in statement["predicate"]["inputs"])
        except (FormatError, ValueError, KeyError, TypeError):
            continue
    return frozenset(out)


@router.get(
    "/v1/inferences/{inference_id}",
    operation_id="get_inference",
    summary="An answered inference, as it was returned",
    responses=schemas.GET_INFERENCE,
)
async def get_inference(inference_id: str, request: Request, service: InferenceDep) -> Response:
    """The stored answer, to whoever may read it (docs/privacy.md): anyone when its requester
    made it public, else the requester (a signed request by its key, or its capability)."""
    answer = await service.get(inference_id)
    authorize_read(request, answer)
    return _json(answer)
