"""docker compose end to end, in real containers: podman behind Debian's docker-compose (../shared/CONTAINERS.md).

The fast test checks docker-compose.yml with `docker-compose config`. The `compose` tests use the three
images built once per session for every container test (conftest.py, containers.py), serve an empty registry, train and publish a model in containers, retrain with another seed while
a client keeps sending requests (the server must switch versions by itself and fail none of them), roll
back, then put nginx in front of three replicas and stop one under traffic.

They need root and apt-get (podman, runc, docker-compose and debootstrap come from Debian); without them
they are skipped. About 6 minutes once /var/cache/namegen-test holds the debootstrap root file system
(NAMEGEN_TEST_CACHE moves it), 7.5 with a fresh one, 8.5 on a fresh machine (apt-get), the image builds
included. Everything else they make (containers, volumes, network; the images, the podman API service and
torch in deploy/wheelhouse at the end of the session) is removed afterwards.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import threading
import time

import httpx
import pytest

from containers import (ROOT, TINY_TRAINING, Podman, clean_environ, free_port, run, running, seeded_names,
                        traffic, wait_until)


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
class Stack:
    """One compose project on the session's images: its own name and host ports."""

    def __init__(self, podman: Podman, images):
        self.podman = podman
        self.images_built = images
        self.project = f"namegentest{os.getpid()}"
        self.serve_port, self.lb_port = free_port(), free_port()
        self.env = {**images.env, "COMPOSE_PROJECT_NAME": self.project,
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
        return self.images_built.names()

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", service, check=False).stdout


@pytest.fixture(scope="module")
def stack(podman, container_images):
    """The compose project on the session's images; afterwards everything of the project is removed."""
    stack = Stack(podman, container_images)
    try:
        yield stack
    finally:
        for service in ("serve", "lb"):
            print(f"--- {service} log (tail) ---\n" + "\n".join(stack.logs(service).splitlines()[-25:]))
        stack.compose("down", "-v", "--remove-orphans", timeout=300, check=False)
        label = f"label=com.docker.compose.project={stack.project}"  # whatever `down` missed
        for kind, listing in (("container", ["ps", "-a"]), ("volume", ["volume", "ls"]), ("network", ["network", "ls"])):
            for leftover in podman.lines(*listing, "-q", "--filter", label):
                podman(kind, "rm", "-f", leftover, check=False)
        stack.phases.done("compose: clean up")


# -- what an operator does ------------------------------------------------------------------------------------------
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
