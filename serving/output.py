"""Output processing: rows that finished become names, the names settle their requests' samples in index
order, and complete requests are answered. Runs on the engine thread after each step."""
from __future__ import annotations

import numpy as np

from .request import GenerationRequest, RequestStatus
from .scheduler import FinishedRows


class OutputProcessor:
    def __init__(self, version: str, codepoints: np.ndarray, encoding: str, training_names: frozenset[str],
                 conditions: tuple[tuple[str, tuple[str, ...]], ...] = ()):
        self.version = version
        self.conditions = conditions  # a conditional model's names and values: drawn ones are spelled out
        self.codepoints = codepoints  # [vocab]: token -> code point
        self.encoding = encoding  # how an array of those code points decodes
        self.training_names = training_names  # exclude_training rejects these

    def process(self, finished: FinishedRows) -> list[GenerationRequest]:
        """Record every finished row in its request, answer the requests that are complete; returns the
        requests that got rows back (the scheduler settles them)."""
        names = self.decode(finished.tokens, finished.length)
        for request, lo, hi in finished.groups:
            accepted = finished.ended[lo:hi]
            if request.params.exclude_training:
                accepted = accepted & np.array([name not in self.training_names for name in names[lo:hi]])
            request.record(finished.sample_index[lo:hi], names[lo:hi], finished.nll[lo:hi], accepted,
                           finished.conditions[lo:hi])
            if request.complete:
                self.answer(request)
        return [request for request, _, _ in finished.groups]

    def answer(self, request: GenerationRequest) -> None:
        if request.cancelled:  # nobody is waiting for it any more
            request.status = RequestStatus.ABORTED
            return
        request.status = RequestStatus.FINISHED
        request.on_done(request.result(self.version, self.conditions))

    def decode(self, tokens: np.ndarray, length: np.ndarray) -> list[str]:
        """All finished names in one pass: code points, a newline after each, one decode, one split."""
        points = self.codepoints[tokens]
        points[np.arange(len(tokens)), length] = ord("\n")
        keep = np.arange(tokens.shape[1])[None, :] <= length[:, None]
        return points[keep].tobytes().decode(self.encoding).split("\n")[:-1]
