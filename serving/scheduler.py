"""The scheduler: which rows run each step. It owns the queue of waiting requests, the table of running
ones and the rows' state, admits requests into free rows and retires rows that finished.

A row is one sample of one request. Rows [0, active) are live; retiring compacts them. Nothing here
knows about models, sampling or HTTP: the runner turns a Batch into characters, the output processor
turns finished rows into answers.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .request import GenerationRequest, RequestStatus
from .sampler import sample_keys, uniforms

CONDITION_DRAW = 2**40  # the stream position of a row's condition draw: characters use 0 .. max_length


class QueueFull(Exception):
    pass


class EngineStopped(Exception):
    pass


class QueueTimeout(Exception):
    """Shed before any row was spent on it: it waited longer than the queue deadline."""


class RowState:
    """Per-row arrays, compacted so rows [0, active) are live. Capacity max_batch_rows."""

    def __init__(self, capacity: int, block_size: int, max_length: int, conditions: int = 0):
        self.active = 0
        self.block_size, self.conditions = block_size, conditions
        # The last block_size characters, then a conditional model's condition indices (set at launch).
        self.context = np.zeros((capacity, block_size + conditions), dtype=np.int64)
        self.tokens = np.zeros((capacity, max_length + 1), dtype=np.int16)  # the name so far (prefix included)
        self.length = np.zeros(capacity, dtype=np.int64)  # characters in the name so far
        self.nll = np.zeros(capacity, dtype=np.float64)
        self.key = np.zeros(capacity, dtype=np.uint64)  # sampler stream key of (seed, sample index)
        self.sample_index = np.zeros(capacity, dtype=np.int64)
        self.request = np.zeros(capacity, dtype=np.int64)  # the id of the row's request
        self.temperature = np.zeros(capacity, dtype=np.float64)
        self.guidance = np.zeros(capacity, dtype=np.float32)  # the logits' dtype: guided logits are float32 math
        self.named = np.zeros((capacity, conditions), dtype=np.int64)  # the request's own indices (0: drawn)
        self.top_k = np.zeros(capacity, dtype=np.int64)
        self.prefix_length = np.zeros(capacity, dtype=np.int64)
        self.min_length = np.zeros(capacity, dtype=np.int64)
        self.max_length = np.zeros(capacity, dtype=np.int64)
        self._columns = [a for a in vars(self).values() if isinstance(a, np.ndarray)]
        self.attached: list[tuple[np.ndarray, np.ndarray]] = []  # (column, its value at launch), see attach

    def attach(self, column: np.ndarray, at_launch: np.ndarray) -> None:
        """Another per-row array [capacity, ...] (the runner's caches): set to at_launch for launched rows,
        compacted with the others."""
        self._columns.append(column)
        self.attached.append((column, at_launch))

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


@dataclass
class Batch:
    """What the runner needs to pick each live row's next character; arrays [rows]."""

    context: np.ndarray  # int64 [rows, block_size (+ conditions)]: the last characters, 0-padded (+ conditions)
    keys: np.ndarray  # uint64: the row's sampler stream
    position: np.ndarray  # int64: characters so far; with the key, it picks the row's uniform
    temperature: np.ndarray
    top_k: np.ndarray
    guidance: np.ndarray  # float32: classifier-free guidance scale, 0 for unguided rows
    named: np.ndarray  # int64 [rows, conditions]: the conditions the request named (0: left out, drawn)
    end_allowed: np.ndarray  # bool: min_length reached
    forced: np.ndarray  # int64: the prefix character at this position, or -1 to draw

    @property
    def rows(self) -> int:
        return len(self.keys)


@dataclass
class FinishedRows:
    """Rows that ended this step, copied out of the row state, one group of consecutive rows per request."""

    groups: list[tuple[GenerationRequest, int, int]]  # (request, first row, past its last row)
    sample_index: np.ndarray  # int64 [rows]
    tokens: np.ndarray  # int16 [rows, width]: the names' characters
    length: np.ndarray
    nll: np.ndarray
    ended: np.ndarray  # bool: ended with the end token (False: hit max_length, rejected)
    conditions: np.ndarray  # int64 [rows, conditions]: the condition indices each was sampled under


class Scheduler:
    """Requests wait in arrival order; each step, running requests short of rows are topped up first,
    then waiting ones are admitted into what is free. The methods under "from other threads" may be called
    from any thread; the rest run on the engine thread."""

    def __init__(self, max_batch_rows: int, max_queue: int, max_active_requests: int, block_size: int,
                 max_name_length: int, max_queued_names: int = 0, queue_timeout_s: float = math.inf,
                 conditions: int = 0):
        self.max_batch_rows = max_batch_rows
        self.max_queue = max_queue  # requests waiting
        # Waiting work is bounded by its cost too: names asked for (0: no bound), and by how long it waits.
        self.max_queued_names = max_queued_names
        self.queue_timeout_s = queue_timeout_s
        self.max_active_requests = max_active_requests  # 0: any number; 1: one request at a time
        self.rows = RowState(max_batch_rows, block_size, max_name_length, conditions)
        self.running: dict[int, GenerationRequest] = {}  # request table: id -> request that has had rows
        self._short_of_rows: dict[int, GenerationRequest] = {}  # running requests that want more rows, in order
        self._waiting: deque[GenerationRequest] = deque()
        self._inbox: queue.SimpleQueue[GenerationRequest] = queue.SimpleQueue()  # from other threads
        self._queued = 0  # requests added that are still WAITING
        self._queued_names = 0  # the names they ask for
        self.expired: list[GenerationRequest] = []  # shed by schedule() for waiting too long; the engine answers
        self.on_room: Callable[[], None] | None = None  # called (engine thread) when a request leaves the queue
        self._lock = threading.Lock()
        self.stopping = False

    # -- from other threads ---------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return self._queued

    def check_room(self, n: int) -> None:
        """QueueFull or EngineStopped if a request for n names could not be added now."""
        if self.stopping:
            raise EngineStopped("the engine is shutting down")
        if self._queued >= self.max_queue:
            raise QueueFull(f"{self._queued} requests are waiting")
        if self.max_queued_names and self._queued and self._queued_names + n > self.max_queued_names:
            raise QueueFull(f"{self._queued} requests for {self._queued_names} names are waiting")

    def add(self, request: GenerationRequest) -> None:
        with self._lock:
            self.check_room(request.params.n)
            self._queued += 1
            self._queued_names += request.params.n
        self._inbox.put(request)

    def stop_accepting(self) -> None:
        with self._lock:
            self.stopping = True

    # -- the engine thread ----------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self.rows.active or self._waiting or self._short_of_rows or not self._inbox.empty())

    def schedule(self) -> Batch | None:
        """Give free rows to requests that want them; the step's inputs for every live row, or None."""
        self._take_inbox()
        launches: list[tuple[GenerationRequest, int]] = []  # (request, rows) in launch order
        free = self._top_up(launches, self.max_batch_rows - self.rows.active)
        self._admit(launches, free)
        if launches:
            self._launch(launches)
        return self._batch() if self.rows.active else None

    def _take_inbox(self) -> None:
        while True:
            try:
                self._waiting.append(self._inbox.get_nowait())
            except queue.Empty:
                return

    def _top_up(self, launches: list, free: int) -> int:
        """Running requests short of rows first, in the order they fell short; returns the rows left."""
        for request in list(self._short_of_rows.values()):
            wanted = request.rows_wanted()
            count = min(wanted, free)
            if count:
                launches.append((request, count))
                free -= count
            if wanted <= count:
                del self._short_of_rows[request.id]
        return free

    def _admit(self, launches: list, free: int) -> None:
        """Waiting requests into free rows, in arrival order; cancelled ones leave without rows."""
        if any(request.cancelled for request in self._waiting):
            for request in [r for r in self._waiting if r.cancelled]:
                self._leave_queue(request, RequestStatus.ABORTED)
            self._waiting = deque(r for r in self._waiting if not r.cancelled)
        if self._waiting and self.queue_timeout_s < math.inf:
            self._shed_expired()
        while self._waiting and free:
            if self.max_active_requests and len(self.running) >= self.max_active_requests:
                break
            request = self._waiting.popleft()
            wanted = request.rows_wanted()
            count = min(wanted, free)
            launches.append((request, count))
            free -= count
            if wanted > count:
                self._short_of_rows[request.id] = request
            self._leave_queue(request, RequestStatus.RUNNING)
            self.running[request.id] = request

    def _leave_queue(self, request: GenerationRequest, status: RequestStatus) -> None:
        request.status = status
        with self._lock:
            self._queued -= 1
            self._queued_names -= request.params.n
        if self.on_room is not None:
            self.on_room()

    def _shed_expired(self) -> None:
        """Requests at the head of the queue that waited past the deadline leave it before a row is spent."""
        deadline = time.monotonic() - self.queue_timeout_s
        while self._waiting and self._waiting[0].submitted_at < deadline:
            request = self._waiting.popleft()
            self._leave_queue(request, RequestStatus.FAILED)
            self.expired.append(request)

    def _launch(self, launches: list[tuple[GenerationRequest, int]]) -> None:
        """Fill rows [active, active + sum of counts) for this step's launches: one array operation per
        column whatever the number of requests."""
        rows = self.rows
        counts = np.array([count for _, count in launches], dtype=np.int64)
        lo = rows.active
        hi = lo + int(counts.sum())

        def each_row(values, dtype):  # one value per request -> one per launched row
            return np.repeat(np.array(values, dtype=dtype), counts)

        requests = [request for request, _ in launches]
        params = [request.params for request in requests]
        first = each_row([request.launch(count) for request, count in launches], np.int64)
        index = first + np.arange(hi - lo, dtype=np.int64) - each_row(np.cumsum(counts) - counts, np.int64)
        rows.sample_index[lo:hi] = index  # each row's sample index in its request
        rows.key[lo:hi] = sample_keys(each_row([request.seed_key for request, _ in launches], np.uint64), index)
        rows.request[lo:hi] = each_row([request.id for request, _ in launches], np.int64)
        rows.temperature[lo:hi] = each_row([p.temperature for p in params], np.float64)
        rows.top_k[lo:hi] = each_row([p.top_k for p in params], np.int64)
        rows.guidance[lo:hi] = each_row([request.guidance for request in requests], np.float32)
        rows.min_length[lo:hi] = each_row([p.min_length for p in params], np.int64)
        rows.max_length[lo:hi] = each_row([p.max_length for p in params], np.int64)
        rows.prefix_length[lo:hi] = each_row([len(r.prefix_tokens) for r in requests], np.int64)
        # Prefix characters go through the same steps as sampled ones, forced instead of drawn,
        # so their NLL counts; rows start from the empty context.
        start = lo
        for request, count in zip(requests, counts.tolist()):
            if request.prefix_tokens:
                rows.tokens[start:start + count, : len(request.prefix_tokens)] = request.prefix_tokens
            start += count
        rows.context[lo:hi] = 0
        if rows.conditions:
            rows.named[lo:hi] = np.repeat(np.array([r.condition for r in requests], dtype=np.int64), counts, axis=0)
            rows.context[lo:hi, rows.block_size:] = rows.named[lo:hi]
            self._draw_conditions(requests, counts, lo)
        for column, value in rows.attached:
            column[lo:hi] = value
        rows.length[lo:hi] = 0
        rows.nll[lo:hi] = 0.0
        rows.active = hi

    def _draw_conditions(self, requests: list[GenerationRequest], counts: np.ndarray, lo: int) -> None:
        """Rows of requests that left conditions out draw them from the prior, each from its own stream: a row
        samples the model's exact marginal, and its draw never depends on the batch."""
        rows, start = self.rows, lo
        for request, count in zip(requests, counts.tolist()):
            if request.draws is not None:
                combos, cdf = request.draws
                u = uniforms(rows.key[start:start + count], np.full(count, CONDITION_DRAW, dtype=np.int64))
                pick = np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)
                rows.context[start:start + count, rows.block_size:] = combos[pick]
            start += count

    def _batch(self) -> Batch:
        rows, n = self.rows, self.rows.active
        length = rows.length[:n]
        prefixed = length < rows.prefix_length[:n]
        forced = np.full(n, -1, dtype=np.int64)
        if prefixed.any():
            forced[prefixed] = rows.tokens[np.flatnonzero(prefixed), length[prefixed]]
        return Batch(rows.context[:n], rows.key[:n], length, rows.temperature[:n], rows.top_k[:n], rows.guidance[:n],
                     rows.named[:n], length >= rows.min_length[:n], forced)

    def update_from_output(self, token: np.ndarray, logp: np.ndarray) -> FinishedRows | None:
        """Append each row's character; rows that ended (end token or max_length), and rows of requests that
        are done or cancelled, leave the batch. Returns the ended rows of running requests."""
        rows, n = self.rows, self.rows.active
        length = rows.length[:n]
        rows.nll[:n] -= logp
        ended = token == 0
        too_long = ~ended & (length >= rows.max_length[:n])
        growing = np.flatnonzero(~ended & ~too_long)
        rows.tokens[growing, length[growing]] = token[growing]
        rows.length[growing] += 1
        t = rows.block_size  # the condition columns after the characters never move
        rows.context[:n, :t - 1] = rows.context[:n, 1:t]  # numpy copies overlapping views safely
        rows.context[:n, t - 1] = token
        finished = ended | too_long
        dropped = self._drop_stale()
        if dropped:  # rows of answered or abandoned requests are dropped, not resolved
            stale = np.isin(rows.request[:n], dropped)
            finished_rows = np.flatnonzero(finished & ~stale)
            finished |= stale
        else:
            finished_rows = np.flatnonzero(finished)
        out = self._copy_out(finished_rows, ended) if finished_rows.size else None
        if finished.any():
            rows.keep(~finished)
        return out

    def _drop_stale(self) -> list[int]:
        """Take requests that are done or cancelled out of the table; the ids of those that still had rows."""
        stale = [request for request in self.running.values() if request.done or request.cancelled]
        for request in stale:
            del self.running[request.id]
            self._short_of_rows.pop(request.id, None)
            if not request.done:
                request.status = RequestStatus.ABORTED
        return [request.id for request in stale if request.live]

    def _copy_out(self, finished_rows: np.ndarray, ended: np.ndarray) -> FinishedRows:
        rows = self.rows
        ids = rows.request[finished_rows]
        order = np.argsort(ids, kind="stable")  # one group of rows per request
        finished_rows, ids = finished_rows[order], ids[order]
        cuts = (np.flatnonzero(np.diff(ids)) + 1).tolist()
        groups = [(self.running[i], lo, hi) for i, lo, hi in zip(ids[[0, *cuts]].tolist(), [0, *cuts], [*cuts, len(ids)])]
        length = rows.length[finished_rows]
        return FinishedRows(groups, rows.sample_index[finished_rows], rows.tokens[finished_rows, : int(length.max()) + 1],
                            length, rows.nll[finished_rows], ended[finished_rows],
                            rows.context[finished_rows, rows.block_size:])

    def settle(self, requests: list[GenerationRequest]) -> None:
        """After the output processor recorded these requests' samples: done ones leave the table once their
        last row is back, and running ones short of rows wait to be topped up."""
        for request in requests:
            if request.done:
                if not request.live:
                    self.running.pop(request.id, None)
                    self._short_of_rows.pop(request.id, None)
            elif request.id not in self._short_of_rows and request.rows_wanted():
                self._short_of_rows[request.id] = request

    def fail_all(self) -> list[GenerationRequest]:
        """Empty every queue and row; returns the requests that were not done, for the engine to answer."""
        self._take_inbox()
        pending = [r for r in {**self.running, **{r.id: r for r in self._waiting}}.values() if not r.done]
        for request in self._waiting:
            self._leave_queue(request, RequestStatus.FAILED)
        pending += self.expired
        self.expired = []
        for request in pending:
            request.status = RequestStatus.FAILED
        self._waiting.clear()
        self.running.clear()
        self._short_of_rows.clear()
        self.rows.active = 0
        return pending
