"""Goodput under overload: names/s delivered at 1x, 2x and 10x load, p99 of the successful requests, and
the server's memory before, at the peak and after the load stops.

    .venv/bin/python bench/serving_overload.py [--n 1000] [--duration 8] [--rounds 3]

1x is as many clients as the server holds without refusing any: rows plus queued names, divided by the
names per request ((MAX_BATCH_ROWS + MAX_QUEUED_NAMES) / n, 69 at the defaults and n=1000). 2x and 10x
are twice and ten times as many. Each client is a keep-alive connection posting /v1/generate back to
back and sending the next request as soon as an answer comes, 429 and 503 included, with no back-off:
the hostile case (clients that honour Retry-After only make it easier). Delivered names/s counts the
names of 200 answers only. Levels are interleaved over rounds and the figures are medians. Client and
server share this machine's cores, so more clients also take CPU from the server: the ratio measures
that too.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import Tally, keep_posting, machine_line, served_registry, trained_checkpoint
from serving_http import start_server

LEVELS = (1, 2, 10)
DEFAULT_ROWS, DEFAULT_QUEUED_NAMES = 4096, 65536  # serving/settings.py


@dataclass
class Level:
    names_per_s: float
    ok: int
    refused: dict = field(default_factory=dict)  # status -> count
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    rss_peak_mb: float = 0.0
    server_cores: float = 0.0  # CPU seconds per second the server used
    client_cores: float = 0.0  # and this process, the clients


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def hammer(url: str, clients: int, n: int, duration: float, pid: int, warmup_s: float = 1.0) -> Level:
    tally, peak, cpu = Tally(time.perf_counter() + warmup_s), [0.0], []
    stop_at = tally.measure_from + duration

    async def watch_memory():
        while time.perf_counter() < stop_at:
            peak[0] = max(peak[0], rss_mb(pid))
            await asyncio.sleep(0.2)

    async def measure_cpu():
        await asyncio.sleep(max(0.0, tally.measure_from - time.perf_counter()))
        cpu[:] = [cpu_seconds(pid), time.process_time()]

    await asyncio.gather(watch_memory(), measure_cpu(),
                         *(keep_posting(url, {"n": n}, stop_at, tally) for _ in range(clients)))
    elapsed = time.perf_counter() - tally.measure_from
    return Level(tally.names / elapsed, len(tally.latencies), tally.failed, tally.percentile_ms(50),
                 tally.percentile_ms(99), peak[0], (cpu_seconds(pid) - cpu[0]) / elapsed,
                 (time.process_time() - cpu[1]) / elapsed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp")
    p.add_argument("--n", type=int, default=1000, help="names per request")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per level and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    registry = served_registry({args.model: trained_checkpoint(args.model)})
    full = (DEFAULT_ROWS + DEFAULT_QUEUED_NAMES) // args.n
    process, url = start_server(registry, max_queue=256)  # the defaults, which start_server raises
    runs: dict[int, list[Level]] = {level: [] for level in LEVELS}
    try:
        asyncio.run(hammer(url, full, args.n, 2.0, process.pid))  # warm-up
        time.sleep(3)
        rss_before = rss_mb(process.pid)
        for _ in range(args.rounds):
            for level in LEVELS:
                runs[level].append(asyncio.run(hammer(url, full * level, args.n, args.duration, process.pid)))
        time.sleep(3)  # idle: the engine gives back what the peak took
        rss_after = rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(60)

    print(machine_line("serving_overload"))
    print(f"model {args.model}, n={args.n}, 1x = {full} clients (rows + queued names / n), no back-off on 429/503; "
          f"medians of {args.rounds} interleaved rounds of {args.duration:.0f} s")
    base = statistics.median(r.names_per_s for r in runs[1])
    print(f"  {'load':<6} {'clients':>7} {'names/s':>10} {'of 1x':>6} {'ok':>6} {'refused (429/503)':>18} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'peak RSS MB':>12} {'CPU server/client':>18}")
    for level in LEVELS:
        rounds = runs[level]
        median = lambda attr: statistics.median(getattr(r, attr) for r in rounds)  # noqa: E731
        refused = {status: sum(r.refused.get(status, 0) for r in rounds) for status in (429, 503)}
        print(f"  {level:>3}x   {full * level:>7} {median('names_per_s'):>10,.0f} {median('names_per_s') / base:>6.0%} "
              f"{sum(r.ok for r in rounds):>6} {refused[429]:>9}/{refused[503]:<8} {median('p50_ms'):>8.0f} "
              f"{median('p99_ms'):>8.0f} {max(r.rss_peak_mb for r in rounds):>12.0f} "
              f"{median('server_cores'):>10.2f}/{median('client_cores'):<7.2f}")
    print(f"  RSS before the load {rss_before:.0f} MB, 3 s after it {rss_after:.0f} MB "
          f"({rss_after - rss_before:+.1f} MB)")


if __name__ == "__main__":
    main()
