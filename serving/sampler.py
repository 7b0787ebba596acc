"""Logits -> characters, one row at a time in spirit, vectorised in practice.

Every draw comes from a counter-based generator keyed by (request seed, sample index, position), so a
row's character never depends on which other rows share its batch. Nothing here knows about batching.
"""
from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_UNIT = 2.0**-53
GREEDY_BELOW = 1e-30  # temperatures below this are greedy: the limit of sampling as T -> 0


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function: a bijective mix of a uint64 (wrapping arithmetic is intended)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def sample_keys(seed: int, sample_index: np.ndarray) -> np.ndarray:
    """Per-sample stream key: mix(mix(seed) ^ index). uint64 [rows]."""
    seed_key = splitmix64(np.array([seed], dtype=np.uint64))
    return splitmix64(seed_key ^ sample_index.astype(np.uint64))


def uniforms(keys: np.ndarray, position: np.ndarray) -> np.ndarray:
    """u in [0, 1) for each row's character at `position`: float64 [rows], 53 random bits each."""
    bits = splitmix64(keys ^ position.astype(np.uint64))
    return (bits >> np.uint64(11)).astype(np.float64) * _UNIT


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """float64 [rows, vocab] log-probabilities of float32 logits (scoring: exact, not fast)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


def sample_step(logits: np.ndarray, u: np.ndarray, temperature: np.ndarray, top_k: np.ndarray,
                end_allowed: np.ndarray, forced: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One character per row by inverse CDF of the tempered, top-k-truncated model distribution.

    logits float32 [rows, vocab]; u float64 [rows]; temperature float64 [rows] (below GREEDY_BELOW: greedy); top_k int
    [rows] (0: off); end_allowed bool [rows] (False masks index 0, the end token, for min_length);
    forced int64 [rows] (>= 0: take this character instead of drawing one, e.g. a prefix).
    Returns (chosen int64 [rows], its log-probability under the untempered model float64 [rows]).
    Work is done on the transpose [vocab, rows], so every reduction runs along the vocabulary in the
    same order for each row, vectorised across rows.
    """
    z = np.ascontiguousarray(logits.T)  # [V, R]
    z -= z.max(axis=0)
    weights = np.exp(z)
    cdf = _cumsum_over_vocab(weights)
    vocab, rows = z.shape
    chosen = np.empty(rows, dtype=np.int64)

    plain = (temperature == 1.0) & (top_k == 0) & end_allowed
    if not plain.all():
        special = np.flatnonzero(~plain)
        weights[:, special] = _special_weights(z[:, special], temperature[special], top_k[special],
                                               end_allowed[special], chosen, special)
        cdf_plain_total = cdf[-1].copy()  # the model's normaliser, before reshaping
        cdf[:, special] = _cumsum_over_vocab(weights[:, special])
    else:
        cdf_plain_total = cdf[-1]
    total = cdf[-1]
    sampled = temperature >= GREEDY_BELOW
    below = cdf <= u.astype(np.float32) * total  # [V, R]: entries before the drawn one
    index = np.minimum(below.sum(axis=0, dtype=np.int32 if vocab > 127 else np.int8), vocab - 1)
    flat = index.astype(np.int64) * rows + np.arange(rows)  # [index, row] in the [V, R] arrays
    unlucky = np.take(weights, flat) == 0  # u * total rounded up onto a zero-weight tail
    if unlucky.any():
        index[unlucky] = np.count_nonzero(cdf[:, unlucky] < total[unlucky], axis=0)
    chosen[sampled] = index[sampled]
    take = forced >= 0
    chosen[take] = forced[take]
    flat = chosen * rows + np.arange(rows)
    logp = np.take(z, flat).astype(np.float64) - np.log(cdf_plain_total).astype(np.float64)
    return chosen, logp


def _cumsum_over_vocab(weights: np.ndarray) -> np.ndarray:
    """np.cumsum(weights, axis=0), row by row of the vocabulary: numpy's accumulate along axis 0 is
    several times slower than one vectorised add per vocabulary entry."""
    cdf = np.empty_like(weights)
    cdf[0] = weights[0]
    for i in range(1, len(weights)):
        np.add(cdf[i - 1], weights[i], out=cdf[i])
    return cdf


def _special_weights(zs, temperature, top_k, end_allowed, chosen, columns):
    """Sampling weights [V, S] for rows that are tempered, truncated, greedy or may not end yet.
    Greedy rows get their choice written into `chosen` (at `columns`) directly."""
    vocab = zs.shape[0]
    zs = zs.copy()
    zs[0, ~end_allowed] = -np.inf
    truncate = (top_k > 0) & (top_k < vocab)
    if truncate.any():
        zt = zs[:, truncate]
        descending = -np.sort(-zt, axis=0)
        threshold = descending[top_k[truncate] - 1, np.arange(zt.shape[1])]
        zs[:, truncate] = np.where(zt >= threshold, zt, -np.inf)  # ties at the k-th value stay
    greedy = temperature < GREEDY_BELOW  # the float32 division below would round it to 0
    if greedy.any():
        chosen[columns[greedy]] = zs[:, greedy].argmax(axis=0)  # ties: lowest index
    zs -= zs.max(axis=0)
    return np.exp(zs / np.where(greedy, 1.0, temperature).astype(np.float32))
