"""The HTTP layer: validates and translates, nothing more. Engines and model loading live elsewhere."""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import random
import secrets
from contextlib import asynccontextmanager

import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from .asgi import LimitAndMeasure, ShortPath
from .engine import EngineStopped, QueueFull, SamplingParams
from .manager import ModelManager, NotReady, Served, UnknownModel
from .metrics import Metrics
from .schemas import GenerateRequest, GenerateResponse, ModelInfo, ModelsResponse, ScoreRequest, ScoreResponse
from .settings import Settings

log = logging.getLogger("namegen.app")
RETRY_AFTER_S = "1"


class FastJSONResponse(JSONResponse):
    """orjson for the large bodies (/generate, /score): the same JSON, several times less CPU."""

    def render(self, content) -> bytes:
        return orjson.dumps(content)


def _vocab_error(field: tuple, served: Served, text: str) -> RequestValidationError | None:
    unknown = served.model.unknown_chars(text)
    if not unknown:
        return None
    listed = ", ".join(repr(ch) for ch in unknown)
    return RequestValidationError([{
        "type": "value_error", "loc": ("body", *field), "input": text,
        "msg": f"characters not in the vocabulary of model {served.model.name!r}: {listed}",
    }])


def _json_safe(value):
    """NaN and Infinity as the strings the client wrote: JSON has no literal for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    manager = ModelManager(settings, metrics)
    metrics.watch(manager)

    async def watch_registry():
        while True:
            await asyncio.sleep(settings.watch_interval_s)
            try:
                await run_in_threadpool(manager.refresh)
            except Exception:  # the watcher must outlive a bad registry state
                log.exception("registry refresh failed")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        results = await run_in_threadpool(manager.refresh)
        if not manager.served():
            log.warning("no model loaded from %s (%s); waiting for one to be published",
                        settings.registry, results or "the registry is empty")
        # What start-up built (modules, models, tables) goes out of the cyclic collector's reach, so its
        # collections stop walking it: large responses allocate enough containers to trigger several per
        # request (in process, a quarter of the engine's names/s). A version replaced later is freed by
        # reference counting alone (tested), so freezing it does not keep it.
        gc.freeze()
        watcher = asyncio.create_task(watch_registry())
        yield
        watcher.cancel()
        await run_in_threadpool(manager.close)  # engines drain what is in flight

    # FastAPI's native OpenTelemetry is off: metrics are Prometheus's (/metrics), and its per-request
    # provider lookups cost more than a small generation.
    app = FastAPI(title="namegen", version="0.1.0", lifespan=lifespan,
                  description="Character-level name generation and scoring.",
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.manager = manager
    app.state.settings = settings

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # FastAPI's own handler echoes each error's input and failed (a 500) on what Python's json parser lets in
        # but UTF-8 JSON cannot carry back: NaN and Infinity, and lone surrogates ("\ud800"), which ensure_ascii
        # escapes.
        detail = _json_safe(jsonable_encoder(exc.errors()))
        return Response(json.dumps({"detail": detail}, ensure_ascii=True, allow_nan=False), 422,
                        media_type="application/json")

    @app.exception_handler(UnknownModel)
    async def unknown_model(request: Request, exc: UnknownModel):
        return JSONResponse({"detail": str(exc)}, 404)

    @app.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady):
        return JSONResponse({"detail": str(exc)}, 503, headers={"Retry-After": RETRY_AFTER_S})

    # -- generation ---------------------------------------------------------------------------
    async def run_generation(body: GenerateRequest, seed: int) -> tuple[Served, object]:
        loop = asyncio.get_running_loop()
        for _ in range(3):  # a reload may retire the engine between lookup and submit
            served = manager.get(body.model)
            error = _vocab_error(("prefix",), served, body.prefix)
            if error:
                raise error
            params = SamplingParams(n=body.n, seed=seed, temperature=body.temperature, top_k=body.top_k or 0,
                                    prefix=body.prefix, min_length=body.min_length, max_length=body.max_length,
                                    unique=body.unique, exclude_training=body.exclude_training)
            done = loop.create_future()

            def finish(result, done=done):
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(result))

            try:
                request = served.engine.submit(params, finish)
            except QueueFull as e:
                raise HTTPException(429, f"too many requests waiting ({e}); retry shortly",
                                    headers={"Retry-After": RETRY_AFTER_S}) from None
            except EngineStopped:
                continue
            try:
                result = await asyncio.wait_for(done, settings.request_timeout_s)
            except asyncio.TimeoutError:
                request.cancelled = True
                raise HTTPException(504, f"generation took longer than {settings.request_timeout_s}s; "
                                         "ask for fewer names or retry") from None
            except asyncio.CancelledError:  # the client went away
                request.cancelled = True
                raise
            if isinstance(result, EngineStopped):
                continue
            if isinstance(result, BaseException):
                raise result
            return served, result
        raise HTTPException(503, "the model is being reloaded; retry", headers={"Retry-After": RETRY_AFTER_S})

    @app.post("/v1/generate", response_model=GenerateResponse, tags=["names"])
    @app.post("/generate", response_model=GenerateResponse, include_in_schema=False)
    async def generate(body: GenerateRequest) -> JSONResponse:
        seed = body.seed if body.seed is not None else random.SystemRandom().randrange(2**63)
        served, result = await run_generation(body, seed)
        metrics.names_generated.labels(served.model.name).inc(len(result.names))
        # Plain dicts: a pydantic object per name costs more than the sampling for large n. The
        # shape is GenerateResponse's (the OpenAPI page documents it; tests check the contract).
        return FastJSONResponse({"model": served.model.name, "version": result.version, "seed": seed,
                                 "names": [{"name": name, "nll": nll}
                                           for name, nll in zip(result.names, result.nlls)],
                                 "exhausted": result.exhausted})

    # -- scoring ----------------------------------------------------------------------------
    @app.post("/v1/score", response_model=ScoreResponse, tags=["names"])
    @app.post("/score", response_model=ScoreResponse, include_in_schema=False)
    async def score(body: ScoreRequest) -> JSONResponse:
        served = manager.get(body.model)
        for i, name in enumerate(body.names):
            error = _vocab_error(("names", i), served, name)
            if error:
                raise error
        model = served.model
        logp, targets, lengths = await run_in_threadpool(model.token_logp, body.names)  # one batched forward
        results, start = [], 0
        for name, count in zip(body.names, lengths.tolist()):
            char_logp = logp[start:start + count]
            chars = [{"char": model.vocab[t], "p": math.exp(lp), "nll": -lp}
                     for t, lp in zip(targets[start:start + count].tolist(), char_logp.tolist())]
            nll = float(-char_logp.sum())
            results.append({"name": name, "nll": nll, "nll_per_char": nll / count,
                            "perplexity": math.exp(nll / count), "chars": chars})
            start += count
        return FastJSONResponse({"model": model.name, "version": model.version, "results": results})  # ScoreResponse

    # -- introspection ------------------------------------------------------------------------
    @app.get("/v1/models", response_model=ModelsResponse, tags=["models"])
    async def models() -> ModelsResponse:
        infos = [ModelInfo(name=name, version=s.model.version, type=s.model.manifest["model_type"],
                           vocab=list(s.model.vocab), block_size=s.model.block_size,
                           metrics={k: float(v) for k, v in s.model.manifest.get("metrics", {}).items()},
                           backend=settings.backend, device=settings.device,
                           logits_table=s.model.backend.table is not None)
                 for name, s in sorted(manager.served().items())]
        return ModelsResponse(default=manager.default_name, models=infos)

    @app.get("/healthz", tags=["ops"])
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz():
        versions = {name: s.model.version for name, s in manager.served().items()}
        if manager.ready():
            return {"status": "ready", "models": versions}
        missing = [name for name in manager.wanted_names() if name not in versions]
        return JSONResponse({"status": "not ready", "models": versions, "waiting_for": missing,
                             "registry": str(settings.registry)}, 503, headers={"Retry-After": RETRY_AFTER_S})

    @app.get("/metrics", tags=["ops"])
    async def prometheus_metrics():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- admin --------------------------------------------------------------------------------
    def require_admin(authorization: str | None = Header(None)) -> None:
        if not settings.admin_token:
            raise HTTPException(403, "the admin API is disabled; set NAMEGEN_ADMIN_TOKEN to enable it")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), settings.admin_token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.post("/v1/admin/reload", tags=["ops"], dependencies=[Depends(require_admin)])
    async def reload():
        """Load every model whose LATEST changed now, instead of at the next registry poll."""
        return {"models": await run_in_threadpool(manager.refresh)}

    # Middleware added last runs first: limits and metrics, then the short path for /generate.
    generate_routes = {route.path: route for route in app.routes if getattr(route, "endpoint", None) is generate}
    app.add_middleware(ShortPath, routes=generate_routes, model=GenerateRequest, handler=generate)
    app.add_middleware(LimitAndMeasure, metrics=metrics, max_body_bytes=settings.max_body_bytes)
    return app
