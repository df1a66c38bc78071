"""The service routes: ``GET /v1/info`` (who this coordinator is), ``GET /healthz`` and
``GET /metrics`` (docs/coordinator.md, "Health and metrics")."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

import veriml
from veriml.coordinator import schemas
from veriml.coordinator.db import tables as db
from veriml.coordinator.deps import StateDep
from veriml.coordinator.metrics import CONTENT_TYPE

__all__ = ["router"]

router = APIRouter(tags=["service"])


@router.get("/v1/info", operation_id="get_info")
def get_info(state: StateDep) -> dict[str, Any]:
    """Who this coordinator is: its job-signing key and its log's identity."""
    key, log = state.coordinator_key, state.log
    return {
        "version": veriml.__version__,
        "coordinator_key": key.public.to_pem().decode(),
        "coordinator_key_id": key.key_id,
        "log_origin": log.origin,
        "log_vkey": log.vkey,
        "heartbeat_interval": state.settings.heartbeat_interval,
    }


@router.get("/healthz", operation_id="healthz", responses=schemas.HEALTHZ)
def healthz(state: StateDep) -> dict[str, Any]:
    """200 when the database and the log answer; 503 problem JSON otherwise."""
    db.ping(state.engine)
    return {"status": "ok", "log_size": state.log.size}


@router.get("/metrics", operation_id="metrics", response_class=Response, responses=schemas.METRICS)
def metrics(state: StateDep) -> Response:
    """Prometheus text exposition: requests by operation, models, live nodes, log size."""
    body = state.metrics.render()
    return Response(body, media_type=CONTENT_TYPE)
