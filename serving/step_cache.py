"""The step model of a version that has one (model_step.onnx): each step computes one new node per level from
the row's cached nodes instead of its whole context (step_rings.py has the rings, export/step_export.py
the graph). The caches live in the engine's row table beside the row's other columns: filled at admission,
moved when rows are compacted, dropped when rows retire.

Like the backend's forwards, steps run on fixed-shape chunks on single-threaded sessions. At load the step
path must give, on every probe row and in every chunk shape, the bits the full-context forward gives;
otherwise the version is served by full-context forwards as before (a warning says so). So caches never
change a name or its NLL.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from namegen.contract import ONNX_OUTPUT, STEP_LEFT, STEP_NODES, STEP_TAIL, StepModelSpec
from .step_rings import TAIL, StepRings, padding_nodes, run_sequences

from .backends import SMALL_CHUNK_ROWS, BackendError, ChunkedBackend

log = logging.getLogger("namegen.step_cache")
PROBE_MAX_LENGTH = 20  # probe sequences run past the block size, so every ring slot is reused


class StepModel:
    def __init__(self, path: Path, spec: StepModelSpec, backend: ChunkedBackend):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # see backends.py
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise BackendError(f"{path}: onnxruntime cannot load it ({e})") from None
        self.levels, self.width, self.backend = spec.levels, spec.width, backend
        self.padding = padding_nodes(lambda tail, left: self.run_chunk(tail, left, SMALL_CHUNK_ROWS),
                                     self.levels, self.width)

    def run_chunk(self, tail: np.ndarray, left: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(logits [rows, V], new nodes [rows, levels, width]) for rows <= size, run padded to `size` rows."""
        rows = len(tail)
        if rows != size:
            tail = np.concatenate([tail, np.zeros((size - rows, TAIL), dtype=np.int64)])
            left = np.concatenate([left, np.zeros((size - rows, self.levels, self.width), dtype=np.float32)])
        logits, nodes = self._session.run([ONNX_OUTPUT, STEP_NODES],
                                          {STEP_TAIL: np.ascontiguousarray(tail), STEP_LEFT: left})
        return logits[:rows], nodes[:rows]

    def new_caches(self, capacity: int) -> StepRings:
        return StepRings(capacity, self.padding)

    def step_map(self, context: np.ndarray, position: np.ndarray, caches: StepRings, then):
        """For each of the backend's chunks of the live rows [0, len(context)): one step, the new nodes into
        the rows' rings, then then(rows of the chunk, its logits) on the chunk's worker thread."""
        def run(rows: slice, size: int):
            logits, nodes = self.run_chunk(context[rows, -TAIL:], caches.left(rows, position[rows]), size)
            caches.store(rows, position[rows], nodes)
            return then(rows, logits)

        return self.backend.map_chunks(len(context), run)

    def matches_forward(self, vocab_size: int, block_size: int, seed: int = 0) -> bool:
        """Whether sequences fed through steps, chunked as the engine chunks them, give the full-context
        forward's logits bit for bit (as many sequences as take every chunk shape)."""
        rng = np.random.default_rng(seed)
        count = self.backend.probe_rows
        sequences = [rng.integers(1, vocab_size, rng.integers(1, PROBE_MAX_LENGTH)).tolist() for _ in range(count)]

        def step(tail, left):
            parts = self.backend.map_chunks(len(tail), lambda rows, size: self.run_chunk(tail[rows], left[rows], size))
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

        got = run_sequences(step, self.padding, sequences)
        contexts = []
        for s in sequences:
            window = [0] * block_size + s
            contexts += [window[i:i + block_size] for i in range(len(s) + 1)]
        return bool(np.array_equal(got, self.backend.forward(np.array(contexts, dtype=np.int64))))

    def close(self) -> None:
        self._session = None


def load_step_model(version_dir: Path, spec: StepModelSpec | None, backend: ChunkedBackend, vocab_size: int,
                    block_size: int) -> StepModel | None:
    """The version's step model if it has one and it passes the bit-identity check, else None."""
    if spec is None:
        return None
    model = StepModel(version_dir / spec.file, spec, backend)
    if not model.matches_forward(vocab_size, block_size):
        log.warning("%s: the step model's logits differ from the full-context forward here; computing every "
                    "step from the whole context", version_dir)
        return None
    return model
