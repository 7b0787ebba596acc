"""The sampler: looking distributions up in the precomputed table draws exactly what computing them draws."""
import numpy as np

from serving.sampler import GUIDE_BUCKETS, Distribution, DistributionTable, sample_step


def awkward_logits(vocab=27, seed=0):
    """Contexts that stress an inverse CDF: peaked, flat, underflowing tails, ties, many tiny entries."""
    rng = np.random.default_rng(seed)
    rows = [rng.normal(0, 3, vocab) for _ in range(200)]
    rows.append(np.zeros(vocab))  # flat: a boundary in every other guide cell
    peaked = np.full(vocab, -30.0)
    peaked[5] = 10.0
    rows.append(peaked)
    underflow = np.full(vocab, -200.0)  # exp underflows to 0 for all but two entries
    underflow[[0, 26]] = 0.0
    rows.append(underflow)
    end_only = np.full(vocab, -200.0)  # masking the end token leaves nothing but zero weights
    end_only[0] = 0.0
    rows.append(end_only)
    tiny_tail = np.concatenate([[8.0], np.full(vocab - 1, -4.0)])  # many boundaries in the last cells
    rows.append(tiny_tail)
    rows.append(np.round(rng.normal(0, 1, vocab)))  # ties
    return np.array(rows, dtype=np.float32)


def edge_uniforms(table, index, rng):
    """Random draws plus draws exactly on and next to guide-cell edges and cdf boundaries."""
    total = table.total[index].astype(np.float64)
    at_boundary = table.cdf[index, rng.integers(0, table.vocab, len(index))] / total
    cell_edge = rng.integers(0, GUIDE_BUCKETS + 1, len(index)) / GUIDE_BUCKETS
    u = np.concatenate([rng.random(len(index)), at_boundary, np.nextafter(at_boundary, 0), cell_edge,
                        np.nextafter(cell_edge, 0), np.zeros(len(index)), np.full(len(index), 1 - 2**-53)])
    return np.clip(u, 0, 1 - 2**-53)


def test_table_draws_equal_computed_draws_for_awkward_distributions():
    logits = awkward_logits()
    table = DistributionTable(logits)
    rng = np.random.default_rng(1)
    index = np.tile(np.arange(len(logits)), 40)
    u = edge_uniforms(table, index, rng)
    rows = len(u)
    index = np.resize(index, rows)
    cases = {
        "plain": (np.ones(rows), np.zeros(rows, dtype=np.int64), np.ones(rows, dtype=bool), np.full(rows, -1)),
        "min_length": (np.ones(rows), np.zeros(rows, dtype=np.int64), rng.random(rows) < 0.5, np.full(rows, -1)),
        "mixed": (rng.choice([1.0, 1.0, 0.5, 2.0, 0.0], rows), rng.choice([0, 0, 1, 3], rows),
                  rng.random(rows) < 0.7, np.where(rng.random(rows) < 0.1, 4, -1)),
    }
    for name, (temperature, top_k, end_allowed, forced) in cases.items():
        looked_up = table.sample(index, u, temperature, top_k, end_allowed, forced)
        computed = sample_step(Distribution(logits[index]), u, temperature, top_k, end_allowed, forced)
        assert np.array_equal(looked_up[0], computed[0]), name
        assert np.array_equal(looked_up[1], computed[1]), name  # log-probabilities, bit for bit


def test_table_draws_follow_the_distribution():
    logits = awkward_logits()[:3]
    table = DistributionTable(logits)
    rng = np.random.default_rng(2)
    draws = 200_000
    chosen, _ = table.sample(np.zeros(draws, dtype=np.int64), rng.random(draws), np.ones(draws),
                             np.zeros(draws, dtype=np.int64), np.ones(draws, dtype=bool), np.full(draws, -1))
    p = np.exp(logits[0] - logits[0].max())
    p /= p.sum()
    frequency = np.bincount(chosen, minlength=len(p)) / draws
    assert np.abs(frequency - p).max() < 0.01
