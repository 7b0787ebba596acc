"""The model runner: a batch of rows -> each row's next character, for one model version.

It hides where distributions come from. A model with a short context over a small vocabulary has few
possible contexts (the mlp: 27**3 = 19,683): at load their logits are computed once, in the backend's
fixed-shape chunks, and the sampler's view of each is precomputed (sampler.DistributionTable); a step
is then a few gathers on the engine thread. Both are checked bit for bit before use (against the chunked
forward, and against sampling from computed logits), so a table never changes a name. Otherwise every
step runs the backend's forward and samples on each chunk's forward thread.
"""
from __future__ import annotations

import logging

import numpy as np

from .backends import ChunkedBackend
from .sampler import Distribution, DistributionTable, sample_step, uniforms
from .scheduler import Batch
from .step_cache import StepModel

log = logging.getLogger("namegen.runner")


class ModelRunner:
    def __init__(self, backend: ChunkedBackend, vocab_size: int, block_size: int, table_budget_bytes: int = 0,
                 condition_sizes: tuple[int, ...] = ()):
        self.backend, self.vocab_size, self.block_size = backend, vocab_size, block_size
        self.logits_table: np.ndarray | None = None  # float32 [contexts, vocab], see tabulate
        self.table: DistributionTable | None = None  # the sampler's view of logits_table, see use_table
        # A row's digits: its characters (base vocab), then a conditional model's condition indices (base:
        # the condition's values + 1), least significant last. Digits -> table row, and back.
        self._radices = np.array([vocab_size] * block_size + list(condition_sizes), dtype=np.int64)
        self._powers = np.append(np.cumprod(self._radices[:0:-1])[::-1], 1).astype(np.int64)
        self.contexts = int(np.prod(self._radices, dtype=np.float64))
        backend.check_shape_invariance(self._radices if condition_sizes else vocab_size)
        self.steps: StepModel | None = None  # set by load_version when the version's step model may be used
        # The budget covers the logits and the sampler's precomputed view of them, about 8x as much.
        view = self.contexts * DistributionTable.bytes_per_context(vocab_size)
        if self.tabulate(table_budget_bytes - view):
            self.use_table()

    def context_index(self, context: np.ndarray) -> np.ndarray:
        """Table row of each context int64 [rows, width]: its digits (see __init__) as one number."""
        index = context[:, 0] * self._powers[0]
        for j in range(1, len(self._powers)):
            index += context[:, j] * self._powers[j]
        return index

    def tabulate(self, max_bytes: int, seed: int = 0) -> bool:
        """Compute every context's logits if they fit in max_bytes and looking them up gives bit for bit
        what the chunked forward gives; afterwards logits() reads the table."""
        contexts = self.contexts
        if contexts * self.vocab_size * 4 > max_bytes:
            return False
        every = (np.arange(contexts, dtype=np.int64)[:, None] // self._powers) % self._radices
        table = self.backend.forward(every)
        rng = np.random.default_rng(seed)
        probe = rng.integers(0, self._radices, (self.backend.probe_rows, len(self._radices)))
        if not np.array_equal(table[self.context_index(probe)], self.backend.forward(probe)):
            log.warning("%s: tabulated logits differ from the chunked forward; not using the table", self.backend.name)
            return False
        self.logits_table = table
        return True

    def use_table(self, seed: int = 0) -> bool:
        """Precompute the sampler's view of every context, after checking that sampling from it gives bit
        for bit what sampling from computed logits gives."""
        table = DistributionTable(self.logits_table)
        rng = np.random.default_rng(seed)
        rows = 4 * self.backend.chunk_rows
        index = rng.integers(0, len(self.logits_table), rows)
        params = (rng.random(rows), rng.choice([1.0, 1.0, 0.5, 2.0, 0.0], rows), rng.choice([0, 0, 3], rows),
                  rng.random(rows) < 0.8, np.where(rng.random(rows) < 0.1, 1, -1))
        looked_up = sample_step(table.rows(index), *params)
        computed = sample_step(Distribution(self.logits_table[index]), *params)
        if not all(np.array_equal(a, b) for a, b in zip(looked_up, computed)):
            log.warning("%s: sampling from the precomputed table differs from sampling from logits; computing "
                        "distributions every step", self.backend.name)
            return False
        self.table = table
        return True

    def logits(self, context: np.ndarray) -> np.ndarray:
        """float32 [rows, vocab] for context int64 [rows, block_size] (scoring, checks)."""
        if self.logits_table is not None:
            return self.logits_table[self.context_index(context)]
        return self.backend.forward(context)

    def step_caches(self, capacity: int):
        """Rings for an engine's rows when steps run on the step model (step_rings.StepRings), else None."""
        return self.steps.new_caches(capacity) if self.steps is not None and self.table is None else None

    def next_chars(self, batch: Batch, caches=None) -> tuple[np.ndarray, np.ndarray]:
        """(character int64 [rows], its log-probability under the untempered model float64 [rows]). With
        caches (step_caches'), rows [0, batch.rows) of them are the batch's rows and steps update them."""
        if batch.guidance.any():  # only conditional models' rows, which have no step caches
            return self._guided_chars(batch, np.flatnonzero(batch.guidance))
        if self.table is not None:  # a few gathers, on this thread
            return self.table.sample(self.context_index(batch.context), uniforms(batch.keys, batch.position),
                                     batch.temperature, batch.top_k, batch.end_allowed, batch.forced)

        def sample(chunk: slice, logits: np.ndarray):  # runs on the chunk's forward thread
            return sample_step(Distribution(logits), uniforms(batch.keys[chunk], batch.position[chunk]),
                               batch.temperature[chunk], batch.top_k[chunk], batch.end_allowed[chunk],
                               batch.forced[chunk])

        if caches is not None:
            parts = self.steps.step_map(batch.context, batch.position, caches, sample)
        elif self.logits_table is not None:  # tabulated, but the sampler's view failed its check
            index = self.context_index(batch.context)
            parts = self.backend.map_chunks(batch.rows, lambda rows, _: sample(rows, self.logits_table[index[rows]]))
        else:
            parts = self.backend.forward_map(batch.context, sample)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _guided_chars(self, batch: Batch, guided: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """next_chars with classifier-free guidance: a row of scale w draws from logits(c) + w * (logits(c) -
        logits(c')), c its conditions and c' the same with those its request named as "any" (conditions it left
        out were drawn, and stay), which favours what sets the named ones apart. Its log-probability stays the
        model's under c, as with temperature. Unguided rows draw from logits(c), as next_chars does (bit for
        bit: the table's draws are checked equal to draws from computed logits)."""
        unconditioned = batch.context[guided].copy()
        unconditioned[:, self.block_size:] *= batch.named[guided] == 0
        logits = self.logits(np.concatenate([batch.context, unconditioned]))  # one forward (or lookup) for both
        conditioned, negative = logits[:batch.rows], logits[batch.rows:]
        steered = conditioned.copy()
        steered[guided] += batch.guidance[guided, None] * (conditioned[guided] - negative)  # float32, row by row
        is_guided = batch.guidance != 0

        def sample(rows: slice, _shape: int):  # runs on the chunk's forward thread
            chosen, logp = sample_step(Distribution(steered[rows]), uniforms(batch.keys[rows], batch.position[rows]),
                                       batch.temperature[rows], batch.top_k[rows], batch.end_allowed[rows],
                                       batch.forced[rows])
            mine = np.flatnonzero(is_guided[rows])
            if mine.size:
                logp[mine] = Distribution(conditioned[rows][mine]).logp_at(chosen[mine])
            return chosen, logp

        parts = self.backend.map_chunks(batch.rows, sample)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def close(self) -> None:
        self.backend.close()
        if self.steps is not None:
            self.steps.close()
