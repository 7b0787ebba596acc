"""What operators and orchestrators poll: liveness, readiness (every wanted model loaded), metrics."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .deps import ManagerDep, MetricsDep, SettingsDep
from .errors import RETRY_AFTER

router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(manager: ManagerDep, settings: SettingsDep):
    versions = {name: s.model.version for name, s in manager.served().items()}
    if manager.ready():
        return {"status": "ready", "models": versions}
    missing = [name for name in manager.wanted_names() if name not in versions]
    return JSONResponse({"status": "not ready", "models": versions, "waiting_for": missing,
                         "registry": str(settings.registry)}, 503, headers=RETRY_AFTER)


@router.get("/metrics")
async def prometheus_metrics(metrics: MetricsDep):
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
