"""POST /v1/score: how likely the model finds each name, per character and as a whole."""
from __future__ import annotations

import math

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ..conditions import explain as explain_conditions
from ..conditions import marginal_token_logp
from ..model import LoadedModel
from .body import read_body
from .deps import ManagerDep
from .generate import FastJSONResponse
from .schemas import ScoreRequest, ScoreResponse, error_responses, json_body

router = APIRouter(tags=["names"])


def score_names(model: LoadedModel, names: list[str], conditions: tuple = (), explain: bool = False) -> list[dict]:
    """Each name's NLL, per-character NLL and perplexity, and every character's probability (one forward);
    under the given (condition, value) pairs, and a conditional model's other conditions marginalised exactly
    (a forward per combination of their values); with explain, each name's posterior over the conditions."""
    condition = model.condition_indices(conditions)
    posteriors = explain_conditions(model, names, condition) if explain else None
    if 0 in condition:
        logp, targets, lengths = marginal_token_logp(model, names, condition)
    else:
        logp, targets, lengths = model.token_logp(names, condition)
    results, start = [], 0
    for name, count in zip(names, lengths.tolist()):
        char_logp = logp[start:start + count]
        chars = [{"char": model.vocab[t], "p": math.exp(lp), "nll": -lp}
                 for t, lp in zip(targets[start:start + count].tolist(), char_logp.tolist())]
        nll = float(-char_logp.sum())
        results.append({"name": name, "nll": nll, "nll_per_char": nll / count, "perplexity": math.exp(nll / count),
                        "chars": chars, **(posteriors[len(results)] if posteriors else {})})
        start += count
    return results


DOCUMENTED = dict(response_model=ScoreResponse, openapi_extra=json_body(ScoreRequest),
                  responses=error_responses(404, 413, 422, 503))


@router.post("/v1/score", **DOCUMENTED)
@router.post("/score", include_in_schema=False, **DOCUMENTED)
async def score(request: Request, manager: ManagerDep) -> FastJSONResponse:
    body = read_body(await request.body(), request.headers.get("content-type"), ScoreRequest)
    model = manager.get(body.model).model
    results = await run_in_threadpool(score_names, model, body.names, body.condition_pairs(), body.explain)
    return FastJSONResponse({"model": model.name, "version": model.version, "results": results})  # ScoreResponse
