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


def seed_key(seed: int) -> int:
    """mix(seed): what a request's seed contributes to each of its samples' keys. splitmix64 on one
    Python int (a numpy call costs more than the arithmetic)."""
    mask = 2**64 - 1
    z = (seed + int(_GOLDEN)) & mask
    z = ((z ^ (z >> 30)) * int(_MIX1)) & mask
    z = ((z ^ (z >> 27)) * int(_MIX2)) & mask
    return z ^ (z >> 31)


def sample_keys(seed_keys: np.ndarray, sample_index: np.ndarray) -> np.ndarray:
    """Per-sample stream key: mix(mix(seed) ^ index), from seed_key(seed) of each row. uint64 [rows]."""
    return splitmix64(seed_keys ^ sample_index.astype(np.uint64))


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


class Distribution:
    """The model's distribution over the next character for R rows, as the sampler reads it: running sums
    of exp(shifted logits) laid out [V, R], so every reduction runs along the vocabulary in the same
    order for each row, vectorised across rows. Computed from logits here; TableRows looks it up."""

    def __init__(self, logits: np.ndarray):  # float32 [R, V]
        z = np.ascontiguousarray(logits.T)  # [V, R]
        z -= z.max(axis=0)
        self.z = z  # shifted logits, max 0
        self.weights = np.exp(z)
        self.cdf = _cumsum_over_vocab(self.weights)  # own array: the sampler rewrites special columns
        self.total = self.cdf[-1].copy()  # the model's normaliser per row

    def z_columns(self, columns: np.ndarray) -> np.ndarray:
        return self.z[:, columns]

    def weight_at(self, index: np.ndarray) -> np.ndarray:
        return np.take(self.weights, index * self.z.shape[1] + np.arange(self.z.shape[1]))

    def logp_at(self, index: np.ndarray) -> np.ndarray:
        """log p(index) under the untempered model, float64 [R]."""
        z = np.take(self.z, index * self.z.shape[1] + np.arange(self.z.shape[1]))
        return z.astype(np.float64) - np.log(self.total).astype(np.float64)


GUIDE_BUCKETS = 64  # guide-table cells per context: a draw starts its search at most a few entries short


class DistributionTable:
    """Every context's distribution, precomputed from a logits table [C, V] in one batch, as the sampler
    reads it: twice, as the model gives it and with the end token masked (rows still under min_length),
    so a plain draw (temperature 1, no top-k) is a handful of gathers. Tempered or truncated rows go
    through sample_step on TableRows, as computed distributions do. The results are bit for bit those of
    sample_step on Distribution(logits): LoadedModel.use_table checks it before serving from a table."""

    def __init__(self, logits_table: np.ndarray):
        contexts, vocab = logits_table.shape
        whole = Distribution(logits_table)
        no_end = _special_weights(whole.z, np.ones(contexts), np.zeros(contexts, dtype=np.int64),
                                  np.zeros(contexts, dtype=bool), np.empty(contexts, dtype=np.int64),
                                  np.arange(contexts))
        self.contexts, self.vocab = contexts, vocab
        self.z = np.ascontiguousarray(whole.z.T)  # [C, V]
        self.log_total = np.log(whole.total)  # [C] float32
        # Row c: context c as the model gives it; row C + c: the same with the end token masked. One more
        # column, +inf in the cdf, ends every search without a bounds check.
        both = np.concatenate([whole.cdf, _cumsum_over_vocab(no_end)], axis=1).T  # [2C, V]
        sentinel = np.full((2 * contexts, 1), np.inf, dtype=np.float32)
        self.padded_cdf = np.ascontiguousarray(np.concatenate([both, sentinel], axis=1))  # C order: ravel() is a view
        self.cdf = self.padded_cdf[:, :vocab]  # [2C, V]
        self.weights = np.ascontiguousarray(np.concatenate([whole.weights, no_end], axis=1).T)  # [2C, V]
        self.total = self.cdf[:, -1].copy()
        # guide[r, g]: entries of row r's cdf at or below (g / G) * total, in the sampler's float32 arithmetic.
        # Rounding is monotone, so a draw u >= g / G counts at least that many: its search starts there.
        cut = np.float32(1 / GUIDE_BUCKETS) * np.arange(GUIDE_BUCKETS, dtype=np.float32)
        thresholds = cut[None, :] * self.total[:, None]  # [2C, G]
        guide = np.zeros(thresholds.shape, dtype=np.int16)  # int16: MAX_VOCAB
        for column in self.cdf.T:
            guide += column[:, None] <= thresholds
        self.guide = guide.astype(np.int8 if vocab < 127 else np.int16).ravel()

    @staticmethod
    def bytes_per_context(vocab: int) -> int:
        """Memory this table takes per context (what NAMEGEN_LOGITS_TABLE_MB must cover besides the logits)."""
        guide = 1 if vocab < 127 else 2
        return 4 * vocab + 4 + 2 * (4 * (2 * vocab + 1) + 4 + guide * GUIDE_BUCKETS)

    def rows(self, index: np.ndarray) -> TableRows:
        return TableRows(self, index)

    def sample(self, index: np.ndarray, u: np.ndarray, temperature: np.ndarray, top_k: np.ndarray,
               end_allowed: np.ndarray, forced: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """sample_step for rows whose contexts are table rows `index` (same arguments, same results)."""
        chosen = self._inverse_cdf(np.where(end_allowed, index, index + self.contexts), u)
        special = np.flatnonzero((temperature != 1.0) | (top_k != 0))
        if special.size:
            chosen[special] = sample_step(self.rows(index[special]), u[special], temperature[special],
                                          top_k[special], end_allowed[special], np.full(special.size, -1))[0]
        take = forced >= 0
        chosen[take] = forced[take]
        return chosen, self.logp(index, chosen)

    def logp(self, index: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """log p(chosen) under the untempered model of table rows `index`, as Distribution.logp_at computes it."""
        z = self.z.ravel()[index * self.vocab + chosen]
        return z.astype(np.float64) - self.log_total[index].astype(np.float64)

    def _inverse_cdf(self, row: np.ndarray, u: np.ndarray) -> np.ndarray:
        """count(cdf[row] <= float32(u) * total[row]), capped at V - 1: sample_step's draw, by guided search."""
        vocab = self.vocab
        u32 = u.astype(np.float32)
        threshold = u32 * self.total[row]
        bucket = np.minimum((u32 * np.float32(GUIDE_BUCKETS)).astype(np.int64), GUIDE_BUCKETS - 1)
        start = row * (vocab + 1)  # row's first entry in the padded cdf
        at = start + self.guide[row * GUIDE_BUCKETS + bucket]
        cdf = self.padded_cdf.ravel()
        stepping = np.flatnonzero(cdf[at] <= threshold)
        while stepping.size:  # step past entries at or below the threshold; rarely more than one
            at[stepping] += 1
            stepping = stepping[cdf[at[stepping]] <= threshold[stepping]]
        index = np.minimum(at - start, vocab - 1)
        unlucky = np.flatnonzero(self.weights.ravel()[row * vocab + index] == 0)  # see sample_step
        if unlucky.size:
            index[unlucky] = np.count_nonzero(self.cdf[row[unlucky]] < self.total[row[unlucky], None], axis=1)
        return index


class TableRows:
    """The Distribution interface over rows whose contexts are table rows `index`: gathers, no exp."""

    def __init__(self, table: DistributionTable, index: np.ndarray):
        self.table, self.index = table, index
        self.cdf = np.ascontiguousarray(table.cdf[index].T)  # [V, R]
        self.total = self.cdf[-1].copy()

    def z_columns(self, columns: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.table.z[self.index[columns]].T)

    def weight_at(self, index: np.ndarray) -> np.ndarray:
        return self.table.weights[self.index, index]

    def logp_at(self, index: np.ndarray) -> np.ndarray:
        return self.table.logp(self.index, index)


def sample_step(dist: Distribution | TableRows, u: np.ndarray, temperature: np.ndarray, top_k: np.ndarray,
                end_allowed: np.ndarray, forced: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One character per row by inverse CDF of the tempered, top-k-truncated model distribution.

    u float64 [rows]; temperature float64 [rows] (below GREEDY_BELOW: greedy); top_k int [rows] (0: off);
    end_allowed bool [rows] (False masks index 0, the end token, for min_length); forced int64 [rows]
    (>= 0: take this character instead of drawing one, e.g. a prefix).
    Returns (chosen int64 [rows], its log-probability under the untempered model float64 [rows]).
    """
    cdf = dist.cdf
    vocab, rows = cdf.shape
    chosen = np.empty(rows, dtype=np.int64)
    special = np.flatnonzero((temperature != 1.0) | (top_k != 0) | ~end_allowed)
    if special.size:
        special_weights = _special_weights(dist.z_columns(special), temperature[special], top_k[special],
                                           end_allowed[special], chosen, special)
        cdf[:, special] = _cumsum_over_vocab(special_weights)
    total = cdf[-1]
    sampled = temperature >= GREEDY_BELOW
    below = cdf <= u.astype(np.float32) * total  # [V, R]: entries before the drawn one
    index = np.minimum(below.sum(axis=0, dtype=np.int32 if vocab > 127 else np.int8), vocab - 1).astype(np.int64)
    weight = dist.weight_at(index)
    if special.size:
        weight[special] = np.take(special_weights, index[special] * special.size + np.arange(special.size))
    unlucky = weight == 0  # u * total rounded up onto a zero-weight tail
    if unlucky.any():
        index[unlucky] = np.count_nonzero(cdf[:, unlucky] < total[unlucky], axis=0)
    chosen[sampled] = index[sampled]
    take = forced >= 0
    chosen[take] = forced[take]
    return chosen, dist.logp_at(chosen)


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
