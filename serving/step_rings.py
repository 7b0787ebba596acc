"""Driving a step model (export/step_export.py): the rings of past nodes each row keeps, and feeding whole
sequences through steps. Shared by export (its parity gate) and serving (the engine and its load check).

At step t (t characters fed so far) the left child of level l + 3 is the level-(l + 2) node computed
2**(l + 2) steps earlier (levels 1 and 2 come from the context's last four characters). Ring l holds a
row's last 2**(l + 2) such nodes, the node of step t in slot t % 2**(l + 2): a step reads its left child
from the slot it then overwrites with its new node. Before
the first step every slot holds the node of the all-boundary context (`padding_nodes`), which is what
the full-context model sees for a fresh row's 0-padded window.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

TAIL = 4  # context characters a step reads: the two newest pairs
# (tail int64 [rows, TAIL], left float32 [rows, levels, width]) -> (logits [rows, vocab], nodes like left)
StepFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def ring_sizes(levels: int) -> list[int]:
    return [2 ** (level + 2) for level in range(levels)]


def padding_nodes(step: StepFn, levels: int, width: int) -> np.ndarray:
    """float32 [levels, width]: every level's node of the all-boundary context. Each pass makes one more
    level right (level l's node needs level l - 1's), so `levels` passes make them all right."""
    left = np.zeros((1, levels, width), dtype=np.float32)
    for _ in range(levels):
        _, left = step(np.zeros((1, TAIL), dtype=np.int64), left)
    return left[0]


class StepRings:
    """Rows' rings as arrays [capacity, ring size, width], one per level; `columns` for a row table that
    compacts them with its other per-row arrays."""

    def __init__(self, capacity: int, padding: np.ndarray):
        self.padding = padding  # [levels, width]
        self.columns = [np.empty((capacity, size, padding.shape[1]), dtype=np.float32)
                        for size in ring_sizes(len(padding))]

    def reset(self, rows: slice) -> None:
        for ring, node in zip(self.columns, self.padding):
            ring[rows] = node

    def _slots(self, rows: slice, position: np.ndarray, size: int) -> np.ndarray:
        """Row indices into a ring viewed flat [capacity * size, width]: one gather of whole nodes."""
        first = rows.start or 0
        return (np.arange(first, first + len(position), dtype=np.int64) * size) + position % size

    def left(self, rows: slice, position: np.ndarray) -> np.ndarray:
        """float32 [rows, levels, width]: each row's left children at its step `position`."""
        out = np.empty((len(position), *self.padding.shape), dtype=np.float32)
        for level, ring in enumerate(self.columns):
            size = ring.shape[1]
            out[:, level] = ring.reshape(-1, ring.shape[2]).take(self._slots(rows, position, size), axis=0)
        return out

    def store(self, rows: slice, position: np.ndarray, nodes: np.ndarray) -> None:
        for level, ring in enumerate(self.columns):
            ring.reshape(-1, ring.shape[2])[self._slots(rows, position, ring.shape[1])] = nodes[:, level]


def run_sequences(step: StepFn, padding: np.ndarray, sequences: list[list[int]]) -> np.ndarray:
    """Logits float32 [sum(len + 1), vocab] of every sequence's every position, each sequence followed by
    the end token (0), in sequence order: the rows of training.data.build_contexts, fed through steps."""
    lengths = np.array([len(s) + 1 for s in sequences], dtype=np.int64)
    tokens = np.zeros((len(sequences), int(lengths.max())), dtype=np.int64)
    for i, s in enumerate(sequences):
        tokens[i, : len(s)] = s
    rings = StepRings(len(sequences), padding)
    rings.reset(slice(None))
    tail = np.zeros((len(sequences), TAIL), dtype=np.int64)
    out: list[np.ndarray] = []
    for t in range(tokens.shape[1]):  # every row every step; those already ended are left out afterwards
        position = np.full(len(sequences), t, dtype=np.int64)
        logits, nodes = step(tail, rings.left(slice(None), position))
        rings.store(slice(None), position, nodes)
        out.append(logits[lengths > t])
        tail[:, :-1] = tail[:, 1:].copy()
        tail[:, -1] = tokens[:, t]
    # Step t's rows are the live sequences in order; build_contexts' order is sequence-major.
    row_of = np.concatenate([np.flatnonzero(lengths > t) for t in range(tokens.shape[1])])
    return np.concatenate(out)[np.argsort(row_of, kind="stable")]
