"""The engine: one thread per served model version, continuous (iteration-level) batching.

Each step is four calls, as in vLLM's engine core: the scheduler picks the rows that run (admitting
waiting requests into free rows), the runner gives each row its next character, the scheduler appends
them and retires rows that ended, and the output processor turns those into names and answers the
requests that are complete. A row's draws depend only on (seed, sample index, position), and a request's
answer is the first n accepted samples in index order, so results never depend on batching, arrival
order or what else is running. The engine knows nothing about HTTP.
"""
from __future__ import annotations

import itertools
import logging
import math
import threading
from typing import Callable

import numpy as np

from namegen.contract import MAX_GUIDANCE

from .conditions import combinations
from .model import LoadedModel
from .output import OutputProcessor
from .request import GenerationRequest, GenerationResult, InvalidRequest, OnDone, SamplingParams
from .scheduler import EngineStopped, QueueFull, QueueTimeout, Scheduler

__all__ = ["Engine", "EngineStopped", "GenerationResult", "InvalidRequest", "QueueFull", "QueueTimeout",
           "SamplingParams"]
log = logging.getLogger("namegen.engine")
MAX_TOP_K = 2**63 - 1  # rows hold it in an int64


class Engine:
    """Continuous batching for one model version, on its own thread."""

    def __init__(self, model: LoadedModel, max_batch_rows: int, max_queue: int, max_name_length: int,
                 attempts_per_name: int, on_step: Callable[[int], None] | None = None, max_active_requests: int = 0,
                 max_queued_names: int = 0, queue_timeout_s: float = math.inf):
        self.model = model
        self.attempts_per_name = attempts_per_name
        self.max_name_length = max_name_length
        self.on_step = on_step  # metrics hook: rows in this step
        self.scheduler = Scheduler(max_batch_rows, max_queue, max_active_requests, model.block_size, max_name_length,
                                   max_queued_names, queue_timeout_s, len(model.conditions))
        self.runner = model.runner
        self.caches = self.runner.step_caches(max_batch_rows)  # None: no step model, every step a full forward
        if self.caches is not None:
            for ring, node in zip(self.caches.columns, self.caches.padding):
                self.scheduler.rows.attach(ring, node)
        self.output = OutputProcessor(model.version, model.codepoints, model.encoding, model.training_names,
                                      model.conditions)
        self._draws: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}  # given conditions -> their draws
        self._ids = itertools.count()
        self.steps = 0  # steps run: the manager tells an idle engine by it
        self._wake = threading.Event()
        self._abort = False
        self._thread = threading.Thread(target=self._run, name=f"engine-{model.name}-{model.version}", daemon=True)
        self._thread.start()

    @property
    def rows(self):
        return self.scheduler.rows

    # -- called from other threads ------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return self.scheduler.queue_depth

    def submit(self, params: SamplingParams, on_done: OnDone) -> GenerationRequest:
        """Queue a request. InvalidRequest (a ValueError naming the field) for what this model cannot run,
        before anything is queued, so a bad request never reaches the step that other requests share;
        QueueFull or EngineStopped when it cannot be queued."""
        prefix_tokens = self.model.encode(params.prefix, ("prefix",))
        condition = self.model.condition_indices(params.conditions)
        if params.n < 1:
            raise InvalidRequest(("n",), f"n must be at least 1, not {params.n}", params.n)
        guidance = self._guidance(params.guidance, condition)
        if not 0 <= params.top_k <= MAX_TOP_K:
            raise InvalidRequest(("top_k",), f"top_k must be from 0 (off) to {MAX_TOP_K}", params.top_k)
        if not len(params.prefix) <= params.max_length <= self.max_name_length:
            raise InvalidRequest(("max_length",), f"max_length must be from the prefix's length to "
                                                  f"{self.max_name_length}, not {params.max_length}",
                                 params.max_length)
        try:
            self.scheduler.check_room(params.n)  # refusing costs no allocation; add() checks again, locked
            request = GenerationRequest(next(self._ids), params, prefix_tokens, params.n * self.attempts_per_name,
                                        on_done, condition=condition, guidance=guidance,
                                        draws=self._draws_for(condition))
            self.scheduler.add(request)
        except (QueueFull, EngineStopped) as e:
            raise type(e)(f"{self.model.name}/{self.model.version}: {e}") from None
        self._wake.set()
        return request

    def _draws_for(self, condition: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray] | None:
        """What rows of a request with these condition indices draw the ones left out (0) from: the combinations
        of values seen in training that hold the given ones, and their cumulative prior. None: nothing left out."""
        if 0 not in condition:
            return None
        if condition not in self._draws:
            combos, prior = combinations(self.model, condition, ("conditions",))
            cdf = np.cumsum(prior)
            cdf[-1] = 1.0  # every u < 1 finds a combination
            self._draws[condition] = combos, cdf
        return self._draws[condition]

    def _guidance(self, asked: float | None, condition: tuple[int, ...]) -> float:
        """The scale a request's rows are guided by: asked, or the model's default; 0 unless it names a condition."""
        if asked is not None and not 0 <= asked <= MAX_GUIDANCE:  # not (...): NaN fails too
            raise InvalidRequest(("guidance",), f"guidance must be from 0 to {MAX_GUIDANCE:g}, not {asked}", asked)
        if asked and not self.model.conditions:
            raise InvalidRequest(("guidance",), f"model {self.model.name!r} was trained without conditions; there "
                                                "is nothing to guide (omit the field)", asked)
        if not any(condition):
            return 0.0
        return self.model.manifest.guidance if asked is None else float(asked)

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
        self.scheduler.stop_accepting()
        if not drain:
            self._abort = True
        self._wake.set()
        self._thread.join(timeout)

    # -- the engine thread ----------------------------------------------------------------------
    def step(self) -> None:
        batch = self.scheduler.schedule()
        if self.scheduler.expired:
            self._shed(self.scheduler.expired)
        if batch is None:
            return
        if self.on_step:
            self.on_step(batch.rows)
        finished = self.scheduler.update_from_output(*self.runner.next_chars(batch, self.caches))
        if finished is not None:
            self.scheduler.settle(self.output.process(finished))

    def _shed(self, expired: list[GenerationRequest]) -> None:
        timeout = self.scheduler.queue_timeout_s
        for request in expired:
            request.on_done(QueueTimeout(f"waited over {timeout:g} s for rows; the server is overloaded"))
        expired.clear()

    def _run(self) -> None:
        while True:
            if self._abort:
                self._fail_all(EngineStopped("the engine stopped"))
                return
            if not self.scheduler.has_work():
                if self.scheduler.stopping:
                    return
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self.steps += 1
            try:
                self.step()
            except Exception as e:  # a failing forward must not hang callers
                log.exception("engine step failed")
                self._fail_all(e)

    def _fail_all(self, error: BaseException) -> None:
        for request in self.scheduler.fail_all():
            request.on_done(error)

