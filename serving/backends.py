"""Forward passes: context int64 [rows, block_size] -> logits float32 [rows, vocab].

A conditional model's rows are wider: the context, then one index per condition (block_size counts both
here); the backend hands the model its two inputs, `context` and `condition`.

Every forward runs on chunks of fixed shapes (the last one padded), each chunk on one single-threaded
run. Matrix kernels may pick their blocking and reduction order from the shapes and the thread count,
so fixed shapes on single-threaded runs make a row's logits independent of its batch: the same seed
gives the same names whatever else the server is doing. The shapes are a ladder, `chunk_rows` halved
down to SMALL_CHUNK_ROWS (as an inference server keeps a few batch sizes it has prepared): a batch
runs as big chunks, then the largest shapes that fit what is left, and only the last few rows are
padded. Big chunks keep the per-call cost of a step small; the smaller shapes keep a small batch from
paying for a big one. A shape is used only after a check at load time that a row's logits are
bit-identical in it and in the big one, at any position.

Whether a model's forwards run here at all, or are looked up in a table computed with them at load,
is the runner's decision (runner.py).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from namegen.contract import ONNX_CONDITION, ONNX_FILE, ONNX_INPUT, ONNX_OUTPUT, PT2_FILE

T = TypeVar("T")
SMALL_CHUNK_ROWS = 64
log = logging.getLogger("namegen.backends")


class BackendError(Exception):
    pass


def smaller_shapes(chunk_rows: int) -> list[int]:
    """The ladder below chunk_rows: halves while above SMALL_CHUNK_ROWS, then SMALL_CHUNK_ROWS."""
    shapes, shape = [], chunk_rows // 2
    while shape > SMALL_CHUNK_ROWS:
        shapes.append(shape)
        shape //= 2
    return shapes + [SMALL_CHUNK_ROWS] if chunk_rows > SMALL_CHUNK_ROWS else shapes


class ChunkedBackend:
    """Splits a batch into fixed-shape chunks and runs them on a pool of single-threaded workers."""

    name = "base"

    def __init__(self, block_size: int, chunk_rows: int, threads: int):
        self.block_size = block_size
        self.chunk_rows = chunk_rows
        self.shapes = [chunk_rows]  # chunk shapes, largest first; check_shape_invariance adds the smaller ones
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"{self.name}-forward")

    def _run_chunk(self, context: np.ndarray) -> np.ndarray:  # [chunk rows, T] -> [chunk rows, V]
        raise NotImplementedError

    def _run_padded(self, context: np.ndarray, size: int) -> np.ndarray:
        if len(context) == size:
            return self._run_chunk(np.ascontiguousarray(context))
        padded = np.zeros((size, self.block_size), dtype=np.int64)
        padded[: len(context)] = context
        return self._run_chunk(padded)[: len(context)]

    def chunks(self, rows: int) -> list[tuple[int, int, int]]:
        """(start, stop, shape) of each chunk: big ones, then the largest shapes that fit the rest; the last
        rows, fewer than the smallest shape, padded to it."""
        plan, start = [], 0
        for shape in self.shapes:
            while rows - start >= shape:
                plan.append((start, start + shape, shape))
                start += shape
        if start < rows:
            plan.append((start, rows, self.shapes[-1]))
        return plan

    @property
    def probe_rows(self) -> int:
        """Rows whose chunks take every shape, the smallest one padded too: what load-time checks run."""
        return self.chunk_rows + sum(self.shapes[1:]) + 1

    def map_chunks(self, rows: int, fn: Callable[[slice, int], T]) -> list[T]:
        """fn(rows of the chunk, its shape) for each chunk of `rows`, in order, on the worker threads."""
        plan = self.chunks(rows)
        if len(plan) == 1:
            return [fn(slice(plan[0][0], plan[0][1]), plan[0][2])]
        return list(self._pool.map(lambda chunk: fn(slice(chunk[0], chunk[1]), chunk[2]), plan))

    def forward_map(self, context: np.ndarray, then: Callable[[slice, np.ndarray], T]) -> list[T]:
        """For each chunk, in order: then(rows of the chunk, its logits [rows, V]), run on the chunk's worker
        thread, so row-wise work after the forward (sampling) is parallel too."""
        return self.map_chunks(len(context), lambda rows, size: then(rows, self._run_padded(context[rows], size)))

    def check_shape_invariance(self, vocab_size: int | np.ndarray, seed: int = 0) -> list[int]:
        """Add the ladder's smaller shapes in which a row's logits are bit-identical to the big chunk's at any
        position; returns the shapes. vocab_size: the bound of every column, or of each (a conditional
        model's condition columns)."""
        rng = np.random.default_rng(seed)
        context = rng.integers(0, vocab_size, (self.chunk_rows, self.block_size), dtype=np.int64)
        big = self._run_chunk(context)
        shifted = np.roll(context, 37, axis=0)  # every row at another position
        shapes = [self.chunk_rows]
        for shape in smaller_shapes(self.chunk_rows):
            runs = [self._run_padded(shifted[i:i + shape], shape) for i in range(0, self.chunk_rows, shape)]
            if np.array_equal(np.roll(big, 37, axis=0), np.concatenate(runs)):
                shapes.append(shape)
            else:
                log.warning("%s: logits in %d-row chunks differ from %d-row ones here; not using that shape",
                            self.name, shape, self.chunk_rows)
        self.shapes = shapes
        return shapes

    def forward(self, context: np.ndarray) -> np.ndarray:
        return np.concatenate(self.forward_map(context, lambda rows, logits: logits))

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class OnnxRuntimeBackend(ChunkedBackend):
    name = "onnxruntime"

    def __init__(self, model_path: Path, block_size: int, chunk_rows: int, threads: int, device: str = "cpu",
                 context_columns: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # parallelism comes from chunks, see the module docstring
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        check_device(self.name, device)
        providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        try:
            self._session = ort.InferenceSession(str(model_path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise BackendError(f"{model_path}: onnxruntime cannot load it ({e})") from None
        inputs = [i.name for i in self._session.get_inputs()]
        expected = [ONNX_INPUT] if context_columns is None else [ONNX_INPUT, ONNX_CONDITION]
        if inputs != expected:
            raise BackendError(f"{model_path}: inputs {inputs}, but the manifest implies {expected}")
        self._split = context_columns
        super().__init__(block_size, chunk_rows, threads)

    def _run_chunk(self, context: np.ndarray) -> np.ndarray:
        if self._split is None:
            return self._session.run([ONNX_OUTPUT], {ONNX_INPUT: context})[0]
        return self._session.run([ONNX_OUTPUT], {ONNX_INPUT: np.ascontiguousarray(context[:, :self._split]),
                                                 ONNX_CONDITION: np.ascontiguousarray(context[:, self._split:])})[0]


class TorchBackend(ChunkedBackend):
    """Runs export's torch.export program (model.pt2); torch is imported only here."""

    name = "torch"

    def __init__(self, program_path: Path, block_size: int, chunk_rows: int, threads: int, device: str = "cpu",
                 context_columns: int | None = None):
        import torch

        check_device(self.name, device)
        self._torch = torch
        self._device = torch.device(device)
        torch.set_num_threads(1)  # parallelism comes from chunks, see the module docstring
        try:
            self._module = torch.export.load(str(program_path)).module().to(self._device)
        except Exception as e:  # torch raises many types for a bad archive
            raise BackendError(f"{program_path}: torch.export cannot load it ({e})") from None
        self._split = context_columns
        super().__init__(block_size, chunk_rows, threads)

    def _run_chunk(self, context: np.ndarray) -> np.ndarray:
        x = self._torch.from_numpy(context).to(self._device)
        inputs = (x,) if self._split is None else (x[:, :self._split], x[:, self._split:])
        with self._torch.inference_mode():
            logits = self._module(*inputs)
        return logits.float().cpu().numpy()


def check_device(kind: str, device: str) -> None:
    """Fail at start, with a clear message, when the requested device cannot be used."""
    if device != "cuda":
        return
    if kind == "torch":
        import torch

        if not torch.cuda.is_available():
            raise BackendError("NAMEGEN_DEVICE=cuda but torch sees no usable GPU (torch.cuda.is_available() is "
                               "False); use NAMEGEN_DEVICE=cpu")
    else:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendError("NAMEGEN_DEVICE=cuda but onnxruntime has no CUDA provider (install onnxruntime-gpu "
                               "with a working CUDA, or use NAMEGEN_DEVICE=cpu)")


WEIGHTS_FILE = {"onnxruntime": ONNX_FILE, "torch": PT2_FILE}  # what each backend loads from a version folder


def make_backend(kind: str, version_dir: Path, block_size: int, chunk_rows: int, threads: int,
                 device: str, conditions: int = 0) -> ChunkedBackend:
    """conditions: a conditional model's condition count; its rows are block_size + conditions wide."""
    backend = TorchBackend if kind == "torch" else OnnxRuntimeBackend
    return backend(version_dir / WEIGHTS_FILE[kind], block_size + conditions, chunk_rows, threads, device,
                   block_size if conditions else None)
