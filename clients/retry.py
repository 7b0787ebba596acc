"""When to try a request again, and how long to wait first: bounded in attempts and in time."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from .errors import NameGenError


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4  # the first try included; 1 turns retries off
    backoff_base: float = 0.25  # seconds; retry k waits up to backoff_base * 2**(k-1) ...
    backoff_max: float = 4.0  # ... but never more than this
    max_elapsed: float = 20.0  # no retry is started that would begin later than this after the first try

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, cap], so clients that failed together do not come back together."""
        cap = min(self.backoff_max, self.backoff_base * 2 ** (retry - 1))
        return rng.uniform(0, cap)

    def wait(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is None:
            return self.backoff(retry, rng)
        # The server said when it will have room; the jitter on top spreads the clients it told the same second.
        return retry_after + rng.uniform(0, self.backoff_base)


NO_RETRIES = RetryPolicy(max_attempts=1)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds ("3") or an HTTP-date; None if absent or bad."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # an HTTP-date is always GMT, even when written without a zone
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


class RetryBudget:
    """One call's attempts. `wait_before_retry` says how long to sleep, or re-raises the error once the
    attempts or the time are spent, marked with how many attempts it took."""

    def __init__(self, policy: RetryPolicy, rng: random.Random):
        self.policy = policy
        self.rng = rng
        self.attempts = 1
        self.started = time.monotonic()

    def wait_before_retry(self, error: NameGenError) -> float:
        elapsed = time.monotonic() - self.started
        wait = self.policy.wait(self.attempts, getattr(error, "retry_after", None), self.rng)
        if self.attempts >= self.policy.max_attempts or elapsed + wait > self.policy.max_elapsed:
            error.attempts, error.elapsed_s = self.attempts, elapsed
            raise error
        self.attempts += 1
        return wait
