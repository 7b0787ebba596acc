"""Admin routes, behind a bearer token (NAMEGEN_ADMIN_TOKEN; disabled when it is empty)."""
from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException
from starlette.concurrency import run_in_threadpool

from .deps import ManagerDep, SettingsDep


def require_admin(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    if not settings.admin_token:
        raise HTTPException(403, "the admin API is disabled; set NAMEGEN_ADMIN_TOKEN to enable it")
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), settings.admin_token.encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


router = APIRouter(tags=["ops"], dependencies=[Depends(require_admin)])


@router.post("/v1/admin/reload")
async def reload(manager: ManagerDep):
    """Load every model whose LATEST changed now, instead of at the next registry poll."""
    return {"models": await run_in_threadpool(manager.refresh)}
