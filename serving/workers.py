"""NAMEGEN_WORKERS > 1: that many server processes on one port, each a whole server with its own engines
and so its own GIL, supervised by the process `python -m serving` started.

Each worker listens on a socket of its own, bound to the same port with SO_REUSEPORT, so the kernel spreads
new connections over the workers. One socket shared by every worker would not: the first worker to wake
accepts every connection waiting, and a client that opens its keep-alive connections at once can land on
one worker while the others idle (measured: 112,000 names/s against 196,000).

A seeded request gets the same names whichever worker answers it (batch invariance). Each worker watches
the registry itself: after a new version is published they switch within a watch interval of each other,
and an admin reload reaches the worker that answers it at once, the others at their next poll. Counters
of every worker meet in a folder of prometheus_client's multiprocess mode (metrics.py). A worker that
dies is started again on its socket; SIGTERM or Ctrl-C stops every worker, each draining what it has in
flight, and the supervisor then exits 0.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from .metrics import MULTIPROCESS_DIR

log = logging.getLogger("namegen.workers")
POLL_S = 0.5  # how often the supervisor looks for a worker that died


def reuse_port_sockets(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """`count` listening sockets on one port (an ephemeral one when port is 0). The port must be free:
    SO_REUSEPORT alone would let a second server of the same user share it and take half its connections,
    so a plain socket binds it first (OSError when it is taken) and hands it over."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        port = probe.getsockname()[1]
    sockets = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        port = sock.getsockname()[1]
        sock.listen(backlog)
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


def _worker(config_kwargs: dict, sock: socket.socket) -> None:
    """A worker process: uvicorn serving the app create_worker_app builds, on its own socket."""
    config = uvicorn.Config("serving.app:create_worker_app", factory=True, **config_kwargs)
    uvicorn.Server(config).run(sockets=[sock])


def serve_workers(workers: int, config_kwargs: dict) -> None:
    """Run `workers` worker processes until SIGTERM or SIGINT; uvicorn.Config arguments in config_kwargs
    (picklable: each worker builds its configuration from them)."""
    host, port = config_kwargs["host"], config_kwargs["port"]
    try:
        sockets = reuse_port_sockets(host, port, workers, config_kwargs.get("backlog", 2048))
    except OSError as e:
        sys.exit(f"error: cannot listen on {host}:{port}: {e.strerror}")
    folder = tempfile.mkdtemp(prefix="namegen-metrics-")
    os.environ[MULTIPROCESS_DIR] = folder  # before any worker starts: they inherit it
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads or sessions inherited
    stop, failed = threading.Event(), False
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    def start(sock: socket.socket):
        process = spawn.Process(target=_worker, args=(config_kwargs, sock), name="namegen-worker")
        process.start()
        return process

    try:
        processes = [start(sock) for sock in sockets]
        log.info("Uvicorn running on http://%s:%d in %d worker processes %s (Press CTRL+C to quit)", host,
                 sockets[0].getsockname()[1], workers, [p.pid for p in processes])  # the port, when it was 0
        while not stop.wait(POLL_S):
            for i, process in enumerate(processes):
                if process.is_alive():
                    continue
                if process.exitcode == STARTUP_FAILURE:  # it would fail again: the app cannot start here
                    log.error("worker %d failed to start; stopping the others", process.pid)
                    stop.set()
                    failed = True
                    break
                log.error("worker %d exited with %s; starting another", process.pid, process.exitcode)
                processes[i] = start(sockets[i])
        for process in processes:
            process.terminate()  # SIGTERM: the worker drains what it has in flight
        for process in processes:
            process.join()
        if failed:
            sys.exit("error: a worker could not start (its log above says why)")
    finally:
        for sock in sockets:
            sock.close()
        shutil.rmtree(folder, ignore_errors=True)
