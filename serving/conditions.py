"""A conditional model's conditions as a prior: explain, and the exact marginal over omitted conditions.

Over the combinations c of condition values seen in training, with p(c) their training frequencies (the
manifest's condition_prior); conditions a request fixes restrict the combinations to those holding them.
- explain: p(c | name) is proportional to p(name | c) p(c); each condition's posterior is the sum over the
  combinations holding each of its values.
- marginal: p(name) = sum over c of p(c) p(name | c), what a request that leaves conditions out is scored
  with; per character, p(x_t | x_<t) = sum over c of p(c | x_<t) p(x_t | x_<t, c).
Both run one forward per combination, each over the request's rows, so memory stays one request's rows.
"""
from __future__ import annotations

import numpy as np

from .model import LoadedModel
from .request import InvalidRequest


def combinations(model: LoadedModel, fixed: tuple[int, ...], field: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(combinations int64 [C, k], their prior p(c) float64 [C], summing to 1) holding the fixed indices (0: not
    fixed, as LoadedModel.condition_indices gives them); InvalidRequest at `field` if no training record has them."""
    prior = [(combo, p) for combo, p in model.manifest.condition_prior
             if all(f in (0, c) for f, c in zip(fixed, combo))]
    if not prior:
        raise InvalidRequest(field, "no training record has the conditions given", None)
    p = np.array([p for _, p in prior])
    return np.array([combo for combo, _ in prior], dtype=np.int64), p / p.sum()


def _log_joint_per_row(model: LoadedModel, context: np.ndarray, targets: np.ndarray, combos: np.ndarray) -> np.ndarray:
    """log p(target | context, c) float64 [C, rows], one forward per combination."""
    out = np.empty((len(combos), len(targets)))
    for row, combo in enumerate(combos):
        context[:, model.block_size:] = combo
        out[row] = model.target_logp(context, targets)
    return out


def marginal_token_logp(model: LoadedModel, names: list[str], fixed: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """LoadedModel.token_logp with the conditions left out (0 in `fixed`) marginalised exactly: each
    character's log p(x_t | x_<t) under sum over c of p(c) p(name | c). (logp [N], targets, lengths)."""
    combos, prior = combinations(model, fixed, ("conditions",))
    context, targets, lengths = model.contexts([model.encode(name, ("names", i)) for i, name in enumerate(names)])
    per_row = _log_joint_per_row(model, context, targets, combos)  # [C, N]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # log p(c) + log p(x_<=t | c) within each name: a running sum, restarted at each name's first row.
    running = np.cumsum(per_row, axis=1)
    before_name = np.concatenate([np.zeros((len(combos), 1)), running[:, starts[1:] - 1]], axis=1)
    upto = running - np.repeat(before_name, lengths, axis=1) + np.log(prior)[:, None]
    logp = _logsumexp(upto) - _logsumexp(upto - per_row)
    return logp, targets, lengths


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """log sum over axis 0 of exp(x), float64."""
    top = x.max(axis=0)
    return top + np.log(np.exp(x - top).sum(axis=0))


def explain(model: LoadedModel, names: list[str], fixed: tuple[int, ...]) -> list[dict]:
    """Per name: {"posterior": {condition: {value: p}}, "most_likely": {condition: value}}.
    fixed: index per condition (0: not fixed), as LoadedModel.condition_indices gives it."""
    if not model.conditions:
        raise InvalidRequest(("explain",), f"model {model.name!r} was trained without conditions; there is nothing "
                                           "to explain", True)
    combos, prior = combinations(model, fixed, ("explain",))
    context, targets, lengths = model.contexts([model.encode(name, ("names", i)) for i, name in enumerate(names)])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    log_joint = np.add.reduceat(_log_joint_per_row(model, context, targets, combos), starts, axis=1) + \
        np.log(prior)[:, None]  # [C, names]: log p(name | c) + log p(c)
    posterior = np.exp(log_joint - log_joint.max(axis=0))
    posterior /= posterior.sum(axis=0)
    results = [{"posterior": {}, "most_likely": {}} for _ in names]
    for i, (condition, values) in enumerate(model.conditions):
        marginal = np.zeros((len(values), len(names)))
        np.add.at(marginal, combos[:, i] - 1, posterior)  # [values, names]
        for result, column in zip(results, marginal.T.tolist()):
            result["posterior"][condition] = {value: p for value, p in zip(values, column) if p > 0}
            result["most_likely"][condition] = values[int(np.argmax(column))]
    return results
