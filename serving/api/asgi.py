"""Plain ASGI layers in front of FastAPI's per-request machinery: body limits and request metrics for
every route, and a fast path for POST /generate, the route that many small requests hit."""
from __future__ import annotations

import time

from fastapi.responses import JSONResponse

from ..metrics import Metrics
from . import generate


class LimitAndMeasure:
    """Plain ASGI middleware (cheaper than @app.middleware): 413 past the body limit, request metrics."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                return await self._too_large(scope, receive, send_and_note)
            if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
                body = await _read_body(receive, self.max_body_bytes)  # chunked: no length to check up front
                if body is None:
                    return await self._too_large(scope, receive, send_and_note)
                receive = _replay(body)
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            path = route.path if route is not None else "unmatched"
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)

    async def _too_large(self, scope, receive, send) -> None:
        await JSONResponse({"detail": f"request body over {self.max_body_bytes} bytes"}, 413)(scope, receive, send)


async def _read_body(receive, limit: float = float("inf")) -> bytes | None:
    """The whole request body, or None once it is over `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > limit:
            return None
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    return receive


class FastPath:
    """Answers POST /generate and /v1/generate with an application/json body without FastAPI's routing,
    dependency injection and request objects, which cost more CPU than generating a name: it calls the
    route's own `generate.answer` with the body's bytes, errors included, so its answers are the route's.
    Everything else goes on to FastAPI unchanged."""

    def __init__(self, app, routes: dict):
        self.app, self.routes = app, routes  # path -> the FastAPI route it stands in for

    async def __call__(self, scope, receive, send):
        route = self.routes.get(scope.get("path")) if scope["type"] == "http" and scope["method"] == "POST" else None
        content_type = _content_type(scope) if route is not None else b""
        if route is None or content_type.split(b";")[0].strip().lower() != b"application/json":
            return await self.app(scope, receive, send)
        scope["route"] = route  # as the router would set it: LimitAndMeasure labels metrics with it
        state = scope["app"].state  # set by Starlette before its middleware runs
        response = await generate.answer(await _read_body(receive), content_type.decode("latin-1"), state.manager,
                                         state.settings, state.metrics)
        await response(scope, receive, send)


def _content_type(scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value
    return b""
