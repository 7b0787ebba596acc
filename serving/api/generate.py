"""POST /v1/generate: parse and validate the body, run it on the model's engine, answer.

`answer` is the whole of it, from body bytes to response; the FastAPI route below and the fast path in
front of FastAPI (asgi.FastPath, which skips FastAPI's routing and dependency injection for this, the
route that many small requests hit) both call it, so they answer alike, errors included.
"""
from __future__ import annotations

import asyncio
import random

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..engine import EngineStopped, GenerationResult, SamplingParams
from ..manager import ModelManager
from ..metrics import Metrics
from ..settings import Settings
from .admission import submit_when_room
from .body import read_body
from .deps import ManagerDep, MetricsDep, SettingsDep
from .errors import ANSWERED, RETRY_AFTER, ApiError, error_response
from .schemas import GenerateRequest, GenerateResponse, error_responses, json_body

SUBMIT_TRIES = 3  # a reload may retire the engine between lookup and submit


class FastJSONResponse(JSONResponse):
    """orjson for the large bodies (/generate, /score): the same JSON, several times less CPU."""

    def render(self, content) -> bytes:
        return orjson.dumps(content)


async def generate_names(body: GenerateRequest, manager: ModelManager, settings: Settings, metrics: Metrics) -> Response:
    # A seed for the answer to report, not a secret: the process's generator (seeded from the OS at start)
    # instead of a system call per request, which every refused request under overload paid too.
    seed = body.seed if body.seed is not None else random.getrandbits(63)
    params = SamplingParams(n=body.n, seed=seed, temperature=body.temperature, top_k=body.top_k or 0,
                            prefix=body.prefix, min_length=body.min_length, max_length=body.max_length,
                            unique=body.unique, exclude_training=body.exclude_training,
                            conditions=body.condition_pairs(), guidance=body.guidance)
    model_name, result = await _run(body.model, params, manager, settings)
    metrics.names_generated.labels(model_name).inc(len(result.names))
    # Plain dicts: a pydantic object per name costs more than the sampling for large n. The shape is
    # GenerateResponse's (the OpenAPI page documents it; tests check the contract).
    names = [{"name": name, "nll": nll} for name, nll in zip(result.names, result.nlls)]
    if result.conditions is not None:  # conditions left out were drawn per name: say which
        for entry, conditions in zip(names, result.conditions):
            entry["conditions"] = conditions
    return FastJSONResponse({"model": model_name, "version": result.version, "seed": seed, "names": names,
                             "exhausted": result.exhausted})


async def _run(model: str | None, params: SamplingParams, manager: ModelManager,
               settings: Settings) -> tuple[str, GenerationResult]:
    loop = asyncio.get_running_loop()
    admit_by = loop.time() + settings.admission_wait_s
    for _ in range(SUBMIT_TRIES):
        served = manager.get(model)
        done = loop.create_future()

        def finish(result, done=done):  # on the engine thread
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(result))

        try:
            request = await submit_when_room(served.engine, lambda: served.engine.submit(params, finish),
                                             max(0.0, admit_by - loop.time()))
        except EngineStopped:
            continue
        try:
            result = await asyncio.wait_for(done, settings.request_timeout_s)
        except asyncio.TimeoutError:
            request.cancel()
            raise ApiError(504, f"generation took longer than {settings.request_timeout_s}s; ask for fewer names "
                                "or retry") from None
        except asyncio.CancelledError:  # the client went away
            request.cancel()
            raise
        if isinstance(result, EngineStopped):
            continue
        if isinstance(result, BaseException):
            raise result
        return served.model.name, result
    raise ApiError(503, "the model is being reloaded; retry", headers=RETRY_AFTER)


async def answer(body: bytes, content_type: str | None, manager: ModelManager, settings: Settings,
                 metrics: Metrics) -> Response:
    """From the body's bytes to the response, errors included."""
    try:
        return await generate_names(read_body(body, content_type, GenerateRequest), manager, settings, metrics)
    except ANSWERED as e:
        return error_response(e)


router = APIRouter(tags=["names"])
DOCUMENTED = dict(response_model=GenerateResponse, openapi_extra=json_body(GenerateRequest),
                  responses=error_responses(404, 413, 422, 429, 503, 504))


@router.post("/v1/generate", **DOCUMENTED)
@router.post("/generate", include_in_schema=False, **DOCUMENTED)
async def generate(request: Request, manager: ManagerDep, settings: SettingsDep, metrics: MetricsDep) -> Response:
    return await answer(await request.body(), request.headers.get("content-type"), manager, settings, metrics)
