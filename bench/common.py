"""What every benchmark shares: the machine line, the default mlp checkpoint, a registry to serve it from, and
keep_posting (clients/keepalive.py) with one body until a deadline."""
from __future__ import annotations

import json
import os
import time
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from clients import keepalive  # noqa: E402
from clients.keepalive import Tally, Target  # noqa: E402,F401  (Tally: for the benchmarks)

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
    """One keep-alive connection posting `body` to /v1/generate back to back until time.perf_counter() passes
    `until`; answered(sent, status, payload) for each answer (a Tally adds them up)."""
    target = Target.parse(url)
    request = target.post(body)
    await keepalive.keep_posting(target, lambda: request if time.perf_counter() < until else None, answered)
