"""POST /v1/score: how likely the model finds each name, per character and as a whole."""
from __future__ import annotations

import math

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from ..model import LoadedModel
from .deps import ManagerDep
from .generate import FastJSONResponse
from .schemas import ScoreRequest, ScoreResponse

router = APIRouter(tags=["names"])


def score_names(model: LoadedModel, names: list[str]) -> list[dict]:
    """Each name's NLL, per-character NLL and perplexity, and every character's probability (one forward)."""
    logp, targets, lengths = model.token_logp(names)
    results, start = [], 0
    for name, count in zip(names, lengths.tolist()):
        char_logp = logp[start:start + count]
        chars = [{"char": model.vocab[t], "p": math.exp(lp), "nll": -lp}
                 for t, lp in zip(targets[start:start + count].tolist(), char_logp.tolist())]
        nll = float(-char_logp.sum())
        results.append({"name": name, "nll": nll, "nll_per_char": nll / count, "perplexity": math.exp(nll / count),
                        "chars": chars})
        start += count
    return results


@router.post("/v1/score", response_model=ScoreResponse)
@router.post("/score", response_model=ScoreResponse, include_in_schema=False)
async def score(body: ScoreRequest, manager: ManagerDep) -> FastJSONResponse:
    model = manager.get(body.model).model
    results = await run_in_threadpool(score_names, model, body.names)
    return FastJSONResponse({"model": model.name, "version": model.version, "results": results})  # ScoreResponse
