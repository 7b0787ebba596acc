"""The load generators side by side against one server: does `namegen bench` measure the server or itself?

    .venv/bin/python bench/serving_loadgen.py [--model mlp] [--duration 5] [--rounds 3]

One server serves the default mlp. Three clients take turns driving it, interleaved over --rounds rounds
(medians): wrk (C, bench/wrk_post.lua), `namegen bench` (the CLI, in its own process) and the serving
benchmarks' clients (bench/serving_http.py's raw_load, in this process), in two scenarios: 8 connections
asking n=1000 (the server's work dominates) and 64 connections asking n=1 (the HTTP exchange dominates, so a
client's own cost shows most). Printed per scenario and client: names/s, req/s, p50/p99 latency, failed
requests, the cores the client used and its CPU per request. Client and server share this machine's cores:
every core a client takes is one the server does not get.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import time

from common import machine_line, served_registry, trained_checkpoint
from serving_best import Drive, drive_namegen_bench, drive_wrk
from serving_http import raw_load, start_server

SCENARIOS = ((8, 1000), (64, 1))  # (connections, names per request)


def drive_bench_clients(url: str, model: str, n: int, connections: int, duration: int) -> Drive:
    del model  # raw_load asks for the server's default, the model served here
    cpu_start, start = time.process_time(), time.perf_counter()
    load = asyncio.run(raw_load(url, connections, n, duration))
    cores = (time.process_time() - cpu_start) / (time.perf_counter() - start)  # its 1 s warm-up included
    return Drive(load.names_per_s, load.requests_per_s, load.latency_ms["p50"], load.latency_ms["p99"],
                 load.failed, cores)


DRIVERS = {"wrk": drive_wrk, "namegen bench": drive_namegen_bench, "bench clients": drive_bench_clients}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp")
    p.add_argument("--duration", type=int, default=5, help="whole seconds per scenario, client and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    drivers = [d for d in DRIVERS if d != "wrk" or shutil.which("wrk")]
    registry = served_registry({args.model: trained_checkpoint(args.model)})
    process, url = start_server(registry)
    runs: dict[tuple, list[Drive]] = {}
    try:
        drive_bench_clients(url, args.model, 1000, 8, 1)  # warm-up
        for round_index in range(args.rounds):
            order = drivers[round_index % len(drivers):] + drivers[:round_index % len(drivers)]
            for connections, n in SCENARIOS:
                for driver in order:
                    runs.setdefault((connections, n, driver), []).append(
                        DRIVERS[driver](url, args.model, n, connections, args.duration))
    finally:
        process.terminate()
        process.wait(60)

    print(machine_line("serving_loadgen"))
    print(f"model {args.model}, one server, medians of {args.rounds} interleaved rounds of {args.duration} s, "
          f"client and server on the same machine")
    print(f"  {'scenario':<20} {'client':<14} {'names/s':>10} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'failed':>6} {'client cores':>12} {'client ms/req':>13}")
    for connections, n in SCENARIOS:
        for driver in drivers:
            rounds = runs[(connections, n, driver)]
            median = lambda attr: statistics.median(getattr(d, attr) for d in rounds)  # noqa: E731
            print(f"  {f'{connections} x n={n}':<20} {driver:<14} {median('names_per_s'):>10,.0f} "
                  f"{median('requests_per_s'):>9.1f} {median('p50_ms'):>7.1f} {median('p99_ms'):>7.1f} "
                  f"{sum(d.failed for d in rounds):>6} {median('client_cores'):>12.2f} "
                  f"{1000 * median('client_cores') / median('requests_per_s'):>13.3f}")
    if "wrk" not in drivers:
        print("  wrk is not installed (Debian package wrk): its rows are missing")


if __name__ == "__main__":
    main()
