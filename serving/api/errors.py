"""Every error the API answers, in one table: the same function renders them for FastAPI's exception
handlers and for the fast path in front of FastAPI, so both answer alike."""
from __future__ import annotations

import json
import math

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from ..manager import NotReady, UnknownModel
from ..request import InvalidRequest
from ..scheduler import QueueFull, QueueTimeout

RETRY_AFTER = {"Retry-After": "1"}


class ApiError(Exception):
    """An answer other than 200 decided by the API itself (deadline, reload in progress)."""

    def __init__(self, status: int, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def validation_response(errors: list[dict]) -> Response:
    # FastAPI's own handler echoes each error's input and failed (a 500) on what Python's json parser lets in
    # but UTF-8 JSON cannot carry back: NaN and Infinity, and lone surrogates ("\ud800"), which ensure_ascii
    # escapes.
    detail = _json_safe(jsonable_encoder(errors))
    return Response(json.dumps({"detail": detail}, ensure_ascii=True, allow_nan=False), 422,
                    media_type="application/json")


def error_response(exc: Exception) -> Response:
    if isinstance(exc, RequestValidationError):
        return validation_response(exc.errors())
    if isinstance(exc, InvalidRequest):
        return validation_response([{"type": "value_error", "loc": ("body", *exc.field), "input": exc.input,
                                     "msg": str(exc)}])
    if isinstance(exc, UnknownModel):
        return JSONResponse({"detail": str(exc)}, 404)
    if isinstance(exc, NotReady):
        return JSONResponse({"detail": str(exc)}, 503, headers=RETRY_AFTER)
    if isinstance(exc, QueueFull):
        return JSONResponse({"detail": f"too many requests waiting ({exc}); retry shortly"}, 429, headers=RETRY_AFTER)
    if isinstance(exc, QueueTimeout):
        return JSONResponse({"detail": str(exc)}, 503, headers=RETRY_AFTER)
    if isinstance(exc, ApiError):
        return JSONResponse({"detail": exc.detail}, exc.status, headers=exc.headers)
    raise TypeError(f"no HTTP answer for {type(exc).__name__}") from exc


ANSWERED = (RequestValidationError, InvalidRequest, UnknownModel, NotReady, QueueFull, QueueTimeout, ApiError)


def install(app: FastAPI) -> None:
    async def handler(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    for kind in ANSWERED:
        app.add_exception_handler(kind, handler)


def _json_safe(value):
    """NaN and Infinity as the strings the client wrote: JSON has no literal for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value
