"""Cold start to ready, and the server's resident memory, with the onnxruntime backend.

    .venv/bin/python bench/serving_startup.py [--model mlp] [--runs 5]

Time from launching `python -m serving` to the first 200 from /readyz (models loaded, validated and
warmed), then VmRSS after 200 requests. Medians of several launches.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import httpx
from common import ROOT, machine_line, served_registry, trained_checkpoint

PORT = 18731


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def one_launch(registry, model: str) -> tuple[float, float]:
    env = {**os.environ, "NAMEGEN_REGISTRY": str(registry), "NAMEGEN_MODELS": model, "NAMEGEN_PORT": str(PORT),
           "NAMEGEN_LOG_LEVEL": "warning"}
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "serving"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{PORT}"
    try:
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.005)
        ready_s = time.perf_counter() - start
        with httpx.Client(base_url=url) as client:
            for i in range(200):
                client.post("/v1/generate", json={"n": 50, "seed": i})
        return ready_s, rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    registry = served_registry({args.model: trained_checkpoint(args.model)})
    launches = [one_launch(registry, args.model) for _ in range(args.runs)]
    print(machine_line("serving_startup"))
    print(f"model {args.model}, onnxruntime backend, {args.runs} launches")
    print(f"  cold start to ready: median {statistics.median(l[0] for l in launches):.2f} s "
          f"(min {min(l[0] for l in launches):.2f}, max {max(l[0] for l in launches):.2f})")
    print(f"  RSS after 200 requests: median {statistics.median(l[1] for l in launches):.0f} MB")


if __name__ == "__main__":
    main()
