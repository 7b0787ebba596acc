"""What operators and orchestrators poll: liveness, readiness (every wanted model loaded), metrics."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .deps import ManagerDep, MetricsDep
from .errors import RETRY_AFTER
from .schemas import error_responses

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", responses=error_responses(503))
async def readyz(manager: ManagerDep):
    versions = {name: s.model.version for name, s in manager.served().items()}
    if manager.ready():
        return {"status": "ready", "models": versions}
    missing = [name for name in manager.wanted_names() if name not in versions]
    return JSONResponse({"status": "not ready", "models": versions, "waiting_for": missing}, 503,
                        headers=RETRY_AFTER)


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
async def prometheus_metrics(metrics: MetricsDep):
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
