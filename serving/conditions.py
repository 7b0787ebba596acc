"""What a name sounds like to a conditional model: p(condition | name) by Bayes' rule.

p(c | name) is proportional to p(name | c) p(c), over the combinations c of condition values seen in
training, with p(c) their training frequencies (the manifest's condition_prior); each condition's
posterior is the sum over the combinations holding each of its values. Conditions the request fixes
restrict the combinations to those holding the fixed values.
"""
from __future__ import annotations

import numpy as np

from .model import LoadedModel
from .request import InvalidRequest


def explain(model: LoadedModel, names: list[str], fixed: tuple[int, ...]) -> list[dict]:
    """Per name: {"posterior": {condition: {value: p}}, "most_likely": {condition: value}}.
    fixed: index per condition (0: not fixed), as LoadedModel.condition_indices gives it."""
    if not model.conditions:
        raise InvalidRequest(("explain",), f"model {model.name!r} was trained without conditions; there is nothing "
                                           "to explain", True)
    prior = [(combo, p) for combo, p in model.manifest.condition_prior
             if all(f in (0, c) for f, c in zip(fixed, combo))]
    if not prior:
        raise InvalidRequest(("explain",), "no training record has the conditions given", True)
    context, targets, lengths = model.contexts([model.encode(name, ("names", i)) for i, name in enumerate(names)])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    block = model.block_size
    log_joint = np.empty((len(prior), len(names)))  # log p(name | c) + log p(c)
    for row, (combo, p) in enumerate(prior):  # one forward per combination: memory stays one request's rows
        context[:, block:] = combo
        log_joint[row] = np.add.reduceat(model.target_logp(context, targets), starts) + np.log(p)
    posterior = np.exp(log_joint - log_joint.max(axis=0))
    posterior /= posterior.sum(axis=0)
    combos = np.array([combo for combo, _ in prior])  # [C, k]
    results = [{"posterior": {}, "most_likely": {}} for _ in names]
    for i, (condition, values) in enumerate(model.conditions):
        marginal = np.zeros((len(values), len(names)))
        np.add.at(marginal, combos[:, i] - 1, posterior)  # [values, names]
        for result, column in zip(results, marginal.T.tolist()):
            result["posterior"][condition] = {value: p for value, p in zip(values, column) if p > 0}
            result["most_likely"][condition] = values[int(np.argmax(column))]
    return results
