"""The service routes: ``GET /v1/info`` (who this coordinator is), ``GET /healthz`` and
``GET /metrics`` (docs/coordinator.md, "Health and metrics")."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError

import veriml
from veriml.coordinator import schemas
from veriml.coordinator.deps import LogDep, SettingsDep
from veriml.coordinator.metrics import CONTENT_TYPE
from veriml.core.errors import StorageError

__all__ = ["router"]

router = APIRouter(tags=["service"])


@router.get("/v1/info", operation_id="get_info")
def get_info(request: Request, settings: SettingsDep, log: LogDep) -> dict[str, Any]:
    """Who this coordinator is: its job-signing key and its log's identity."""
    key = request.app.state.coordinator_key
    return {
        "version": veriml.__version__,
        "coordinator_key": key.public.to_pem().decode(),
        "coordinator_key_id": key.key_id,
        "log_origin": log.origin,
        "log_vkey": log.vkey,
        "heartbeat_interval": settings.heartbeat_interval,
    }


@router.get("/healthz", operation_id="healthz", responses=schemas.HEALTHZ)
def healthz(request: Request, log: LogDep) -> dict[str, Any]:
    """200 when the database and the log answer; 503 problem JSON otherwise."""
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise StorageError("coordinator database unreachable", reason=str(exc)[:200]) from exc
    return {"status": "ok", "log_size": log.size}


@router.get("/metrics", operation_id="metrics", response_class=Response, responses=schemas.METRICS)
def metrics(request: Request) -> Response:
    """Prometheus text exposition: requests by operation, models, live nodes, log size."""
    body = request.app.state.metrics.render()
    return Response(body, media_type=CONTENT_TYPE)
