"""A generation request as the engine holds it: its parameters, its samples by index, and its status.

A request asks for n names; the engine runs samples (one row each) with consecutive indices, and the
answer is the first n accepted samples in index order, so it never depends on batching.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .sampler import seed_key


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
    conditions: tuple[tuple[str, str], ...] = ()  # (condition, value) pairs for a conditional model; others drawn
    guidance: float | None = None  # classifier-free guidance scale for named conditions; None: the model's default


class InvalidRequest(ValueError):
    """Parameters this model cannot run; `field` is where the one at fault sits in the API's body (a path,
    e.g. ("prefix",) or ("names", 3)) and `input` its value."""

    def __init__(self, field: tuple, message: str, input=None):
        super().__init__(message)
        self.field, self.input = field, input


@dataclass
class GenerationResult:
    names: list[str]
    nlls: list[float]  # each name's NLL in nats under the model, end token included
    version: str
    exhausted: bool  # the attempt budget ran out before n names were accepted
    # A conditional model's request that left conditions out: per name, every condition's value it was drawn
    # under ({condition: value}); None otherwise.
    conditions: list[dict[str, str]] | None = None


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # queued, no rows yet: counts against the queue limit
    RUNNING = "running"  # has had rows; in the scheduler's request table
    FINISHED = "finished"  # answered
    ABORTED = "aborted"  # cancelled by its caller (deadline, client gone): never answered
    FAILED = "failed"  # the engine failed or stopped: answered with the error


class SampleStatus(enum.IntEnum):
    PENDING = 0
    ACCEPTED = 1
    REJECTED = 2


# As plain ints for numpy: an enum member costs a conversion in every array operation.
PENDING, ACCEPTED, REJECTED = int(SampleStatus.PENDING), int(SampleStatus.ACCEPTED), int(SampleStatus.REJECTED)


OnDone = Callable[[GenerationResult | BaseException], None]


@dataclass(eq=False)
class GenerationRequest:
    """A request's samples by index: launched, finished (accepted or rejected), settled in index order."""

    id: int  # its rows carry it
    params: SamplingParams
    prefix_tokens: list[int]  # params.prefix in the model's vocabulary
    max_attempts: int
    on_done: OnDone  # called once, on the engine thread, unless the request was cancelled
    status: RequestStatus = RequestStatus.WAITING
    submitted_at: float = field(default_factory=time.monotonic)
    cancelled: bool = False  # set by the caller's thread; the scheduler aborts the request at its next step
    condition: tuple[int, ...] = ()  # a conditional model's index per condition (0: any), every row alike
    guidance: float = 0.0  # the scale its rows are guided by (0: none; always 0 when it names no condition)
    # Conditions left out are drawn per sample from the training prior, the model's exact marginal:
    # (combinations int64 [C, k] holding the given ones, their cumulative probabilities [C]); None: none left out.
    draws: tuple[np.ndarray, np.ndarray] | None = None
    launched: int = 0  # next sample index
    live: int = 0  # rows in flight
    frontier: int = 0  # samples below it are settled: finished, and (unique) checked in index order
    accepted: int = 0  # accepted samples below the frontier
    rejected: int = 0
    sample_status: np.ndarray = field(init=False)  # SampleStatus per sample index
    names: np.ndarray = field(init=False)  # per sample index, once finished
    nlls: np.ndarray = field(init=False)
    drawn: np.ndarray = field(init=False)  # int64 [samples, k]: each sample's condition indices, when draws
    seen: set[str] = field(default_factory=set)  # unique: names accepted so far
    seed_key: int = field(init=False)  # mixes into every sample's stream key (sampler.sample_keys)

    def __post_init__(self):
        self.seed_key = seed_key(self.params.seed)
        size = min(self.params.n, self.max_attempts)  # room for n samples; rejections grow it in launch()
        self.sample_status, self.names, self.nlls = (np.zeros(size, dtype=np.int8), np.zeros(size, dtype=object),
                                                     np.zeros(size, dtype=np.float64))
        self.drawn = np.zeros((size if self.draws is not None else 0, len(self.condition)), dtype=np.int64)

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self.status in (RequestStatus.FINISHED, RequestStatus.ABORTED, RequestStatus.FAILED)

    def rows_wanted(self) -> int:
        if self.done or self.cancelled:
            return 0
        hopeful = self.launched - self.rejected  # samples that may still be accepted
        return max(0, min(self.params.n - hopeful, self.max_attempts - self.launched))

    def launch(self, count: int) -> int:
        """Take the next `count` sample indices, with room to record them; returns the first."""
        if self.launched + count > len(self.sample_status):
            size = min(max(2 * len(self.sample_status), self.launched + count), self.max_attempts)
            for column in ("sample_status", "names", "nlls") + (("drawn",) if self.draws is not None else ()):
                grown = np.zeros((size, *getattr(self, column).shape[1:]), dtype=getattr(self, column).dtype)
                grown[: self.launched] = getattr(self, column)[: self.launched]
                setattr(self, column, grown)
        first = self.launched
        self.launched += count
        self.live += count
        return first

    def record(self, indices: np.ndarray, names: list[str], nlls: np.ndarray, accepted: np.ndarray,
               conditions: np.ndarray) -> None:
        """Record finished samples (accepted: bool per sample; conditions: their condition indices [samples, k])
        and move the frontier over settled ones."""
        self.sample_status[indices] = np.where(accepted, ACCEPTED, REJECTED)
        self.names[indices] = names
        self.nlls[indices] = nlls
        if self.draws is not None:
            self.drawn[indices] = conditions
        self.rejected += len(names) - int(np.count_nonzero(accepted))
        self.live -= len(names)
        start = self.frontier
        # Acceptance in sample-index order is what makes the answer independent of batching.
        self.frontier = self.launched if not self.live else \
            start + int(np.argmax(self.sample_status[start:self.launched] == PENDING))
        if self.params.unique:
            self._reject_repeats(start)
        else:
            self.accepted += int(np.count_nonzero(self.sample_status[start:self.frontier] == ACCEPTED))

    def _reject_repeats(self, start: int) -> None:
        """unique: of the samples settled since `start`, a name accepted before is rejected, in index order."""
        newly = start + np.flatnonzero(self.sample_status[start:self.frontier] == ACCEPTED)
        for index, name in zip(newly.tolist(), self.names[newly].tolist()):
            if self.accepted >= self.params.n:
                return
            if name in self.seen:
                self.sample_status[index] = REJECTED
                self.rejected += 1
            else:
                self.seen.add(name)
                self.accepted += 1

    @property
    def complete(self) -> bool:
        return self.accepted >= self.params.n or self.frontier >= self.max_attempts

    def result(self, version: str, conditions: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> GenerationResult:
        """The first n accepted samples in index order, their NLLs, and with draws the conditions they were
        drawn under (conditions: the model's names and values, to spell them)."""
        first = np.flatnonzero(self.sample_status[: self.frontier] == ACCEPTED)[: self.params.n]
        if len(first) and first[-1] == len(first) - 1:  # nothing rejected before the last: a slice, no gather
            first = slice(0, len(first))
        names, nlls = self.names[first].tolist(), self.nlls[first].tolist()
        drawn = None
        if self.draws is not None:
            drawn = [{name: values[i - 1] for (name, values), i in zip(conditions, row)}
                     for row in self.drawn[first].tolist()]
        return GenerationResult(names, nlls, version, exhausted=len(names) < self.params.n, conditions=drawn)
