"""Plain ASGI layers in front of FastAPI's per-request machinery: body limits and request metrics for every
route, HEAD as GET, and a fast path for POST /generate, the route that many small requests hit. (Read
deadlines are the server protocol's: http_server.py.)"""
from __future__ import annotations

import time

from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from ..http_server import BODY_TIMED_OUT
from ..metrics import Metrics
from . import generate

CLIENT_GONE = 499  # as nginx counts a request whose client left before the answer
REQUEST_TIMEOUT = 408


class LimitAndMeasure:
    """Plain ASGI middleware (cheaper than @app.middleware): 413 past the body limit, and request metrics by
    route, 413s, clients that left (499) and bodies past the read deadline (408, answered by the server's
    protocol: http_server.py) included."""

    def __init__(self, app, metrics: Metrics, max_body_bytes: int, paths: set[str]):
        self.app, self.metrics, self.max_body_bytes = app, metrics, max_body_bytes
        self.paths = paths  # the app's routes, for the metrics label

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
            await self._serve(scope, receive, send_and_note)
        except ClientDisconnect:  # it is not answered: its body never arrived whole
            status = REQUEST_TIMEOUT if scope.get(BODY_TIMED_OUT) else CLIENT_GONE
        finally:
            route = scope.get("route")
            path = route.path if route is not None else scope["path"] if scope["path"] in self.paths else "unmatched"
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)

    async def _serve(self, scope, receive, send) -> None:
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return await self._refuse(413, f"request body over {self.max_body_bytes} bytes", scope, send)
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            body = await read_body(receive, self.max_body_bytes)  # chunked: no length to check up front
            if body is None:
                return await self._refuse(413, f"request body over {self.max_body_bytes} bytes", scope, send)
            receive = _replay(body)
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(status: int, detail: str, scope, send) -> None:
        # The rest of the body is not read: the connection closes after the answer.
        response = JSONResponse({"detail": detail}, status, headers={"connection": "close"})
        await response(scope, _replay(b""), send)


async def read_body(receive, limit: float = float("inf")) -> bytes | None:
    """The whole request body, or None once it is over `limit` bytes; ClientDisconnect if the client left
    before sending it all."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
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


class HeadAsGet:
    """HEAD is answered as GET without the body (RFC 9110), for every GET route, as Starlette does for
    plain routes and FastAPI's routes do not."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message):
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


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
        state = scope["app"].state  # set by app.ServingApp before these layers run
        response = await generate.answer(await read_body(receive), content_type.decode("latin-1"), state.manager,
                                         state.settings, state.metrics)
        await response(scope, receive, send)


def _content_type(scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value
    return b""
