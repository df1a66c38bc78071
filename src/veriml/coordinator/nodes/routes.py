"""The node routes: ``POST /v1/nodes`` (register), ``POST /v1/nodes/{id}/heartbeat`` and
``GET /v1/nodes`` (docs/coordinator.md, "The node registry").

The checks are :class:`~veriml.coordinator.nodes.registry.RegistryService`'s; these functions
read the signed envelopes and shape the responses.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from veriml.coordinator.deps import NodesDep, PageDep, RegistryDep, SettingsDep
from veriml.coordinator.nodes.registry import MAX_MESSAGE_BODY, parse_envelope, read_body
from veriml.coordinator.schemas import HEARTBEAT, REGISTER_NODE

router = APIRouter(tags=["nodes"])


@router.post(
    "/v1/nodes", operation_id="register_node", status_code=201, openapi_extra=REGISTER_NODE
)
async def register_node(request: Request, registry: RegistryDep) -> JSONResponse:
    """Register (or re-register) a node with its signed descriptor (a DSSE envelope)."""
    envelope = parse_envelope(await read_body(request, MAX_MESSAGE_BODY))
    node_id, index = await registry.register_async(envelope)
    return JSONResponse({"node_id": node_id, "log_index": index}, status_code=201)


@router.post(
    "/v1/nodes/{node_id}/heartbeat", operation_id="node_heartbeat", openapi_extra=HEARTBEAT
)
async def node_heartbeat(node_id: str, request: Request, registry: RegistryDep) -> dict[str, Any]:
    """Record a heartbeat signed by the node's registered key."""
    envelope = parse_envelope(await read_body(request, MAX_MESSAGE_BODY))
    await run_in_threadpool(registry.heartbeat, node_id, envelope)
    return {"node_id": node_id, "heartbeat_interval": registry.settings.heartbeat_interval}


@router.get("/v1/nodes", operation_id="list_nodes")
def list_nodes(
    nodes: NodesDep,
    settings: SettingsDep,
    page: PageDep,
) -> dict[str, Any]:
    """Registered nodes by id, with ``live`` (a heartbeat within three intervals), paged as
    ``GET /v1/models`` is: ``limit`` and ``offset`` in, ``next_offset`` (None on the last
    page) out."""
    now = time.time()
    found = nodes.all(limit=page.limit + 1, offset=page.offset)
    return {
        "nodes": [n.to_json(live=n.is_live(now, settings.live_after)) for n in found[: page.limit]],
        "heartbeat_interval": settings.heartbeat_interval,
        "next_offset": page.next_offset(len(found)),
    }
