"""NAMEGEN_WORKERS: several server processes on one port, each with its own engines, as one service."""
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clients.loadgen import run_load
from conftest import ROOT

SEEDED = {"n": 50, "seed": 11, "temperature": 0.8}
BUSY = {"n": 10_000}  # the most a request may ask for: it keeps its worker busy a while (~40 ms)


def workers_of(pid: int) -> list[int]:
    """The worker processes of a server: the parent's children started by multiprocessing's spawn."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def cpu_ticks(pids: list[int]) -> list[int]:
    """User plus system CPU ticks of each process so far."""
    return [sum(int(x) for x in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]) for pid in pids]


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name)


def wait_for(predicate, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_workers_answer_seeded_requests_alike_and_their_metrics_are_summed(served_registry, start_server):
    server = start_server(served_registry, workers=2, threads=1)
    pids = wait_for(lambda: len(workers_of(server.process.pid)) == 2 and workers_of(server.process.pid))
    idle = cpu_ticks(pids)
    # `namegen bench` opens its keep-alive connections at once: the kernel spreads them over the workers'
    # sockets by a hash (22 or more of the 24 on one worker: odds of 1 in 28,000), and every worker does a share.
    report = asyncio.run(run_load(server.url, concurrency=24, requests=72, n=BUSY["n"]))
    worked = [after - before for before, after in zip(idle, cpu_ticks(pids))]
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.post(server.url + "/v1/generate", json=SEEDED), range(24)))
    assert report.ok == 72 and all(a.status_code == 200 for a in answers)
    names = {tuple((n["name"], n["nll"]) for n in a.json()["names"]) for a in answers}
    assert len(names) == 1 and len(next(iter(names))) == 50  # whichever worker answered
    assert min(worked) >= max(worked) / 10, worked  # neither worker left idle
    # Counters of every worker meet in one scrape, whichever worker answers it.
    for _ in range(4):
        assert metric(server.url, "namegen_names_generated_total") == 72 * BUSY["n"] + 24 * SEEDED["n"]
    assert metric(server.url, "namegen_model_loaded") >= 1
    assert server.stop() == 0  # SIGTERM: every worker drains, the parent exits 0
    assert not any(Path(f"/proc/{pid}").exists() and b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
                   for pid in pids)


def test_a_worker_that_dies_is_replaced_and_the_service_keeps_answering(served_registry, start_server):
    server = start_server(served_registry, workers=2, threads=1)
    first = wait_for(lambda: len(workers_of(server.process.pid)) == 2 and workers_of(server.process.pid))
    os.kill(first[0], signal.SIGKILL)
    for _ in range(10):  # the other worker answers meanwhile
        assert httpx.post(server.url + "/v1/generate", json=SEEDED, timeout=60).status_code == 200
    now = wait_for(lambda: (pids := workers_of(server.process.pid)) and len(pids) == 2 and first[0] not in pids
                   and pids)
    assert first[1] in now
    wait_for(lambda: all(httpx.post(server.url + "/v1/generate", json=SEEDED, timeout=60).status_code == 200
                         for _ in range(10)))
    assert server.stop() == 0


@pytest.mark.parametrize("shared", [False, True], ids=["plain", "reuseport"])
def test_a_port_in_use_is_one_line_and_a_failing_exit(served_registry, shared):
    # shared: the port is held by another workers-mode server (SO_REUSEPORT), which must not be joined either
    with socket.socket() as taken:
        if shared:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "NAMEGEN_REGISTRY": str(served_registry), "NAMEGEN_WORKERS": "2", "NAMEGEN_PORT": str(port)}
        done = subprocess.run([sys.executable, "-m", "serving"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"error: cannot listen on 127.0.0.1:{port}: Address already in use"]
