"""Real containers on these machines, shared by the container tests (test_compose.py, test_k8s_pods.py):
podman with runc and a containers.conf of our own, a bookworm base image from debootstrap (no registry to
pull from), and the three images built once per session from this checkout (../shared/CONTAINERS.md).

The fixtures that use these live in conftest.py, session-scoped, so the images are built once for all.
"""
from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("NAMEGEN_TEST_CACHE", "/var/cache/namegen-test"))
DEBIAN_MIRROR = os.environ.get("NAMEGEN_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
TOOLS = ("podman", "runc", "docker-compose", "debootstrap")  # Debian package names too
# crun fails here on cgroups ("hybrid mode not supported") and on setrlimit; runc does not.
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n'
WHEELHOUSE = ROOT / "deploy" / "wheelhouse"
TORCH = "torch==2.13.0"
SEEDED = {"n": 8, "seed": 20261122, "temperature": 1.0}  # a request whose names the served version decides
TINY_TRAINING = "--steps 300 --n-embd 8 --n-hidden 64 --batch-size 64"  # ~10 s on one thread
# Variables docker-compose.yml reads; the caller's shell must not leak into the test's stack.
COMPOSE_VARIABLES = ("BASE_IMAGE", "LB_BASE_IMAGE", "PIP_EXTRA_ARGS", "NAMEGEN_TAG", "SERVE_PUBLISH", "LB_PUBLISH",
                     "MODEL", "MODEL_NAME", "SEED", "TRAIN_ARGS", "TRAIN_THREADS", "KEEP", "NAMES_FILE",
                     "NAMEGEN_WATCH_INTERVAL_S", "NAMEGEN_MODELS", "NAMEGEN_DEFAULT_MODEL", "NAMEGEN_ADMIN_TOKEN",
                     "NAMEGEN_LOG_LEVEL", "COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "COMPOSE_PROFILES", "DOCKER_HOST")
IMAGE_KINDS = ("serve", "train", "lb")  # the compose services that build an image


def run(cmd: list[str], env: dict | None = None, timeout: float = 600, check: bool = True,
        **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Phases:
    """Wall time of each step, printed at the end: the tests' time budget is part of what they show."""

    def __init__(self, apt_seconds: float):
        self.started = time.monotonic() - apt_seconds
        self.times: list[tuple[str, float]] = [("apt-get install", apt_seconds)]
        self._last = time.monotonic()

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.times.append((name, now - self._last))
        self._last = now

    def report(self) -> str:
        lines = [f"  {name:<48} {seconds:6.1f} s" for name, seconds in self.times]
        return "\n".join(lines + [f"  {'total':<48} {time.monotonic() - self.started:6.1f} s"])


class Podman:
    """The podman CLI with the test's containers.conf, and the socket of its Docker-compatible API."""

    def __init__(self, env: dict[str, str], phases: Phases):
        self.env = env
        self.phases = phases

    def __call__(self, *args, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return run(["podman", *map(str, args)], env=self.env, check=check, timeout=timeout)

    def lines(self, *args) -> list[str]:
        return self(*args).stdout.split()


class Images:
    """The images docker-compose.yml builds, from this checkout, under a tag of this session's own."""

    def __init__(self, podman: Podman, base: str):
        self.podman = podman
        self.base = base
        self.tag = f"test-{os.getpid()}"
        self.env = {**podman.env, "NAMEGEN_TAG": self.tag, "BASE_IMAGE": base, "LB_BASE_IMAGE": base}

    def name(self, kind: str) -> str:
        """As podman stores what docker-compose builds through its Docker API: in docker.io/library/."""
        return f"docker.io/library/namegen-{kind}:{self.tag}"

    def names(self) -> list[str]:
        return [self.name(kind) for kind in IMAGE_KINDS]

    def build(self) -> None:
        run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "--ansi", "never", "--profile", "train",
             "--profile", "scale", "build", "--parallel", *IMAGE_KINDS], env=self.env, timeout=900)

    def remove(self, images_before: set[str]) -> None:
        self.podman("rmi", *self.names(), check=False)
        # What the builds left untagged; images still in use (another run's) are refused, not forced.
        for _ in range(10):
            ours = set(self.podman.lines("images", "-a", "-q", "--no-trunc", "--filter", "dangling=true")) - images_before
            if not ours or self.podman("rmi", *ours, check=False).returncode == 0:
                break


def start_podman_service(env: dict[str, str], work: Path) -> subprocess.Popen:
    """`podman system service` on a socket of our own (env's DOCKER_HOST); the caller stops it by its PID."""
    sock = Path(env["DOCKER_HOST"].removeprefix("unix://"))
    with open(work / "service.log", "w") as log:
        service = subprocess.Popen(["podman", "system", "service", "--time=0", env["DOCKER_HOST"]], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not sock.exists():
        if service.poll() is not None or time.monotonic() > deadline:
            stop_process(service)
            raise AssertionError(f"podman system service did not start:\n{(work / 'service.log').read_text()}")
        time.sleep(0.1)
    return service


def stop_process(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def debootstrap_rootfs() -> Path:
    """A Debian bookworm root file system with python3, made once and kept in CACHE."""
    rootfs, complete = CACHE / "rootfs-bookworm", CACHE / "rootfs-bookworm.complete"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be making it
        if not complete.exists():
            partial = CACHE / "rootfs-bookworm.partial"
            for stale in (rootfs, partial):
                shutil.rmtree(stale, ignore_errors=True)
            run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", "bookworm",
                 str(partial), DEBIAN_MIRROR], timeout=900)
            for deb in (partial / "var" / "cache" / "apt" / "archives").glob("*.deb"):
                deb.unlink()
            partial.rename(rootfs)
            complete.touch()
        # pip inside a container needs the host's CA bundle to reach the package index here.
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt")
    return rootfs


def import_base_image(podman: Podman, rootfs: Path, name: str) -> None:
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(["podman", "import", "-", name], stdin=tar.stdout, env=podman.env,
                              capture_output=True, text=True, timeout=600)
    tar.stdout.close()
    assert tar.wait() == 0 and imported.returncode == 0, imported.stderr


def torch_into_wheelhouse() -> list[Path]:
    """The local CPU torch wheel (pip's configured find-links) into deploy/wheelhouse; what was added."""
    if list(WHEELHOUSE.glob("torch-*.whl")):
        return []
    before = set(WHEELHOUSE.iterdir())
    got = run([sys.executable, "-m", "pip", "download", TORCH, "--no-deps", "--no-index", "-d", str(WHEELHOUSE)],
              check=False)
    if got.returncode != 0:
        print(f"no local {TORCH} wheel; the training image gets torch from the package index (slow)")
    return sorted(set(WHEELHOUSE.iterdir()) - before)


# -- clients of what runs in the containers ---------------------------------------------------------------------
def wait_until(what: str, condition, timeout: float = 60, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except httpx.TransportError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def seeded_names(url: str) -> tuple[str, list[str]]:
    body = httpx.post(url + "/v1/generate", json=SEEDED, timeout=30).raise_for_status().json()
    return body["version"], [item["name"] for item in body["names"]]


def traffic(url: str, stop: threading.Event, answers: collections.Counter, versions: set, errors: list):
    """Seeded and unseeded requests, one after another, until told to stop; no retries."""
    with httpx.Client(base_url=url, timeout=30) as client:
        i = 0
        while not stop.is_set():
            body = SEEDED if i % 2 else {"n": 20}
            i += 1
            try:
                response = client.post("/v1/generate", json=body)
            except httpx.HTTPError as e:
                errors.append(repr(e))
                continue
            answers[response.status_code] += 1
            if response.status_code == 200:
                versions.add(response.json()["version"])
            else:
                errors.append(f"{response.status_code} {response.text[:200]}")


@contextlib.contextmanager
def running(clients: list[threading.Thread], stop: threading.Event):
    """Client threads running for the block; stopped and joined when it ends, failed or not."""
    for client in clients:
        client.start()
    try:
        yield
    finally:
        stop.set()
        for client in clients:
            client.join()
