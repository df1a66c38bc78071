"""``/v1/disputes``: external challenges over HTTP (docs/verification.md, "Service").

=====================================  ====================  ================================
``POST /v1/disputes``                  challenger, signed    201, the dispute state
``GET /v1/disputes/{id}``              anyone                the dispute state
``POST /v1/disputes/{id}/reveal``      challenger, signed    the new state
``POST /v1/disputes/{id}/tensors``     challenger, signed    the new state
=====================================  ====================  ================================

A challenger is an account: the key id of the request signature (RFC 9421,
:mod:`veriml.coordinator.auth`). Only the account that opened a
dispute may move in it. The routes read the
:class:`~veriml.coordinator.disputes.service.DisputeService`
from the app's state (:func:`~veriml.coordinator.deps.state_of`), with the stored inference.

Errors are RFC 9457 problems, and a refused challenge is neither logged nor charged: a
malformed body is 400 (the move stays open until its deadline); a missing, stale or
mismatched bond authorization, or a balance that does not cover the bond, 402; an unsigned
request, another account's signature or a bond signed by another key 403; an unknown dispute
or inference 404; a move the dispute is not asking for, or a claim already disputed (a
replayed challenge included) 409; a challenge after the answer's window, or any move in a
settled dispute, 410; a defendant with as many open disputes as the coordinator hosts per
node 429 (with ``Retry-After``).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response

from veriml.coordinator import schemas
from veriml.coordinator.auth import read_signed_body
from veriml.coordinator.deps import state_of
from veriml.coordinator.disputes.admission import (
    TooManyDisputesError,
    WindowClosedError,
    bond_authorization,
    tensors_from_json,
)
from veriml.coordinator.disputes.service import DisputeRun, DisputeService, bonded
from veriml.coordinator.problems import problem
from veriml.core.canonical import parse_json_object
from veriml.core.errors import Check, FormatError, SignatureError

__all__ = ["router"]


def _json(content: dict[str, Any], status: int = 200) -> Response:
    body = json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status_code=status, media_type="application/json")


async def _signed_body(request: Request) -> tuple[str, dict[str, Any]]:
    """The verified signer's key id and the JSON object body; unsigned requests are refused."""
    raw, account = await read_signed_body(request, state_of(request).settings.max_json_bytes)
    if account is None:
        raise SignatureError(
            "dispute requests are signed: the challenger's account is the signing key's id",
            check=Check.REQUEST_SIGNATURE,
        )
    return account, parse_json_object(raw, what="dispute request")


def _gone(run: DisputeRun) -> Response:
    return problem(410, "the dispute is settled", title="Gone", dispute=run.id, winner=run.winner)


async def _move(
    request: Request, dispute_id: str, body_of: str
) -> tuple[DisputeService, DisputeRun, dict[str, Any]] | Response:
    """The checks every challenger move shares: signed, the challenger's, still open."""
    service = state_of(request).disputes
    run = service.get(dispute_id)
    account, body = await _signed_body(request)
    if account != run.challenger.claim.account:
        raise SignatureError(
            "only the challenger moves in a dispute",
            check=Check.DISPUTE_PARTY,
            dispute=run.id,
            signer=account,
        )
    if run.status != "open":
        return _gone(run)
    if body_of not in body:
        raise FormatError(f"the move needs {body_of!r}", dispute=run.id)
    return service, run, body


async def _prefill_challenge(
    request: Request, answer: dict[str, Any], body: dict[str, Any], account: str
) -> Response:
    """``{"inference", "node", "kind": "prefill", "authorization"?}``: an LLM completion
    challenged by a watcher whose own prefill check rejected it; settled at once by another
    operator's prefill check (docs/llm.md, "Disputes"). 201 and the settled dispute. The bond
    and a claim disputed before are checked before any node is asked to check."""
    from veriml.coordinator.llm.checks import answer_from_stored

    unknown = sorted(set(body) - {"inference", "node", "kind", "authorization"})
    if unknown:
        raise FormatError("prefill challenge has unknown members", members=",".join(unknown))
    node = body.get("node")
    if not isinstance(node, str) or not 0 < len(node) <= 256:
        raise FormatError("a prefill challenge names the defendant node")
    service = state_of(request).disputes
    authorization = bond_authorization(
        body.get("authorization"),
        signer=account,
        inference=str(body["inference"]),
        node=node,
        bond=service.options.challenge_bond,
    )
    receipt = answer_from_stored(answer).answer.receipt
    checked = service.admitting(
        inference=str(body["inference"]),
        defendant=node,
        receipt=receipt,
        challenger=account,
        authorization=authorization,
    )
    async with checked:
        with bonded(authorization):
            ref = await state_of(request).completions.challenge(answer, node, account=account)
    settled = {
        "id": ref.id,
        "status": "settled",
        "inference": body["inference"],
        "defendant": ref.defendant,
        "challenger": ref.challenger,
        "mode": "bitwise",
        "query": None,
        "deadline": None,
        "rounds": 1,
        "messages": 2,
        "opened": ref.opened,
        "result": {
            "dispute": ref.id,
            "winner": ref.winner,
            "reason": "referee",
            "log_index": ref.log_index,
        },
    }
    return _json(settled, status=201)


router = APIRouter(tags=["disputes"])


@router.post(
    "/v1/disputes",
    operation_id="create_dispute",
    status_code=201,
    summary="Challenge a node's answer to a logged inference with your own trace",
    responses={201: {"description": "the dispute state"}},
    openapi_extra=schemas.CREATE_DISPUTE,
)
async def create_dispute(request: Request) -> Response:
    """``{"inference", "node", "trace": {"root", "size"}, "outputs", "mode"?,
    "authorization"?}`` -> 201 and the dispute state; the challenge entry is logged
    before the answer. ``authorization`` is the challenger's signed ``challenge`` ledger
    request for the rules' bond (needed when the bond is above 0)."""
    service = state_of(request).disputes
    account, body = await _signed_body(request)
    inference = body.get("inference")
    if not isinstance(inference, str) or not 0 < len(inference) <= 200:
        raise FormatError("a dispute names the inference it challenges")
    answer = await state_of(request).inference.get(inference)
    try:
        await service.check_window(answer)
        if body.get("kind") == "prefill":
            return await _prefill_challenge(request, answer, body, account)
        run = await service.challenge(answer, body, account=account)
    except WindowClosedError as exc:
        return problem(410, exc.message, title="Gone", **exc.evidence)
    except TooManyDisputesError as exc:
        retry = str(exc.evidence.get("retry_after", 1))
        return problem(
            429,
            exc.message,
            title="Too Many Requests",
            headers={"Retry-After": retry},
            **exc.evidence,
        )
    return _json(run.to_json(), status=201)


@router.get(
    "/v1/disputes/{dispute_id}",
    operation_id="get_dispute",
    summary="A dispute's state: the query it waits for, its rounds, its verdict",
    responses=schemas.GET_DISPUTE,
)
async def get_dispute(dispute_id: str, request: Request) -> Response:
    return _json(state_of(request).disputes.get(dispute_id).to_json())


@router.post(
    "/v1/disputes/{dispute_id}/reveal",
    operation_id="reveal_dispute_entry",
    summary="The challenger reveals the trace entry the dispute asks for",
    openapi_extra=schemas.dispute_move(schemas.DisputeReveal, "the entry and its proof"),
)
async def reveal(dispute_id: str, request: Request) -> Response:
    """``{"index", "entry", "proof": [hex]}`` -> the state once the dispute has moved on."""
    moved = await _move(request, dispute_id, "entry")
    if isinstance(moved, Response):
        return moved
    service, run, body = moved
    await service.submit(run, reveal=body)
    return _json(run.to_json())


@router.post(
    "/v1/disputes/{dispute_id}/tensors",
    operation_id="submit_dispute_tensors",
    summary="The challenger sends the recorded tensors the dispute asks for",
    openapi_extra=schemas.dispute_move(schemas.DisputeTensors, "the tensors asked for"),
)
async def tensors(dispute_id: str, request: Request) -> Response:
    """``{"tensors": {name: tensor JSON}}`` -> the state once the dispute has moved on."""
    moved = await _move(request, dispute_id, "tensors")
    if isinstance(moved, Response):
        return moved
    service, run, body = moved
    arrays = tensors_from_json(body["tensors"], max_bytes=service.options.max_tensor_bytes)
    await service.submit(run, tensors=arrays)
    return _json(run.to_json())
