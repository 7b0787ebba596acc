"""Over HTTP: continuous batching against one-request-at-a-time, same run, same machine.

    .venv/bin/python bench/serving_http.py [--model mlp] [--duration 10]

Two servers on 127.0.0.1 serve the same exported model: the default (continuous batching) and one with
NAMEGEN_MAX_ACTIVE_REQUESTS=1 (each request runs alone, as a naive server would). Each faces
`namegen bench`'s load generator: 64 clients asking n=1, then 8 clients asking n=1000. The client
runs on the same 2 cores as the server, so absolute figures are lower bounds.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time

import httpx
from common import ROOT, machine_line, served_registry, trained_checkpoint

sys.path.insert(0, str(ROOT))
from clients.loadgen import run_load  # noqa: E402

SCENARIOS = [("64 clients, n=1", 64, 1), ("8 clients, n=1000", 8, 1000)]


def start_server(registry, **env) -> tuple[subprocess.Popen, str]:
    settings = {"NAMEGEN_REGISTRY": str(registry), "NAMEGEN_PORT": "0", "NAMEGEN_LOG_LEVEL": "warning",
                "NAMEGEN_MAX_QUEUE": "1024", **{f"NAMEGEN_{k.upper()}": str(v) for k, v in env.items()}}
    process = subprocess.Popen([sys.executable, "-m", "serving"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env={**os.environ, **settings, "NAMEGEN_LOG_LEVEL": "info"})
    for line in process.stdout:
        match = re.search(r"Uvicorn running on (http://\S+)", line)
        if match:
            url = match.group(1)
            break
    else:
        raise RuntimeError("server did not start")
    while httpx.get(url + "/readyz").status_code != 200:
        time.sleep(0.05)
    return process, url


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per scenario and server")
    args = p.parse_args()
    registry = served_registry({args.model: trained_checkpoint(args.model)})

    results = {}
    for mode, env in [("continuous", {}), ("one at a time", {"max_active_requests": 1})]:
        process, url = start_server(registry, **env)
        try:
            for scenario, concurrency, n in SCENARIOS:
                report = asyncio.run(run_load(url, concurrency=concurrency, duration=args.duration, n=n,
                                              warmup=concurrency * 2, timeout=120))
                results[mode, scenario] = report
        finally:
            process.terminate()
            process.wait(60)

    print(machine_line("serving_http"))
    print(f"model {args.model}, onnxruntime, {args.duration:.0f} s per scenario, client on the same machine")
    print(f"  {'scenario':<20} {'server':<14} {'req/s':>9} {'names/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for scenario, _, _ in SCENARIOS:
        for mode in ("continuous", "one at a time"):
            r = results[mode, scenario]
            print(f"  {scenario:<20} {mode:<14} {r.requests_per_s:>9.1f} {r.names_per_s:>10.0f} "
                  f"{r.latency_ms['p50']:>8.1f} {r.latency_ms['p99']:>8.1f} {r.requests - r.ok:>7}")
        ratio = results["continuous", scenario].names_per_s / results["one at a time", scenario].names_per_s
        print(f"  {scenario:<20} continuous / one at a time: {ratio:.1f}x")


if __name__ == "__main__":
    main()
