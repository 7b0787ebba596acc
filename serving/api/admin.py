"""Admin routes, behind a bearer token (NAMEGEN_ADMIN_TOKEN; disabled when it is empty)."""
from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from .deps import ManagerDep, SettingsDep
from .schemas import error_responses

bearer = HTTPBearer(auto_error=False)  # documents the scheme; a missing token is this module's 401, not FastAPI's


def require_admin(settings: SettingsDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
    if not settings.admin_token:
        raise HTTPException(403, "the admin API is disabled; set NAMEGEN_ADMIN_TOKEN to enable it")
    token = credentials.credentials if credentials is not None and credentials.scheme.lower() == "bearer" else ""
    if not secrets.compare_digest(token.encode(), settings.admin_token.encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


router = APIRouter(tags=["ops"], dependencies=[Depends(require_admin)], responses=error_responses(401, 403))


@router.post("/v1/admin/reload")
async def reload(manager: ManagerDep):
    """Load every model whose LATEST changed now, instead of at the next registry poll."""
    return {"models": await run_in_threadpool(manager.refresh)}
