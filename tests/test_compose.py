"""docker compose end to end, in real containers: podman behind Debian's docker-compose (../shared/CONTAINERS.md).

The fast test checks docker-compose.yml with `docker-compose config`. The `compose` tests build the three
images, serve an empty registry, train and publish a model in containers, retrain with another seed while
a client keeps sending requests (the server must switch versions by itself and fail none of them), roll
back, then put nginx in front of three replicas and stop one under traffic.

They need root and apt-get (podman, runc, docker-compose and debootstrap come from Debian); without them
they are skipped. About 6 minutes once /var/cache/namegen-test holds the debootstrap root file system
(NAMEGEN_TEST_CACHE moves it), 7.5 with a fresh one, 8.5 on a fresh machine (apt-get). Everything else
they make (containers, volumes, network, images, the podman API service, torch in deploy/wheelhouse) is
removed afterwards.
"""
from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import apt_install

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("NAMEGEN_TEST_CACHE", "/var/cache/namegen-test"))
DEBIAN_MIRROR = os.environ.get("NAMEGEN_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
TOOLS = ("podman", "runc", "docker-compose", "debootstrap")  # Debian package names too
# crun fails here on cgroups ("hybrid mode not supported") and on setrlimit; runc does not.
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n'
WHEELHOUSE = ROOT / "deploy" / "wheelhouse"
TORCH = "torch==2.13.0"
TINY_TRAINING = "--steps 300 --n-embd 8 --n-hidden 64 --batch-size 64"  # ~10 s on one thread
SEEDED = {"n": 8, "seed": 20261122, "temperature": 1.0}
# Variables docker-compose.yml reads; the caller's shell must not leak into the test's stack.
COMPOSE_VARIABLES = ("BASE_IMAGE", "LB_BASE_IMAGE", "PIP_EXTRA_ARGS", "NAMEGEN_TAG", "SERVE_PUBLISH", "LB_PUBLISH",
                     "MODEL", "MODEL_NAME", "SEED", "TRAIN_ARGS", "TRAIN_THREADS", "KEEP", "NAMES_FILE",
                     "NAMEGEN_WATCH_INTERVAL_S", "NAMEGEN_MODELS", "NAMEGEN_DEFAULT_MODEL", "NAMEGEN_ADMIN_TOKEN",
                     "NAMEGEN_LOG_LEVEL", "COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "COMPOSE_PROFILES", "DOCKER_HOST")


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
    """Wall time of each step, printed at the end: the test's time budget is part of what it shows."""

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


# -- tools ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def container_tools() -> float:
    """podman, runc, docker-compose and debootstrap, from Debian's apt where missing; the seconds it took."""
    started = time.monotonic()
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if not missing:
        return 0.0
    apt_install(list(TOOLS), missing)
    return time.monotonic() - started


def service_profiles(rendered: str) -> dict[str, list[str]]:
    """{service: profiles} from `docker-compose config` output: block YAML, lists at their key's indent."""
    profiles, section, service, key = {}, "", "", ""
    for line in rendered.splitlines():
        indent, text = len(line) - len(line.lstrip(" ")), line.strip()
        if indent == 0:
            section = text
        elif section == "services:" and indent == 2:
            service = text.rstrip(":")
            profiles[service] = []
        elif section == "services:" and indent == 4:
            if not text.startswith("- "):
                key = text
            elif key == "profiles:":
                profiles[service].append(text[2:])
    return profiles


def test_compose_file_is_valid_and_declares_the_operator_services(container_tools):
    env = clean_environ()
    compose = ["docker-compose", "-f", str(ROOT / "docker-compose.yml")]
    run([*compose, "config", "-q"], env=env)
    rendered = run([*compose, "config"], env=env).stdout
    assert service_profiles(rendered) == {"export": ["train"], "lb": ["scale"], "serve": [], "train": ["train"]}
    assert sorted(run([*compose, "config", "--volumes"], env=env).stdout.split()) == ["checkpoints", "models"]
    assert "condition: service_completed_successfully" in rendered  # export waits for train
    assert "published: 8000" in rendered and "published: 8080" in rendered


def test_images_take_a_base_image_and_pip_options_and_the_server_has_no_torch():
    for dockerfile in (ROOT / "training" / "Dockerfile", ROOT / "serving" / "Dockerfile"):
        text = dockerfile.read_text()
        assert "ARG BASE_IMAGE=python:3.11-slim" in text and "ARG PIP_EXTRA_ARGS" in text, dockerfile
    serving = (ROOT / "serving" / "Dockerfile").read_text()
    assert '"/src[serve]"' in serving and "torch" not in serving.split("FROM ${BASE_IMAGE}\n")[-1]
    assert "\nUSER namegen\n" in serving and "\nHEALTHCHECK " in serving


# -- podman behind docker-compose ---------------------------------------------------------------------------------
class Podman:
    def __init__(self, env: dict[str, str], phases: Phases):
        self.env = env
        self.phases = phases

    def __call__(self, *args, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return run(["podman", *map(str, args)], env=self.env, check=check, timeout=timeout)

    def lines(self, *args) -> list[str]:
        return self(*args).stdout.split()


@pytest.fixture(scope="module")
def podman(container_tools, tmp_path_factory):
    """The Docker-compatible API: `podman system service` on a socket of our own, stopped by its PID."""
    if os.geteuid() != 0:
        pytest.skip("rootful podman: needs root")
    phases = Phases(container_tools)
    work = tmp_path_factory.mktemp("podman")
    (work / "containers.conf").write_text(CONTAINERS_CONF)
    sock = work / "podman.sock"
    env = {**clean_environ(), "CONTAINERS_CONF": str(work / "containers.conf"), "DOCKER_HOST": f"unix://{sock}",
           "COMPOSE_DOCKER_CLI_BUILD": "0"}  # docker-compose builds through the API, no docker CLI needed
    with open(work / "service.log", "w") as log:
        service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if service.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"podman system service did not start:\n{(work / 'service.log').read_text()}")
            time.sleep(0.1)
        phases.done("podman system service")
        yield Podman(env, phases)
    finally:
        service.terminate()
        try:
            service.wait(30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


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


@pytest.fixture(scope="module")
def base_image(podman):
    """No registry to pull from: the debootstrap root file system, imported as an image."""
    rootfs = debootstrap_rootfs()
    name = f"localhost/namegen-test-base:{os.getpid()}"
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(["podman", "import", "-", name], stdin=tar.stdout, env=podman.env,
                              capture_output=True, text=True, timeout=600)
    tar.stdout.close()
    assert tar.wait() == 0 and imported.returncode == 0, imported.stderr
    podman.phases.done("base image: debootstrap unless cached, import")
    yield name
    podman("rmi", name, check=False)


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


class Stack:
    """One compose project: its own name, image tag and host ports."""

    def __init__(self, podman: Podman, base: str):
        self.podman = podman
        self.project = f"namegentest{os.getpid()}"
        self.serve_port, self.lb_port = free_port(), free_port()
        self.env = {**podman.env, "COMPOSE_PROJECT_NAME": self.project, "NAMEGEN_TAG": f"test-{os.getpid()}",
                    "BASE_IMAGE": base, "LB_BASE_IMAGE": base,
                    "SERVE_PUBLISH": f"127.0.0.1:{self.serve_port}:8000",
                    "LB_PUBLISH": f"127.0.0.1:{self.lb_port}:8080",
                    "TRAIN_ARGS": TINY_TRAINING, "TRAIN_THREADS": "1", "SEED": "1",
                    "NAMEGEN_WATCH_INTERVAL_S": "0.5"}
        self.url = f"http://127.0.0.1:{self.serve_port}"
        self.lb_url = f"http://127.0.0.1:{self.lb_port}"
        self.phases = podman.phases

    def compose(self, *args, timeout: float = 600, check: bool = True, **env) -> subprocess.CompletedProcess:
        return run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "--ansi", "never",
                    "--profile", "train", "--profile", "scale", *map(str, args)],
                   env={**self.env, **{k: str(v) for k, v in env.items()}}, timeout=timeout, check=check)

    def container(self, service: str, index: int = 1) -> str:
        return f"{self.project}_{service}_{index}"

    def images(self) -> list[str]:
        tag = self.env["NAMEGEN_TAG"]
        return [f"namegen-{kind}:{tag}" for kind in ("serve", "train", "lb")]

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", service, check=False).stdout


@pytest.fixture(scope="module")
def stack(podman, base_image):
    """The three images built from this checkout; afterwards everything of the project is removed."""
    stack = Stack(podman, base_image)
    images_before = set(podman.lines("images", "-a", "-q", "--no-trunc"))
    added_wheels = torch_into_wheelhouse()
    try:
        stack.compose("build", "--parallel", "serve", "train", "lb", timeout=900)
        stack.phases.done("build serve, train, lb images")
        yield stack
    finally:
        for service in ("serve", "lb"):
            print(f"--- {service} log (tail) ---\n" + "\n".join(stack.logs(service).splitlines()[-25:]))
        stack.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
        label = f"label=com.docker.compose.project={stack.project}"  # whatever `down` missed
        for kind, listing in (("container", ["ps", "-a"]), ("volume", ["volume", "ls"]), ("network", ["network", "ls"])):
            for leftover in podman.lines(*listing, "-q", "--filter", label):
                podman(kind, "rm", "-f", leftover, check=False)
        podman("rmi", *stack.images(), check=False)
        # What the builds left untagged; images still in use (another run's) are refused, not forced.
        for _ in range(10):
            ours = set(podman.lines("images", "-a", "-q", "--no-trunc", "--filter", "dangling=true")) - images_before
            if not ours or podman("rmi", *ours, check=False).returncode == 0:
                break
        for wheel in added_wheels:
            wheel.unlink(missing_ok=True)
        stack.phases.done("clean up")
        print(f"compose test phases:\n{stack.phases.report()}")


# -- what an operator does ------------------------------------------------------------------------------------------
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


@pytest.fixture(scope="module")
def served(stack):
    """`up -d` on an empty registry, then the first model trained and published in containers."""
    stack.compose("up", "-d", "serve")
    wait_until("/healthz", lambda: httpx.get(stack.url + "/healthz", timeout=5).status_code == 200)
    empty = {"readyz": httpx.get(stack.url + "/readyz", timeout=5).status_code, "log": stack.logs("serve")}
    stack.compose("run", "--rm", "-T", "train")
    stack.compose("run", "--rm", "-T", "--no-deps", "export")
    wait_until("the server to load the first model by itself",
               lambda: httpx.get(stack.url + "/readyz", timeout=5).status_code == 200, timeout=30)
    version, names = seeded_names(stack.url)
    stack.phases.done("serve empty registry, train + export seed 1")
    return {"empty": empty, "version": version, "names": names}


@pytest.mark.compose
def test_empty_registry_waits_unready_then_serves_the_first_published_model(stack, served):
    assert served["empty"]["readyz"] == 503
    assert "waiting for one to be published" in served["empty"]["log"]
    serve = stack.container("serve")
    assert stack.podman("healthcheck", "run", serve, check=False).returncode == 0  # the compose healthcheck
    assert stack.podman("exec", serve, "id", "-u").stdout.strip() != "0"
    assert stack.podman("exec", serve, "python", "-c", "import torch", check=False).returncode != 0
    assert "namegen-healthcheck" in stack.podman("image", "inspect", stack.images()[0]).stdout  # kept in the image
    assert httpx.get(stack.url + "/readyz", timeout=5).json()["models"] == {"mlp": served["version"]}
    sizes = {image: int(stack.podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
             for image in [stack.env["BASE_IMAGE"], *stack.images()]}
    print("image sizes (MB):", {image: size // 10**6 for image, size in sizes.items()})
    serve_image, train_image = stack.images()[:2]
    assert sizes[serve_image] - sizes[stack.env["BASE_IMAGE"]] < 300e6  # onnxruntime + FastAPI, no torch
    assert sizes[train_image] > 2 * sizes[serve_image]


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


@pytest.mark.compose
def test_retrain_under_traffic_switches_version_by_itself_without_a_failed_request_then_rolls_back(
        stack, served, small_names_file):
    from training.data import load_words, words_sha256

    first, first_names = served["version"], served["names"]
    failed = stack.compose("up", "--no-color", "train", "export", TRAIN_ARGS="--steps 0", check=False)
    assert failed.returncode != 0 and "published" not in failed.stdout + failed.stderr  # export never started
    assert seeded_names(stack.url) == (first, first_names)

    stop, answers, versions, errors = threading.Event(), collections.Counter(), set(), []
    clients = [threading.Thread(target=traffic, args=(stack.url, stop, answers, versions, errors)) for _ in range(3)]
    with running(clients, stop):
        # The one-command retrain, on a names file from the host this time (the first ran on the default data).
        retrained = stack.compose("up", "--no-color", "train", "export", SEED=2, NAMES_FILE=small_names_file)
        assert "published mlp/" in retrained.stdout + retrained.stderr
        second = wait_until("the server to switch by itself",
                            lambda: (version := seeded_names(stack.url)[0]) != first and version, timeout=30)
        time.sleep(2)  # traffic on the new version too
    stack.phases.done("retrain + export seed 2 under traffic")
    print(f"answers during the redeploy: {dict(answers)}")
    assert errors == [] and set(answers) == {200}
    assert answers[200] > 20 and {first, second} <= versions
    second_version, second_names = seeded_names(stack.url)
    assert second_version == second and second_names != first_names  # seeded results changed with the model
    manifest = json.loads(stack.podman("exec", stack.container("serve"), "cat", f"/models/mlp/{second}/manifest.json")
                          .stdout)
    assert manifest["data_sha256"] == words_sha256(load_words(str(small_names_file))[0])  # trained on NAMES_FILE

    rollback = stack.compose("run", "--rm", "-T", "train", "python", "-m", "export", "rollback", "--registry",
                             "/models", "--name", "mlp")
    assert f"LATEST {second} -> {first}" in rollback.stdout
    wait_until("the server to switch back by itself", lambda: seeded_names(stack.url) == (first, first_names),
               timeout=30)
    stack.phases.done("roll back")


@pytest.mark.compose
def test_lb_spreads_requests_over_three_replicas_and_loses_none_when_one_stops(stack, served):
    from clients import NameGenClient

    stack.compose("up", "-d", "--scale", "serve=3", "serve", "lb", SERVE_PUBLISH="127.0.0.1::8000")
    replicas = {}
    for index in (1, 2, 3):
        name = stack.container("serve", index)
        replicas[name] = stack.podman("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                                      name).stdout.strip() + ":8000"
        port = stack.podman("port", name, "8000").stdout.strip().rsplit(":", 1)[-1]
        wait_until(f"{name} ready", lambda: httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200)
    wait_until("lb up", lambda: httpx.get(stack.lb_url + "/readyz", timeout=5).status_code == 200)

    upstreams = collections.Counter()
    with httpx.Client(base_url=stack.lb_url, timeout=30) as client:
        for _ in range(60):
            response = client.post("/v1/generate", json={"n": 5})
            assert response.status_code == 200
            upstreams[response.headers["x-upstream"]] += 1
    print(f"requests per replica: {dict(upstreams)}")
    assert set(upstreams) == set(replicas.values())  # all three served some

    class CountingClient(NameGenClient):  # the SDK, counting what its retries hide
        def _request(self, call):
            attempts["sent"] += 1
            try:
                response = super()._request(call)
            except Exception:
                attempts["transport errors"] += 1
                raise
            attempts[response.status_code] += 1
            return response

    stop, attempts, done, failures = threading.Event(), collections.Counter(), collections.Counter(), []

    def work():
        with CountingClient(stack.lb_url) as client:
            while not stop.is_set():
                try:
                    client.generate(20)
                    done["ok"] += 1
                except Exception as e:  # noqa: BLE001 - anything the retries did not absorb is a lost request
                    failures.append(repr(e))

    with running([threading.Thread(target=work) for _ in range(4)], stop):
        time.sleep(2)
        before = done["ok"]
        stack.podman("stop", "-t", "35", stack.container("serve", 2))
        time.sleep(4)
        after = done["ok"]
    stack.phases.done("lb over 3 replicas, stop one under traffic")
    print(f"while one replica stopped: {done['ok']} requests done, attempts {dict(attempts)}")
    assert failures == []
    assert before > 10 and after > before + 10  # served throughout

    # No replica left: "come back later", which clients retry, rather than nginx's bare 502.
    stack.podman("stop", "-t", "35", stack.container("serve", 1), stack.container("serve", 3))
    response = httpx.post(stack.lb_url + "/v1/generate", json={"n": 1}, timeout=30)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
