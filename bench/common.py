"""What every benchmark shares: the machine line, the default mlp checkpoint, a registry to serve it from."""
from __future__ import annotations

import asyncio
import json
import os
import time
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "names.txt"
RUNS = ROOT / "runs"


def cpu_model() -> str:
    """The CPU's model name and widest vector extension, from /proc/cpuinfo (figures differ by both)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    vector = next((name for flag, name in (("avx512_vnni", "AVX-512 VNNI"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))
                   if flag in flags), "no AVX2")
    return f"{fields.get('model name', platform.machine())}, {vector}"


def machine_line(name: str) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{name}  {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  {platform.platform()}  "
            f"{cpu_model()}  {os.cpu_count()} CPUs (load average {load})")


def trained_checkpoint(model: str = "mlp", *extra_args: str, data: Path = DATA, threads: int = 1) -> Path:
    """runs/bench-<model>: trained on makemore's names.txt with the CLI defaults, reused once finished."""
    out = RUNS / f"bench-{model}"
    meta = out / "checkpoint.json"
    if meta.is_file() and json.loads(meta.read_text())["training"]["finished"]:
        print(f"reusing {out} (delete it to train again)", file=sys.stderr)
        return out
    if not data.is_file():
        sys.exit(f"error: {data} is absent; the benchmarks need makemore's names.txt")
    print(f"training {model} on {data} into {out}", file=sys.stderr)
    # One OpenMP thread per core crawls whenever a neighbour holds a core on a small shared machine.
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    subprocess.run([sys.executable, "-m", "training", "train", "--model", model, "--data", str(data), "--out",
                    str(out), "--overwrite", "--no-plots", "--quiet", *extra_args], cwd=ROOT, check=True, env=env)
    return out


def served_registry(checkpoints: dict[str, Path]) -> Path:
    """runs/bench-registry with each checkpoint exported under its name (re-exported when retrained)."""
    sys.path.insert(0, str(ROOT))
    from export.pipeline import export_checkpoint
    from namegen.contract import read_latest, read_manifest

    registry = RUNS / "bench-registry"
    for name, checkpoint in checkpoints.items():
        version = read_latest(registry, name)
        if version:
            manifest = read_manifest(registry / name / version).raw
            if manifest.get("checkpoint") == str(checkpoint.resolve()) and \
                    manifest["metrics"] == json.loads((checkpoint / "checkpoint.json").read_text())["metrics"]:
                continue
        export_checkpoint(checkpoint, registry, name=name, keep=2)
    return registry


async def keep_posting(url: str, body: dict, until: float, answered) -> None:
    """One keep-alive HTTP/1.1 connection posting `body` to /v1/generate back to back until time.perf_counter()
    passes `until`; answered(sent, status, payload) for each answer. Bare asyncio: an HTTP client library
    costs more CPU per request than the server on this machine."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    request = (f"POST /v1/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(data)}\r\n\r\n").encode() + data
    reader, writer = await asyncio.open_connection(host, int(port))
    while (sent := time.perf_counter()) < until:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        answered(sent, int(head[9:12]), await reader.readexactly(length))
    writer.close()


class Tally:
    """What keep_posting's answers add up to, counted from `measure_from` on: the latency and names of each
    200, and how many of every other status."""

    def __init__(self, measure_from: float, count_names=lambda payload: payload.count(b'"name":')):
        self.measure_from, self.count_names = measure_from, count_names
        self.latencies: list[float] = []
        self.names = 0
        self.refused: dict[int, int] = {}

    def __call__(self, sent: float, status: int, payload: bytes) -> None:
        if sent < self.measure_from:
            return
        if status == 200:
            self.latencies.append(time.perf_counter() - sent)
            self.names += self.count_names(payload)
        else:
            self.refused[status] = self.refused.get(status, 0) + 1

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000 if ordered else 0.0
