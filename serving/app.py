"""The FastAPI application: what it holds (app.state), its start-up and shutdown, its routers and the ASGI
layers in front of them. Routes live in serving/api/, one module per resource."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client.multiprocess import mark_process_dead
from starlette.concurrency import run_in_threadpool

from .api import admin, errors, generate, models, ops, page, score
from .api.asgi import FastPath, HeadAsGet, LimitAndMeasure
from .manager import ModelManager
from .metrics import Metrics
from .settings import Settings, configure_logging

log = logging.getLogger("namegen.app")
GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections (Python's default: 700)
ROUTERS = (generate, score, models, ops, admin, page)
DESCRIPTION = ("Character-level name generation and scoring. [The page](/) uses every route below from the "
               "browser; the same reference as [Swagger UI](/docs) and as [ReDoc](/redoc).")


@asynccontextmanager
async def lifespan(app: FastAPI):
    manager, settings = app.state.manager, app.state.settings
    results = await run_in_threadpool(manager.refresh)
    if not manager.served():
        log.warning("no model loaded from %s (%s); waiting for one to be published",
                    settings.registry, results or "the registry is empty")
    # What start-up built (modules, models, tables) goes out of the cyclic collector's reach, so its
    # collections stop walking it: large responses allocate enough containers to trigger several per
    # request (in process, a quarter of the engine's names/s). A version replaced later is freed by
    # reference counting alone (tested), so freezing it does not keep it.
    gc.freeze()
    # Then collections run a tenth as often: a 1,000-name answer allocates 1,000 dicts, a young collection
    # each, and under load every older one walks what all waiting requests hold (measured: about 4% of the
    # server's time at 10x overload, 0.04% with this).
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    watcher = asyncio.create_task(watch_registry(manager, settings.watch_interval_s))
    yield
    watcher.cancel()
    await run_in_threadpool(manager.close)  # engines drain what is in flight
    if manager.metrics.multiprocess:  # this worker's gauges leave the sums
        mark_process_dead(os.getpid())


async def watch_registry(manager: ModelManager, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await run_in_threadpool(manager.refresh)
            await run_in_threadpool(manager.release_memory_when_idle)
            manager.metrics.update_gauges()
        except Exception:  # the watcher must outlive a bad registry state
            log.exception("registry refresh failed")


class ServingApp(FastAPI):
    """FastAPI with the plain ASGI layers of api/asgi.py in front of its whole middleware stack rather than
    inside it: the fast path for /generate then skips FastAPI's error, telemetry and body-limit layers too
    (each wraps every send), and the limits and metrics see every request first."""

    front = None  # LimitAndMeasure(HeadAsGet(FastPath(FastAPI's own __call__))), set by create_app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        scope["app"] = self  # as Starlette sets it: the layers read app.state from it
        await self.front(scope, receive, send)

    async def behind_front(self, scope, receive, send):
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    manager = ModelManager(settings, metrics)
    metrics.watch(manager)
    # FastAPI's native OpenTelemetry is off: metrics are Prometheus's (/metrics), and its per-request
    # provider lookups cost more than a small generation. /docs and /redoc are api/page.py's: offline.
    app = ServingApp(title="namegen", version="0.1.0", lifespan=lifespan, description=DESCRIPTION,
                     docs_url=None, redoc_url=None, telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.settings, app.state.manager, app.state.metrics = settings, manager, metrics
    errors.install(app)
    for module in ROUTERS:
        app.include_router(module.router)
    # Limits and metrics first, HEAD, then the fast path for /generate, then FastAPI.
    paths = {route.path for module in ROUTERS for route in module.router.routes}
    fast = FastPath(app.behind_front, routes={route.path: route for route in generate.router.routes})
    app.front = LimitAndMeasure(HeadAsGet(fast), metrics=metrics, max_body_bytes=settings.max_body_bytes, paths=paths)
    return app


def create_worker_app() -> FastAPI:
    """The app of one worker process (NAMEGEN_WORKERS > 1): settings from the environment, logging as
    `python -m serving` sets it up in a single process."""
    settings = Settings()
    configure_logging(settings)
    return create_app(settings)
