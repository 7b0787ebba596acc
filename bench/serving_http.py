"""Over HTTP: continuous batching against one-request-at-a-time, same run, same machine.

    .venv/bin/python bench/serving_http.py [--model mlp] [--duration 5] [--rounds 3]

Two servers on 127.0.0.1 serve the same exported model: the default (continuous batching) and one with
NAMEGEN_MAX_ACTIVE_REQUESTS=1 (each request runs alone, as a naive server would). Each faces 64 clients
asking n=1, then 8 clients asking n=1000, for --duration seconds after a warm-up, in --rounds
interleaved rounds; the figures are medians over the rounds.

The clients are bare asyncio HTTP/1.1 keep-alive connections (clients/keepalive.py, the client of
`namegen bench` too, whose figures --loadgen adds): on this 2-core machine an HTTP library such as
httpx spends about 3.5 ms of CPU per request, more than the server. Client and server share the
2 cores, so absolute figures are lower bounds.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx
from dataclasses import dataclass

from common import ROOT, Tally, keep_posting, machine_line, served_registry, trained_checkpoint

sys.path.insert(0, str(ROOT))
from clients.loadgen import run_load  # noqa: E402

SCENARIOS = [("64 clients, n=1", 64, 1), ("8 clients, n=1000", 8, 1000)]


@dataclass
class Load:
    requests_per_s: float
    names_per_s: float
    latency_ms: dict
    failed: int


async def raw_load(url: str, concurrency: int, n: int, duration: float, warmup_s: float = 1.0) -> Load:
    """`concurrency` keep-alive connections posting /v1/generate back to back; counts after the warm-up."""
    start = time.perf_counter()
    tally = Tally(start + warmup_s)
    await asyncio.gather(*(keep_posting(url, {"n": n}, tally.measure_from + duration, tally)
                           for _ in range(concurrency)))
    elapsed = time.perf_counter() - tally.measure_from
    return Load(len(tally.latencies) / elapsed, tally.names / elapsed,
                {"p50": tally.percentile_ms(50), "p99": tally.percentile_ms(99)}, sum(tally.failed.values()))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(registry, **env) -> tuple[subprocess.Popen, str]:
    port = free_port()
    settings = {"NAMEGEN_REGISTRY": str(registry), "NAMEGEN_PORT": str(port), "NAMEGEN_LOG_LEVEL": "warning",
                "NAMEGEN_MAX_QUEUE": "1024", **{f"NAMEGEN_{k.upper()}": str(v) for k, v in env.items()}}
    process = subprocess.Popen([sys.executable, "-m", "serving"], cwd=ROOT, stdout=subprocess.DEVNULL,
                               env={**os.environ, **settings})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("server did not become ready")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per scenario, server and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds; figures are medians over them")
    p.add_argument("--loadgen", action="store_true", help="also measure with `namegen bench` (run_load)")
    args = p.parse_args()
    registry = served_registry({args.model: trained_checkpoint(args.model)})

    modes = [("continuous", {}), ("one at a time", {"max_active_requests": 1})]
    servers = {mode: start_server(registry, **env) for mode, env in modes}
    runs: dict[tuple, list[Load]] = {}
    try:
        for _ in range(args.rounds):  # interleaved, so drift in the machine's load hits both servers alike
            for scenario, concurrency, n in SCENARIOS:
                for mode, _ in modes:
                    url = servers[mode][1]
                    runs.setdefault((mode, scenario), []).append(
                        asyncio.run(raw_load(url, concurrency, n, args.duration)))
                    if args.loadgen:
                        report = asyncio.run(run_load(url, concurrency=concurrency, duration=args.duration, n=n,
                                                      warmup=concurrency * 2, timeout=120))
                        runs.setdefault((mode, scenario, "loadgen"), []).append(Load(
                            report.requests_per_s, report.names_per_s, report.latency_ms, report.requests - report.ok))
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(60)

    def median(key, field):
        values = [getattr(r, field) if field != "p50" and field != "p99" else r.latency_ms[field] for r in runs[key]]
        return statistics.median(values)

    print(machine_line("serving_http"))
    print(f"model {args.model}, onnxruntime, medians of {args.rounds} rounds of {args.duration:.0f} s per scenario, "
          f"client on the same machine")
    print(f"  {'scenario':<20} {'server':<22} {'req/s':>9} {'names/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for scenario, _, _ in SCENARIOS:
        for key in [(m, scenario, *c) for c in ([()] + ([("loadgen",)] if args.loadgen else []))
                    for m, _ in modes]:
            label = key[0] + (" (bench)" if len(key) > 2 else "")
            print(f"  {scenario:<20} {label:<22} {median(key, 'requests_per_s'):>9.1f} "
                  f"{median(key, 'names_per_s'):>10.0f} {median(key, 'p50'):>8.1f} {median(key, 'p99'):>8.1f} "
                  f"{sum(r.failed for r in runs[key]):>7}")
        ratio = median(("continuous", scenario), "names_per_s") / median(("one at a time", scenario), "names_per_s")
        print(f"  {scenario:<20} continuous / one at a time: {ratio:.1f}x")


if __name__ == "__main__":
    main()
