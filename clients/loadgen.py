"""The engine of `namegen bench`: drive POST /v1/generate at a fixed concurrency, then report.

Each of `concurrency` keep-alive connections (clients/keepalive.py: bare asyncio, no HTTP library, so the
client costs far less CPU than the server it measures) posts its next request as soon as the answer comes,
without the SDK's retries, so a 429 or a 503 is counted where it happens instead of being hidden inside a
slower success. The serving benchmarks call `run_load` directly:

    report = asyncio.run(run_load(url, concurrency=16, duration=10, n=[1, 50], seeded=0.5, warmup=50))
"""
from __future__ import annotations

import asyncio
import os
import platform
import random
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Sequence

import httpx

from .keepalive import Tally, Target, keep_posting, percentile
from .sdk import resolve_base_url

__all__ = ["LoadReport", "RequestMix", "percentile", "run_load"]


@dataclass(frozen=True)
class RequestMix:
    """What each request asks for, drawn per request from a seeded RNG so two runs send the same mix."""
    ns: tuple[int, ...] = (1,)
    seeded_fraction: float = 0.0  # share of requests that carry a seed (the server's seeded path)
    models: tuple[str | None, ...] = (None,)  # None: the server's default model

    def body(self, rng: random.Random) -> dict:
        body: dict = {"n": rng.choice(self.ns)}
        if rng.random() < self.seeded_fraction:
            body["seed"] = rng.randrange(2**63)
        model = rng.choice(self.models)
        if model is not None:
            body["model"] = model
        return body


@dataclass
class LoadReport:
    url: str
    started_at: str  # UTC, ISO 8601
    machine: dict  # where the client ran; on a shared box the client competes with the server
    concurrency: int
    mix: dict
    warmup: int  # requests sent first and left out of everything below
    requests: int  # measured requests, answered or failed
    ok: int  # answered 200
    names: int  # in the 200 answers
    errors: dict[str, int]  # by status ("429") or by what ended the exchange ("ConnectionRefusedError")
    elapsed_s: float
    requests_per_s: float  # successful requests per second; failures count in `errors`, not here
    names_per_s: float
    latency_ms: dict[str, float | None]  # p50 p90 p99 max mean of the successful requests
    client_cpu_s: float  # CPU time the client itself used: near elapsed_s means the client was the bottleneck

    def to_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lat = self.latency_ms
        ms = {k: "-" if v is None else f"{v:.1f}" for k, v in lat.items()}
        models = ", ".join(m or "default" for m in self.mix["models"])
        errors = ", ".join(f"{k} x{v}" for k, v in sorted(self.errors.items())) or "none"
        return "\n".join([
            f"namegen bench  {self.url}  {self.started_at}  "
            f"client {self.machine['host']} ({self.machine['cpus']} CPUs)",
            f"load        concurrency {self.concurrency}, n {self.mix['ns']}, "
            f"seeded {self.mix['seeded_fraction']:.0%}, model {models}, warm-up {self.warmup}",
            f"requests    {self.ok} ok ({self.names} names), {self.requests - self.ok} failed "
            f"in {self.elapsed_s:.2f} s",
            f"throughput  {self.requests_per_s:.1f} req/s, {self.names_per_s:.1f} names/s",
            f"latency ms  p50 {ms['p50']}  p90 {ms['p90']}  p99 {ms['p99']}  max {ms['max']}  mean {ms['mean']}",
            f"errors      {errors}",
            f"client CPU  {self.client_cpu_s:.2f} s, "
            f"{self.client_cpu_s * 1000 / max(self.requests, 1):.2f} ms per request",
        ])


async def run_load(url: str | None = None, *, concurrency: int = 8, requests: int | None = None,
                   duration: float | None = None, n: int | Sequence[int] = 1, seeded: bool | float = False,
                   model: str | None | Sequence[str | None] = None, warmup: int = 0,
                   timeout: float | httpx.Timeout = 30.0, mix_seed: int = 0) -> LoadReport:
    """Send until `requests` have been sent or `duration` seconds have passed (whichever comes first; at least
    one must be given), `concurrency` at a time, waiting at most `timeout` seconds (an httpx.Timeout's read
    timeout) to connect and as long for each answer. Requests in flight at the deadline are waited for."""
    if requests is None and duration is None:
        raise ValueError("give requests or duration (or both), or the load would never stop")
    if concurrency < 1 or (requests is not None and requests < 1) or (duration is not None and duration <= 0):
        raise ValueError("concurrency and requests must be >= 1 and duration > 0")
    mix = RequestMix(ns=_as_tuple(n), seeded_fraction=float(seeded), models=_as_tuple(model))
    base_url = resolve_base_url(url)
    target = Target.parse(base_url)
    wait_s = timeout.read if isinstance(timeout, httpx.Timeout) else timeout
    rng = random.Random(mix_seed)
    if warmup:
        await _drive(target, _Requests(mix, rng, target, limit=warmup), concurrency, Tally(), wait_s)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    tally = Tally()
    cpu_start, start = time.process_time(), time.perf_counter()
    sender = _Requests(mix, rng, target, limit=requests, deadline=None if duration is None else start + duration)
    await _drive(target, sender, concurrency, tally, wait_s)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    latencies = sorted(tally.latencies)
    latency_ms = {f"p{q}": _ms(percentile(latencies, q)) for q in (50, 90, 99)}
    latency_ms["max"] = _ms(latencies[-1] if latencies else None)
    latency_ms["mean"] = _ms(sum(latencies) / len(latencies) if latencies else None)
    return LoadReport(
        url=base_url, started_at=started_at,
        machine={"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "platform": platform.platform()},
        concurrency=concurrency, mix={"ns": list(mix.ns), "seeded_fraction": mix.seeded_fraction,
                                      "models": list(mix.models)},
        warmup=warmup, requests=sender.sent, ok=len(latencies), names=tally.names,
        errors={str(key): count for key, count in tally.failed.items()}, elapsed_s=elapsed,
        requests_per_s=len(latencies) / elapsed, names_per_s=tally.names / elapsed, latency_ms=latency_ms,
        client_cpu_s=cpu)


class _Requests:
    """The next request to send: drawn from the mix, until `limit` are sent or `deadline` (perf_counter)
    passes. Every body the mix can draw is encoded once."""

    def __init__(self, mix: RequestMix, rng: random.Random, target: Target, *, limit: int | None = None,
                 deadline: float | None = None):
        self.mix, self.rng, self.target, self.limit, self.deadline = mix, rng, target, limit, deadline
        self.sent = 0
        self.encoded: dict[tuple, bytes] = {}

    def __call__(self) -> bytes | None:
        if (self.limit is not None and self.sent >= self.limit) or \
                (self.deadline is not None and time.perf_counter() >= self.deadline):
            return None
        self.sent += 1
        body = self.mix.body(self.rng)
        if "seed" in body:  # a fresh seed each time: nothing to reuse
            return self.target.post(body)
        key = tuple(sorted(body.items()))
        if key not in self.encoded:
            self.encoded[key] = self.target.post(body)
        return self.encoded[key]


async def _drive(target: Target, sender: _Requests, concurrency: int, tally: Tally, timeout: float | None) -> None:
    await asyncio.gather(*(keep_posting(target, sender, tally, timeout) for _ in range(concurrency)))


def _as_tuple(value) -> tuple:
    if value is None or isinstance(value, (str, int)):
        return (value,)
    return tuple(value) or (None,)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)
