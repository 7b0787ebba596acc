"""The engine: one scheduler thread per served model version, continuous (iteration-level) batching.

Each step gathers the active rows of every in-flight request (up to max_batch_rows), runs one forward,
samples one character per row, retires finished rows and admits waiting requests into the freed rows.
A row is one sample of one request; its draws depend only on (seed, sample index, position), and a
request's answer is the first n accepted samples in sample-index order, so results never depend on
batching, arrival order or what else is running. The engine knows nothing about HTTP.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .model import LoadedModel
from .sampler import Distribution, sample_keys, sample_step, seed_key, uniforms

log = logging.getLogger("namegen.engine")


class QueueFull(Exception):
    pass


class EngineStopped(Exception):
    pass


@dataclass(frozen=True)
class SamplingParams:
    n: int
    seed: int
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    prefix: str = ""
    min_length: int = 1
    max_length: int = 32
    unique: bool = False
    exclude_training: bool = False


@dataclass
class GenerationResult:
    names: list[str]
    nlls: list[float]  # each name's NLL in nats under the model, end token included
    version: str
    exhausted: bool  # the attempt budget ran out before n names were accepted


PENDING, ACCEPTED, REJECTED = 0, 1, 2  # a sample's status in its request


@dataclass(eq=False)
class GenerationRequest:
    """A request's bookkeeping, by sample index: launched, finished (accepted or rejected), settled."""

    params: SamplingParams
    max_attempts: int
    on_done: Callable[[GenerationResult | BaseException], None]
    launched: int = 0  # next sample index
    live: int = 0  # rows in flight
    frontier: int = 0  # samples below it are settled: finished, and (unique) checked in index order
    accepted: int = 0  # accepted samples below the frontier
    rejected: int = 0
    status: np.ndarray = field(init=False)  # per sample index: PENDING, ACCEPTED or REJECTED
    names: np.ndarray = field(init=False)  # per sample index, once finished
    nlls: np.ndarray = field(init=False)
    seen: set[str] = field(default_factory=set)  # unique: names accepted so far
    seed_key: int = field(init=False)  # mixes into every sample's stream key (sampler.sample_keys)
    finished: bool = False
    cancelled: bool = False  # set by the caller (deadline); rows are dropped at the next step
    slot: int = -1  # key in the engine's request table while it has rows
    started: bool = False  # has had rows; until then it counts against max_queue
    waiting: bool = True  # in the engine's queue of requests that want rows

    def __post_init__(self):
        self.seed_key = seed_key(self.params.seed)
        size = min(self.params.n, self.max_attempts)  # room for n samples; rejections grow it in launch()
        self.status, self.names, self.nlls = (np.zeros(size, dtype=np.int8), np.zeros(size, dtype=object),
                                              np.zeros(size, dtype=np.float64))

    def rows_wanted(self) -> int:
        if self.finished or self.cancelled:
            return 0
        hopeful = self.launched - self.rejected  # samples that may still be accepted
        return max(0, min(self.params.n - hopeful, self.max_attempts - self.launched))

    def launch(self, count: int) -> int:
        """Take the next `count` sample indices, with room to record them; returns the first."""
        if self.launched + count > len(self.status):
            size = min(max(2 * len(self.status), self.launched + count), self.max_attempts)
            for column in ("status", "names", "nlls"):
                grown = np.zeros(size, dtype=getattr(self, column).dtype)
                grown[: self.launched] = getattr(self, column)[: self.launched]
                setattr(self, column, grown)
        first = self.launched
        self.launched += count
        self.live += count
        return first

    def resolve(self, indices: np.ndarray, names: list[str], nlls: np.ndarray, ended: np.ndarray,
                training_names: frozenset[str]) -> None:
        """Record finished samples (ended=False: hit max_length) and move the frontier over settled ones."""
        if self.params.exclude_training:
            ended = ended & np.array([name not in training_names for name in names], dtype=bool)
        self.status[indices] = REJECTED - ended  # ACCEPTED where ended
        self.names[indices] = names
        self.nlls[indices] = nlls
        self.rejected += len(names) - int(np.count_nonzero(ended))
        self.live -= len(names)
        start = self.frontier
        # Acceptance in sample-index order is what makes the answer independent of batching.
        self.frontier = self.launched if not self.live else \
            start + int(np.argmax(self.status[start:self.launched] == PENDING))
        if not self.params.unique:
            self.accepted += int(np.count_nonzero(self.status[start:self.frontier] == ACCEPTED))
            return
        newly = start + np.flatnonzero(self.status[start:self.frontier] == ACCEPTED)
        for index, name in zip(newly.tolist(), self.names[newly].tolist()):
            if self.accepted >= self.params.n:
                return
            if name in self.seen:
                self.status[index] = REJECTED
                self.rejected += 1
            else:
                self.seen.add(name)
                self.accepted += 1

    @property
    def complete(self) -> bool:
        return self.accepted >= self.params.n or self.frontier >= self.max_attempts

    def answer(self) -> tuple[list[str], list[float]]:
        """The first n accepted samples in index order, and their NLLs."""
        first = np.flatnonzero(self.status[: self.frontier] == ACCEPTED)[: self.params.n]
        if len(first) and first[-1] == len(first) - 1:  # nothing rejected before the last: a slice, no gather
            first = slice(0, len(first))
        return self.names[first].tolist(), self.nlls[first].tolist()


class RowState:
    """Per-row arrays, compacted so rows [0, active) are live. Capacity max_batch_rows."""

    def __init__(self, capacity: int, block_size: int, max_length: int):
        self.active = 0
        self.context = np.zeros((capacity, block_size), dtype=np.int64)
        self.tokens = np.zeros((capacity, max_length + 1), dtype=np.int16)  # the name so far (prefix included)
        self.length = np.zeros(capacity, dtype=np.int64)  # characters in the name so far
        self.nll = np.zeros(capacity, dtype=np.float64)
        self.key = np.zeros(capacity, dtype=np.uint64)  # sampler stream key of (seed, sample index)
        self.sample_index = np.zeros(capacity, dtype=np.int64)
        self.request = np.zeros(capacity, dtype=np.int64)  # slot in the engine's request table
        self.temperature = np.zeros(capacity, dtype=np.float64)
        self.top_k = np.zeros(capacity, dtype=np.int64)
        self.prefix_length = np.zeros(capacity, dtype=np.int64)
        self.min_length = np.zeros(capacity, dtype=np.int64)
        self.max_length = np.zeros(capacity, dtype=np.int64)
        self._columns = [a for a in vars(self).values() if isinstance(a, np.ndarray)]

    def keep(self, mask: np.ndarray) -> None:
        """Drop the rows where mask [active] is False: live rows from the end move into the holes (a row's
        position never changes its draws, so only the moved rows are copied)."""
        kept = int(np.count_nonzero(mask))
        holes = np.flatnonzero(~mask[:kept])
        if holes.size:
            movers = kept + np.flatnonzero(mask[kept:])
            for column in self._columns:
                column[holes] = column[movers]
        self.active = kept


class Engine:
    """Continuous batching for one model version, on its own thread."""

    def __init__(self, model: LoadedModel, max_batch_rows: int, max_queue: int, max_name_length: int,
                 attempts_per_name: int, on_step: Callable[[int], None] | None = None, max_active_requests: int = 0):
        self.model = model
        self.max_batch_rows = max_batch_rows
        self.max_active_requests = max_active_requests  # 0: any number; 1: one request at a time
        self.max_queue = max_queue
        self.attempts_per_name = attempts_per_name
        self.on_step = on_step  # metrics hook: rows in this step
        self.rows = RowState(max_batch_rows, model.block_size, max_name_length)
        self._inbox: queue.SimpleQueue[GenerationRequest] = queue.SimpleQueue()
        self._open: deque[GenerationRequest] = deque()  # requests that want rows, in arrival order
        self._slots: dict[int, GenerationRequest] = {}  # request table: slot -> request that has had rows
        self._next_slot = 0
        self._queued = 0  # requests submitted that have not had rows yet
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._abort = False
        self._thread = threading.Thread(target=self._run, name=f"engine-{model.name}-{model.version}", daemon=True)
        self._thread.start()

    # -- called from other threads ------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return self._queued

    def submit(self, params: SamplingParams, on_done: Callable) -> GenerationRequest:
        """Queue a request; raises ValueError for parameters the engine cannot hold (the API checks them
        first), so a bad request never reaches the step that other requests share."""
        unknown = {ch for ch in params.prefix if ch not in self.model.stoi or ch == self.model.vocab[0]}
        if unknown or not 0 <= params.top_k < 2**63 or not len(params.prefix) <= params.max_length <= \
                self.rows.tokens.shape[1] - 1 or params.n < 1:
            raise ValueError(f"parameters the engine cannot run: {params}")
        request = GenerationRequest(params, max_attempts=params.n * self.attempts_per_name, on_done=on_done)
        with self._lock:
            if self._stopping:
                raise EngineStopped(f"{self.model.name}/{self.model.version} is shutting down")
            if self._queued >= self.max_queue:
                raise QueueFull(f"{self._queued} requests are waiting for {self.model.name}")
            self._queued += 1
        self._inbox.put(request)
        self._wake.set()
        return request

    def generate(self, params: SamplingParams, timeout: float | None = None) -> GenerationResult:
        """Blocking convenience for in-process callers (benchmarks, tests)."""
        done = threading.Event()
        box: list = []

        def finish(result):
            box.append(result)
            done.set()

        self.submit(params, finish)
        if not done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new requests; with drain, finish those in flight first."""
        with self._lock:
            self._stopping = True
            if not drain:
                self._abort = True
        self._wake.set()
        self._thread.join(timeout)

    # -- the scheduler thread -------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._take_inbox()
            if self._abort:
                self._fail_all(EngineStopped("the engine stopped"))
                return
            if not self.rows.active and not self._open:
                if self._stopping:
                    return
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                self._step()
            except Exception as e:  # a failing forward must not hang callers
                log.exception("engine step failed")
                self._fail_all(e)

    def _take_inbox(self) -> None:
        while True:
            try:
                self._open.append(self._inbox.get_nowait())
            except queue.Empty:
                return

    def _admit(self) -> None:
        """Give free rows to requests that want them, in arrival order; drop abandoned ones. A request
        leaves the queue once its rows are launched and comes back if rejections leave it short."""
        still_open: deque[GenerationRequest] = deque()
        launches: list[tuple[GenerationRequest, int]] = []
        free = self.max_batch_rows - self.rows.active
        active_requests = len(self._slots)
        for request in self._open:
            if request.finished or request.cancelled:
                self._finish(request)
                self._mark_started(request)
                continue
            wanted = request.rows_wanted()
            fresh = request.slot < 0
            if wanted and free and (not fresh or not self.max_active_requests or
                                    active_requests < self.max_active_requests):
                count = min(wanted, free)
                launches.append((request, count))
                free -= count
                wanted -= count
                active_requests += fresh
            if wanted:
                still_open.append(request)
            else:
                request.waiting = False
        self._open = still_open
        if launches:
            self._launch(launches)

    def _mark_started(self, request: GenerationRequest) -> None:
        """A request stops counting as queued once it gets rows (or ends without them)."""
        if not request.started:
            request.started = True
            with self._lock:
                self._queued -= 1

    def _launch(self, launches: list[tuple[GenerationRequest, int]]) -> None:
        """Fill rows [active, active + sum of counts) for this step's launches: one array operation per
        column whatever the number of requests."""
        rows, model = self.rows, self.model
        for request, _ in launches:
            self._mark_started(request)
            if request.slot < 0:
                request.slot = self._next_slot
                self._next_slot += 1
                self._slots[request.slot] = request
        counts = np.array([count for _, count in launches], dtype=np.int64)
        lo = rows.active
        hi = lo + int(counts.sum())

        def each_row(values, dtype):  # one value per request -> one per launched row
            return np.repeat(np.array(values, dtype=dtype), counts)

        params = [request.params for request, _ in launches]
        first = each_row([request.launch(count) for request, count in launches], np.int64)
        offset = np.arange(hi - lo, dtype=np.int64) - each_row(np.cumsum(counts) - counts, np.int64)
        index = first + offset  # each row's sample index in its request
        rows.sample_index[lo:hi] = index
        rows.key[lo:hi] = sample_keys(each_row([request.seed_key for request, _ in launches], np.uint64), index)
        rows.request[lo:hi] = each_row([request.slot for request, _ in launches], np.int64)
        rows.temperature[lo:hi] = each_row([p.temperature for p in params], np.float64)
        rows.top_k[lo:hi] = each_row([p.top_k for p in params], np.int64)
        rows.min_length[lo:hi] = each_row([p.min_length for p in params], np.int64)
        rows.max_length[lo:hi] = each_row([p.max_length for p in params], np.int64)
        rows.prefix_length[lo:hi] = each_row([len(p.prefix) for p in params], np.int64)
        # Prefix characters go through the same steps as sampled ones, forced instead of drawn,
        # so their NLL counts; rows start from the empty context.
        start = lo
        for p, count in zip(params, counts.tolist()):
            if p.prefix:
                rows.tokens[start:start + count, : len(p.prefix)] = [model.stoi[ch] for ch in p.prefix]
            start += count
        rows.context[lo:hi] = 0
        rows.length[lo:hi] = 0
        rows.nll[lo:hi] = 0.0
        rows.active = hi

    def _step(self) -> None:
        self._admit()
        rows = self.rows
        n = rows.active
        if n == 0:
            return
        if self.on_step:
            self.on_step(n)
        length, key = rows.length[:n], rows.key[:n]
        prefixed = length < rows.prefix_length[:n]
        forced = np.full(n, -1, dtype=np.int64)  # -1: draw; else the prefix character at this position
        if prefixed.any():
            forced[prefixed] = rows.tokens[np.flatnonzero(prefixed), length[prefixed]]
        end_allowed = length >= rows.min_length[:n]
        temperature, top_k = rows.temperature[:n], rows.top_k[:n]

        backend, table = self.model.backend, self.model.distributions
        if table is not None:  # every context's distribution is precomputed: a few gathers, on this thread
            token, logp = table.sample(backend.table_index(rows.context[:n]), uniforms(key, length), temperature,
                                       top_k, end_allowed, forced)
        else:
            def sample(chunk: slice, logits: np.ndarray):  # runs on the chunk's forward thread
                return sample_step(Distribution(logits), uniforms(key[chunk], length[chunk]), temperature[chunk],
                                   top_k[chunk], end_allowed[chunk], forced[chunk])

            parts = backend.forward_map(rows.context[:n], sample)
            token, logp = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        rows.nll[:n] -= logp
        ended = token == 0
        too_long = ~ended & (length >= rows.max_length[:n])
        growing = np.flatnonzero(~ended & ~too_long)
        rows.tokens[growing, length[growing]] = token[growing]
        rows.length[growing] += 1
        rows.context[:n, :-1] = rows.context[:n, 1:]  # numpy copies overlapping views safely
        rows.context[:n, -1] = token
        self._retire(ended, too_long)

    def _retire(self, ended: np.ndarray, too_long: np.ndarray) -> None:
        rows = self.rows
        n = rows.active
        done = ended | too_long
        stale = [request for request in self._slots.values() if request.finished or request.cancelled]
        dropped = [request.slot for request in stale if request.live]
        if dropped:  # rows of answered or abandoned requests are dropped, not resolved
            done |= np.isin(rows.request[:n], dropped)
        for request in stale:
            del self._slots[request.slot]
        if not done.any():
            return
        done_rows = np.flatnonzero(done)
        slots = rows.request[done_rows]
        order = np.argsort(slots, kind="stable")  # one group of rows per request
        done_rows, slots = done_rows[order], slots[order]
        names = self._decode(done_rows)
        indices, nlls, ok = rows.sample_index[done_rows], rows.nll[done_rows], ended[done_rows]
        cuts = (np.flatnonzero(np.diff(slots)) + 1).tolist()
        for slot, lo, hi in zip(slots[[0, *cuts]].tolist(), [0, *cuts], [*cuts, len(slots)]):
            request = self._slots.get(slot)
            if request is None:  # stale, dropped above
                continue
            request.resolve(indices[lo:hi], names[lo:hi], nlls[lo:hi], ok[lo:hi], self.model.training_names)
            if request.complete:
                self._finish(request)
                if not request.live:
                    del self._slots[slot]
            elif not request.waiting and request.rows_wanted():
                request.waiting = True
                self._open.append(request)
        rows.keep(~done)

    def _decode(self, done_rows: np.ndarray) -> list[str]:
        """All finished names in one pass: code points, a newline after each, one decode, one split."""
        lengths = self.rows.length[done_rows]
        width = int(lengths.max()) + 1
        points = self.model.codepoints[self.rows.tokens[done_rows, :width]]
        points[np.arange(len(done_rows)), lengths] = ord("\n")
        keep = np.arange(width)[None, :] <= lengths[:, None]
        return points[keep].tobytes().decode(self.model.encoding).split("\n")[:-1]

    def _finish(self, request: GenerationRequest) -> None:
        if request.finished:
            return
        request.finished = True
        if request.cancelled:
            return
        names, nlls = request.answer()
        request.on_done(GenerationResult(names, nlls, self.model.version, exhausted=len(names) < request.params.n))

    def _fail_all(self, error: BaseException) -> None:
        for request in set(self._slots.values()) | set(self._open):
            if not request.finished:
                request.finished = True
                request.on_done(error)
            self._mark_started(request)
        self._open.clear()
        self._slots.clear()
        self.rows.active = 0
