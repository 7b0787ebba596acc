"""Goodput under overload: names/s delivered at 1x, 2x and 10x load, p99 of the successful requests, and
the server's memory before, at the peak and after the load stops.

    .venv/bin/python bench/serving_overload.py [--n 1000] [--duration 8] [--rounds 3]

1x is as many clients as the server holds without refusing any: rows plus queued names, divided by the
names per request ((MAX_BATCH_ROWS + MAX_QUEUED_NAMES) / n, 69 at the defaults and n=1000). 2x and 10x
are twice and ten times as many. Each client is a keep-alive connection posting /v1/generate back to
back and sending the next request as soon as an answer comes, 429 and 503 included, with no back-off:
the hostile case (clients that honour Retry-After only make it easier). Delivered names/s counts the
names of the 200 answers that arrive within the measured window (after a second of warm-up), whenever they
were sent: the rate the server delivers while the load lasts. The table also prints the figure earlier
versions reported, "by send time": the names of the requests sent within the window, over the time until
their last answer. That one charges each level its own queueing delay: the window opens on a full queue of
requests sent before it (served, not counted) and is stretched by the wait of its own last requests.
Levels are interleaved over rounds and the figures are medians. Client and server share this machine's
cores, so more clients also take CPU from the server: the ratio measures that too.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from common import Tally, keep_posting, machine_line, served_registry, trained_checkpoint
from serving_http import start_server

LEVELS = (1, 2, 10)
DEFAULT_ROWS, DEFAULT_QUEUED_NAMES = 4096, 65536  # serving/settings.py


class Arrivals(Tally):
    """A Tally of the answers that arrive from `start` to `end` (time.perf_counter()), whenever sent."""

    def __init__(self, start: float, end: float):
        super().__init__()
        self.start, self.end = start, end

    def __call__(self, sent: float, status: int | str, payload: bytes) -> None:
        if self.start <= time.perf_counter() < self.end:
            super().__call__(sent, status, payload)


@dataclass
class Level:
    names_per_s: float
    by_send_time: float  # names/s of the requests sent within the window, over the time to their last answer
    ok: int
    refused: dict = field(default_factory=dict)  # status -> count
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rss_peak_mb: float = 0.0
    steps_per_s: float = 0.0  # the engine's steps, from its /metrics
    rows_per_step: float = 0.0
    server_cores: float = 0.0  # CPU seconds per second the server used
    client_cores: float = 0.0  # and this process, the clients


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def engine_steps(url: str, model: str) -> tuple[float, float]:
    """(steps, rows) the model's engines ran so far: namegen_rows_per_step's count and sum."""
    samples = {sample.name: sample.value
               for family in text_string_to_metric_families(httpx.get(url + "/metrics").text)
               if family.name == "namegen_rows_per_step" for sample in family.samples
               if sample.labels.get("model") == model}
    return samples["namegen_rows_per_step_count"], samples["namegen_rows_per_step_sum"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def hammer(url: str, model: str, clients: int, n: int, duration: float, pid: int,
                 warmup_s: float = 1.0) -> Level:
    start = time.perf_counter() + warmup_s
    stop_at = start + duration
    tally, sent_tally, peak, cpu, steps = Arrivals(start, stop_at), Tally(start), [0.0], [], []

    def answered(sent: float, status: int | str, payload: bytes) -> None:
        tally(sent, status, payload)
        sent_tally(sent, status, payload)

    async def watch_memory():
        while time.perf_counter() < stop_at:
            peak[0] = max(peak[0], rss_mb(pid))
            await asyncio.sleep(0.2)

    async def measure_cpu():
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        cpu[:] = [cpu_seconds(pid), time.process_time()]
        steps[:] = [time.perf_counter(), *await asyncio.to_thread(engine_steps, url, model)]
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        cpu[:] = [cpu_seconds(pid) - cpu[0], time.process_time() - cpu[1]]
        after = [time.perf_counter(), *await asyncio.to_thread(engine_steps, url, model)]
        steps[:] = [b - a for a, b in zip(steps, after)]

    await asyncio.gather(watch_memory(), measure_cpu(),
                         *(keep_posting(url, {"n": n}, stop_at, answered) for _ in range(clients)))
    to_last_answer = time.perf_counter() - start
    seconds, engine_steps_run, rows = steps
    return Level(tally.names / duration, sent_tally.names / to_last_answer, len(tally.latencies), tally.failed,
                 tally.percentile_ms(50), tally.percentile_ms(99), peak[0], engine_steps_run / seconds,
                 rows / max(engine_steps_run, 1), cpu[0] / duration, cpu[1] / duration)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp")
    p.add_argument("--n", type=int, default=1000, help="names per request")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per level and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    registry = served_registry({args.model: trained_checkpoint(args.model)})
    full = (DEFAULT_ROWS + DEFAULT_QUEUED_NAMES) // args.n
    # The defaults, which start_server raises; only this model, whatever else other benchmarks published there.
    process, url = start_server(registry, max_queue=256, models=args.model)
    runs: dict[int, list[Level]] = {level: [] for level in LEVELS}
    try:
        asyncio.run(hammer(url, args.model, full, args.n, 2.0, process.pid))  # warm-up
        time.sleep(3)
        rss_before = rss_mb(process.pid)
        for _ in range(args.rounds):
            for level in LEVELS:
                runs[level].append(asyncio.run(hammer(url, args.model, full * level, args.n, args.duration,
                                                      process.pid)))
        time.sleep(3)  # idle: the engine gives back what the peak took
        rss_after = rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(60)

    print(machine_line("serving_overload"))
    print(f"model {args.model}, n={args.n}, 1x = {full} clients (rows + queued names / n), no back-off on 429/503; "
          f"medians of {args.rounds} interleaved rounds of {args.duration:.0f} s")
    base = statistics.median(r.names_per_s for r in runs[1])
    base_by_send = statistics.median(r.by_send_time for r in runs[1])
    print(f"  {'load':<6} {'clients':>7} {'names/s':>10} {'of 1x':>6} {'by send time':>13} {'of 1x':>6} {'ok':>6} "
          f"{'refused (429/503/other)':>24} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'peak RSS MB':>12} {'CPU server/client':>18} {'steps/s':>8} {'rows/step':>9}")
    for level in LEVELS:
        rounds = runs[level]
        median = lambda attr: statistics.median(getattr(r, attr) for r in rounds)  # noqa: E731
        refused = {status: sum(r.refused.get(status, 0) for r in rounds) for status in (429, 503)}
        other = sum(count for r in rounds for status, count in r.refused.items() if status not in (429, 503))
        print(f"  {level:>3}x   {full * level:>7} {median('names_per_s'):>10,.0f} {median('names_per_s') / base:>6.0%} "
              f"{median('by_send_time'):>13,.0f} {median('by_send_time') / base_by_send:>6.0%} "
              f"{sum(r.ok for r in rounds):>6} {refused[429]:>12}/{refused[503]}/{other:<6} {median('p50_ms'):>8.0f} "
              f"{median('p99_ms'):>8.0f} {max(r.rss_peak_mb for r in rounds):>12.0f} "
              f"{median('server_cores'):>10.2f}/{median('client_cores'):<7.2f} {median('steps_per_s'):>8,.0f} "
              f"{median('rows_per_step'):>9,.0f}")
    print(f"  RSS before the load {rss_before:.0f} MB, 3 s after it {rss_after:.0f} MB "
          f"({rss_after - rss_before:+.1f} MB)")


if __name__ == "__main__":
    main()
