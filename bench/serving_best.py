"""Each served model's names/s over HTTP, measured by two independent load generators in the same run.

    .venv/bin/python bench/serving_best.py [--registry registry] [--models a,b] [--baseline wavenet-ensemble]
                                           [--configs 1x2,2x1] [--n 1000] [--connections 8] [--duration 5]
                                           [--rounds 3]

One server (`python -m serving`) per --configs entry, WxT: NAMEGEN_WORKERS=W processes of NAMEGEN_THREADS=T
forward threads (default: one process with a thread per core), serves --models of --registry (default:
every model in it). For each server and model in turn, wrk (C, Debian package `wrk`, posting with bench/wrk_post.lua) and `namegen bench` (the CLI as a
user runs it) each keep --connections keep-alive connections asking for --n names for --duration seconds.
Servers, models and drivers are interleaved over --rounds rounds (the drivers' order alternating) and the
figures are medians. Printed per server, model and driver: names/s and the rounds' range, p50/p99 latency, failed requests,
the cores the client itself used; the ratio of each model to --baseline on the same server under each driver;
and the drivers' agreement
(namegen bench / wrk). wrk counts n names per non-error answer (it does not read bodies); namegen bench
counts the names it was sent. wrk leaves out the answers in flight at its deadline, so at long latencies it
reads low by about p50 / (2 x duration); namegen bench waits for them and counts their time too. Client and
server share this machine's cores.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common import ROOT, machine_line
from serving_http import start_server

from clients import NameGenClient  # common has put the repository root on sys.path
from namegen.contract import model_names

WRK_SCRIPT = ROOT / "bench" / "wrk_post.lua"
DRIVERS = ("wrk", "namegen bench")


@dataclass
class Drive:
    names_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    failed: int
    client_cores: float  # CPU seconds per second the load generator used


def drive_wrk(url: str, model: str, n: int, connections: int, duration: int) -> Drive:
    body = json.dumps({"n": n, "model": model}, separators=(",", ":"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "120s",
                           "-s", str(WRK_SCRIPT), f"{url}/v1/generate", "--", body],
                          capture_output=True, text=True, timeout=duration + 300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in done.stdout.splitlines() if x.startswith("wrk-json ")), None)
    if done.returncode != 0 or line is None:
        sys.exit(f"error: wrk exited {done.returncode}: {' '.join((done.stderr or done.stdout).split())[-300:]}")
    counts = json.loads(line.removeprefix("wrk-json "))
    seconds = counts["duration_us"] / 1e6
    ok = counts["requests"] - counts["non_2xx_3xx"]
    failed = counts["non_2xx_3xx"] + sum(counts[k] for k in ("connect", "read", "write", "timeout"))
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return Drive(ok * n / seconds, ok / seconds, counts["p50_us"] / 1000, counts["p99_us"] / 1000, failed,
                 cpu / seconds)


def drive_namegen_bench(url: str, model: str, n: int, connections: int, duration: int) -> Drive:
    done = subprocess.run([sys.executable, "-m", "clients", "bench", "--url", url, "-c", str(connections),
                           "-n", str(n), "--model", model, "--duration", str(duration),
                           "--warmup", str(connections), "--timeout", "120", "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=duration + 300)
    if done.returncode != 0:
        sys.exit(f"error: namegen bench exited {done.returncode}: {' '.join(done.stderr.split())[-300:]}")
    report = json.loads(done.stdout)
    latency = report["latency_ms"]
    return Drive(report["names_per_s"], report["requests_per_s"], latency["p50"], latency["p99"],
                 report["requests"] - report["ok"], report["client_cpu_s"] / report["elapsed_s"])


DRIVE = {"wrk": drive_wrk, "namegen bench": drive_namegen_bench}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", type=Path, default=ROOT / "registry", help="default: registry/")
    p.add_argument("--models", help="comma-separated names to measure (default: every model the server serves)")
    p.add_argument("--baseline", default="wavenet-ensemble", help="the model the others are compared with")
    p.add_argument("--configs", default=f"1x{os.cpu_count() or 1}",
                   help="servers to measure, comma-separated WORKERSxTHREADS (default 1x<cores>)")
    p.add_argument("--n", type=int, default=1000, help="names per request")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--duration", type=int, default=5, help="whole seconds per model, driver and round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if min(args.n, args.connections, args.duration, args.rounds) < 1:
        p.error("--n, --connections, --duration and --rounds must be >= 1")
    given = args.configs
    try:
        args.configs = [tuple(int(x) for x in config.split("x")) for config in given.split(",")]
    except ValueError:
        args.configs = []
    if not args.configs or any(len(c) != 2 or min(c) < 1 for c in args.configs):
        p.error(f"--configs {given}: expected WORKERSxTHREADS entries, both at least 1, e.g. 1x2,2x1")
    if shutil.which("wrk") is None:
        p.error("wrk is not installed: apt-get install wrk (Debian package wrk)")
    published = model_names(args.registry)
    if not published:
        p.error(f"--registry {args.registry} holds no published model (make train export, make best)")
    unknown = [name for name in (args.models or "").split(",") if name and name not in published]
    if unknown:
        p.error(f"--models {','.join(unknown)}: not in --registry {args.registry} (it holds {', '.join(published)})")
    return args


def served_models(url: str, wanted: list[str] | None) -> dict[str, float | None]:
    """name -> val NLL of what the server serves, in the order asked; exits naming a model it does not serve."""
    with NameGenClient(url) as client:
        listing = client.models()
    served = {m.name: m.metrics.get("val_nll") for m in listing.models}
    for rejected in listing.raw.get("rejected", []):
        print(f"note: the server refused {rejected.get('model')} {rejected.get('version')}: {rejected.get('error')}",
              file=sys.stderr)
    for name in wanted or []:
        if name not in served:
            why = next((r.get("error") for r in listing.raw.get("rejected", []) if r.get("model") == name),
                       "not in the registry")
            sys.exit(f"error: --models {name}: the server does not serve it ({why})")
    return {name: served[name] for name in wanted} if wanted else served


def measure(urls: dict[str, str], models: list[str], args) -> dict[tuple[str, str, str], list[Drive]]:
    for url in urls.values():
        for model in models:  # warm-up: first requests load sessions and caches
            drive_wrk(url, model, args.n, args.connections, 1)
    runs: dict[tuple[str, str, str], list[Drive]] = {}
    for round_index in range(args.rounds):
        drivers = DRIVERS if round_index % 2 == 0 else DRIVERS[::-1]
        for config, url in urls.items():
            for model in models:
                for driver in drivers:
                    runs.setdefault((config, model, driver), []).append(
                        DRIVE[driver](url, model, args.n, args.connections, args.duration))
    return runs


def report(runs: dict[tuple[str, str, str], list[Drive]], val_nll: dict[str, float | None], args) -> None:
    def median(config, model, driver, attr):
        return statistics.median(getattr(d, attr) for d in runs[(config, model, driver)])

    baseline = args.baseline if args.baseline in val_nll else None
    configs = list(dict.fromkeys(config for config, _, _ in runs))
    print(machine_line("serving_best"))
    print(f"registry {args.registry}, n={args.n} x {args.connections} connections, medians of {args.rounds} "
          f"interleaved rounds of {args.duration} s, client and server on the same machine; server WxT: "
          f"W worker processes of T forward threads")
    print(f"  {'server':<6} {'model':<20} {'val NLL':>7}  {'driver':<13} {'names/s':>10} {'rounds min-max':>19} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'failed':>6} {'client cores':>12}  {'vs ' + (baseline or '-'):>20}")
    for config in configs:
        for model, nll in val_nll.items():
            for driver in DRIVERS:
                key = (config, model, driver)
                names = median(*key, "names_per_s")
                spread = [d.names_per_s for d in runs[key]]
                ratio = f"{names / median(config, baseline, driver, 'names_per_s'):.2f}x" if baseline else "-"
                print(f"  {config:<6} {model:<20} {'-' if nll is None else f'{nll:.4f}':>7}  {driver:<13} "
                      f"{names:>10,.0f} {f'{min(spread):,.0f}-{max(spread):,.0f}':>19} {median(*key, 'p50_ms'):>7.1f} "
                      f"{median(*key, 'p99_ms'):>7.1f} {sum(d.failed for d in runs[key]):>6} "
                      f"{median(*key, 'client_cores'):>12.2f}  {ratio:>20}")
    agreement = ", ".join(
        f"{config} {model} {median(config, model, 'namegen bench', 'names_per_s') / median(config, model, 'wrk', 'names_per_s'):.2f}"
        for config in configs for model in val_nll)
    print(f"  drivers' agreement, namegen bench / wrk names/s: {agreement}")
    if len(configs) > 1:
        first = configs[0]
        for config in configs[1:]:
            print(f"  server {config} / {first}, names/s: " + ", ".join(
                f"{model} {median(config, model, 'wrk', 'names_per_s') / median(first, model, 'wrk', 'names_per_s'):.2f}"
                f" (wrk)" for model in val_nll))
    if baseline is None:
        print(f"  no ratios: the baseline {args.baseline} is not among the models measured (--baseline NAME)")


def main() -> None:
    args = parse_args()
    wanted = [name for name in (args.models or "").split(",") if name] or None
    servers = {}
    try:
        for workers, threads in args.configs:
            env = {"workers": workers, "threads": threads, **({"models": ",".join(wanted)} if wanted else {})}
            servers[f"{workers}x{threads}"] = start_server(args.registry, **env)
        val_nll = served_models(next(iter(servers.values()))[1], wanted)
        runs = measure({config: url for config, (_, url) in servers.items()}, list(val_nll), args)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(60)
    report(runs, val_nll, args)


if __name__ == "__main__":
    main()
