"""deploy/k8s run for real, in podman: `podman kube play` of what `kubectl kustomize` renders from it.

podman 4.3 runs Pod, Deployment, PersistentVolumeClaim and ConfigMap documents (../shared/CONTAINERS.md), not
Job, CronJob, Service, HPA, PDB or NetworkPolicy. So the serving Deployment, its ConfigMap and the models PVC
run as rendered (the PVC becomes a podman volume); the training Job's and the rollback CronJob's pod
templates run as pods, as their controllers would start them. The test overlay only renames everything (its
own suffix), points at the session's images, and patches replicas to 1 and a hostPort onto 127.0.0.1.
Training settings change as an operator changes them: the ConfigMap's data (kubectl patch configmap).

Marker `kubernetes`; it shares the images of the compose test (conftest.py `container_images`). Everything
it makes (pods, containers, volumes, the infra image kube play builds) is removed afterwards, even on failure.
"""
from __future__ import annotations

import collections
import copy
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

import kube
from containers import TINY_TRAINING, free_port, running, seeded_names, traffic, wait_until

pytestmark = pytest.mark.kubernetes


class Pod:
    """A pod started from a workload's template: how `kube play` went, its containers' states and logs."""

    def __init__(self, name: str, containers: list[str]):
        self.name, self.containers = name, containers
        self.play = None
        self.states: dict[str, tuple[str, int]] = {}
        self.logs: dict[str, str] = {}

    def container(self, index: int) -> str:
        return f"{self.name}-{self.containers[index]}"


class KubePlay:
    """The rendered test overlay, and what `podman kube play` started from it."""

    def __init__(self, podman, images, work: Path):
        self.podman, self.work = podman, work
        self.suffix = f"-t{os.getpid()}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.docs = kube.render(self._overlay(images))
        self.played: list[Path] = []
        self.serve_container = f"serve{self.suffix}-pod-0-serve"  # podman's name for replica 0's container
        self.volumes_before = set(podman.lines("volume", "ls", "-q"))
        self.pause_before = self._pause_images()  # kube play builds its pods' infra image the first time

    def _overlay(self, images) -> Path:
        """Old-style fields (bases, patchesStrategicMerge): Debian's kubectl 1.20 (kustomize 2.0) reads them too."""
        overlay = self.work / "overlay"
        overlay.mkdir()
        patch = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "serve"}, "spec": {
            "replicas": 1,  # each replica is a pod of its own in podman: two would collide on one hostPort
            "template": {"spec": {"containers": [{"name": "serve", "ports": [
                {"containerPort": 8000, "hostPort": self.port, "hostIP": "127.0.0.1"}]}]}}}}
        (overlay / "serve-patch.yaml").write_text(yaml.safe_dump(patch))
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "bases": [os.path.relpath(kube.BASE, overlay)], "nameSuffix": self.suffix,
            "images": [{"name": f"namegen-{kind}", "newName": images.name(kind).rsplit(":", 1)[0],
                        "newTag": images.tag} for kind in ("serve", "train")],
            "patchesStrategicMerge": ["serve-patch.yaml"]}))
        return overlay

    def find(self, kind: str, name: str) -> dict:
        return kube.find(self.docs, kind, name + self.suffix)

    def play(self, name: str, docs: list[dict], check: bool = True) -> subprocess.CompletedProcess:
        """`podman kube play` of these documents, kept in a file for `--down`."""
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        self.played.append(path)
        return self.podman("kube", "play", path, check=check, timeout=600)

    def serve(self) -> None:
        self.play("serve", [self.find("ConfigMap", "serve-settings"), self.find("PersistentVolumeClaim", "models"),
                            self.find("Deployment", "serve")])
        self._apply_fs_group()

    def _apply_fs_group(self) -> None:
        """What kubelet does for the pod's fsGroup on a volume that supports it, and podman does not: the
        volume's group becomes fsGroup, group-writable, setgid, so the training pods (non-root) can publish."""
        group = kube.pod_template(self.find("Job", "train"))["spec"]["securityContext"]["fsGroup"]
        mountpoint = Path(self.podman("volume", "inspect", "--format", "{{.Mountpoint}}",
                                      self.find("PersistentVolumeClaim", "models")["metadata"]["name"]).stdout.strip())
        os.chown(mountpoint, -1, group)
        mountpoint.chmod(0o2775)

    def run_pod(self, workload: dict, name: str, settings: dict, names: str | None = None, **env) -> Pod:
        """The workload's pod template as a pod, train-settings' data updated and env added to its containers
        (as `kubectl set env` does), run until its last container stopped. podman runs the init containers
        before `kube play` returns and refuses to go on when one fails."""
        config = copy.deepcopy(self.find("ConfigMap", "train-settings"))
        config["data"].update(settings)
        docs = [config]
        template = copy.deepcopy(kube.pod_template(workload))
        for container in kube.containers(template["spec"]):
            container.setdefault("env", []).extend({"name": k, "value": v} for k, v in env.items())
        if names is not None:  # kubectl create configmap train-names --from-file=names.txt=...
            (volume,) = [v["configMap"] for v in template["spec"]["volumes"] if "configMap" in v]
            docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": volume["name"]},
                         "data": {"names.txt": names}})
        pod = Pod(f"{name}{self.suffix}", [c["name"] for c in kube.containers(template["spec"])])
        docs.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod.name, **template["metadata"]},
                     "spec": template["spec"]})
        pod.play = self.play(name, docs, check=False)
        if pod.play.returncode == 0:
            self.podman("wait", pod.container(-1), timeout=300)
        listing = json.loads(self.podman("ps", "-a", "--filter", f"pod={pod.name}", "--format", "json").stdout or "[]")
        pod.states = {c["Names"][0]: (c["State"], c["ExitCode"]) for c in listing if not c["IsInfra"]}
        pod.logs = {container: self.logs(container) for container in pod.states}
        return pod

    def logs(self, container: str) -> str:
        done = self.podman("logs", container, check=False)
        return done.stdout + done.stderr

    def down(self) -> None:
        for path in reversed(self.played):
            self.podman("kube", "play", "--down", path, check=False, timeout=300)
        for leftover in set(self.podman.lines("volume", "ls", "-q")) - self.volumes_before:
            self.podman("volume", "rm", "-f", leftover, check=False)
        for image in self._pause_images() - self.pause_before:
            self.podman("rmi", image, check=False)

    def _pause_images(self) -> set[str]:
        return set(self.podman.lines("images", "-q", "--filter", "reference=localhost/podman-pause"))


@pytest.fixture(scope="module")
def kube_play(podman, container_images, tmp_path_factory):
    play = KubePlay(podman, container_images, tmp_path_factory.mktemp("kube"))
    try:
        yield play
    finally:
        print("--- serve log (tail) ---\n" + "\n".join(play.logs(play.serve_container).splitlines()[-25:]))
        play.down()
        podman.phases.done("kubernetes: kube play --down, volumes removed")


TRAIN = {"TRAIN_ARGS": TINY_TRAINING, "TRAIN_THREADS": "1"}  # a tiny model, in seconds


def readyz(url: str) -> int:
    return httpx.get(url + "/readyz", timeout=5).status_code


@pytest.fixture(scope="module")
def first_model(kube_play):
    """The Deployment on an empty PVC, then the training Job's pod: seed 1, the default data."""
    kube_play.serve()
    wait_until("/healthz", lambda: httpx.get(kube_play.url + "/healthz", timeout=5).status_code == 200)
    empty = {"readyz": readyz(kube_play.url), "log": kube_play.logs(kube_play.serve_container)}
    trained = kube_play.run_pod(kube_play.find("Job", "train"), "train-1", {**TRAIN, "SEED": "1"})
    wait_until("the server to load the first model by itself", lambda: readyz(kube_play.url) == 200, timeout=30)
    version, names = seeded_names(kube_play.url)
    kube_play.podman.phases.done("kubernetes: serve an empty PVC, train Job pod")
    return {"empty": empty, "pod": trained, "version": version, "names": names}


def test_the_deployment_waits_unready_on_an_empty_pvc_and_serves_what_the_job_publishes(kube_play, first_model):
    assert first_model["empty"]["readyz"] == 503
    assert "waiting for one to be published" in first_model["empty"]["log"]
    pod = first_model["pod"]
    assert pod.play.returncode == 0 and pod.states == {pod.container(-1): ("exited", 0)}  # train ran, then export
    assert f"published mlp/{first_model['version']}" in pod.logs[pod.container(-1)]
    assert httpx.get(kube_play.url + "/readyz", timeout=5).json()["models"] == {"mlp": first_model["version"]}


def test_the_serving_pod_runs_as_its_manifest_says(kube_play, first_model):
    """The security context, settings and sizing of the Deployment, as podman applied them."""
    spec = kube.pod_template(kube_play.find("Deployment", "serve"))["spec"]
    container = spec["containers"][0]

    def in_pod(*command, check=True):
        return kube_play.podman("exec", kube_play.serve_container, *command, check=check)

    assert in_pod("id", "-u").stdout.strip() == str(spec["securityContext"]["runAsUser"])
    status = status_of(in_pod("cat", "/proc/1/status").stdout)
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0  # capabilities: drop ALL
    assert status["NoNewPrivs"] == "1"  # allowPrivilegeEscalation: false
    assert status["Seccomp"] == "2"  # RuntimeDefault: a filter
    assert in_pod("touch", "/x", check=False).returncode != 0  # readOnlyRootFilesystem
    assert in_pod("touch", "/models/x", check=False).returncode != 0  # the PVC, read-only
    assert in_pod("touch", "/tmp/x", check=False).returncode == 0  # its emptyDir is writable
    environment = dict(line.split("=", 1) for line in in_pod("env").stdout.splitlines() if "=" in line)
    settings = kube_play.find("ConfigMap", "serve-settings")["data"]
    assert {k: environment.get(k) for k in settings} == settings  # envFrom
    # Under traffic, the peak RSS stays inside the memory request (a tiny model here: a floor, not the sizing).
    stop, answers, versions, errors = threading.Event(), collections.Counter(), set(), []
    with running([threading.Thread(target=traffic, args=(kube_play.url, stop, answers, versions, errors))], stop):
        time.sleep(3)
    peak_kib = int(status_of(in_pod("cat", "/proc/1/status").stdout)["VmHWM"].split()[0])
    print(f"serving pod: peak RSS {peak_kib / 1024:.0f} MiB after {answers[200]} requests; "
          f"request {container['resources']['requests']['memory']}, limit {container['resources']['limits']['memory']}")
    assert errors == [] and peak_kib * 1024 < quantity(container["resources"]["requests"]["memory"])


def status_of(text: str) -> dict[str, str]:
    return {key: value.strip() for key, value in (line.split(":", 1) for line in text.splitlines() if ":" in line)}


def quantity(text: str) -> int:
    """A Kubernetes memory quantity in bytes (the binary suffixes the manifests use)."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(text[:-2]) * units[text[-2:]] if text[-2:] in units else int(text)


def test_a_failed_training_publishes_nothing(kube_play, first_model):
    pod = kube_play.run_pod(kube_play.find("Job", "train"), "train-failing", {**TRAIN, "TRAIN_ARGS": "--steps 0"})
    assert pod.play.returncode != 0
    assert pod.states[pod.container(0)][0] == "exited" and pod.states[pod.container(0)][1] != 0, pod.states
    assert pod.states[pod.container(-1)][0] == "created"  # export never started
    assert "--steps" in pod.logs[pod.container(0)]  # training said what was wrong
    assert seeded_names(kube_play.url) == (first_model["version"], first_model["names"])
    kube_play.podman.phases.done("kubernetes: a failing training pod")


def test_retraining_under_traffic_switches_the_version_without_a_failed_request_then_rolls_back(
        kube_play, first_model, small_names_file):
    from training.data import load_words, words_sha256

    first, first_names = first_model["version"], first_model["names"]
    stop, answers, versions, errors = threading.Event(), collections.Counter(), set(), []
    clients = [threading.Thread(target=traffic, args=(kube_play.url, stop, answers, versions, errors)) for _ in range(3)]
    with running(clients, stop):
        # On-demand retraining: a Job from the CronJob's template, another seed, a names file from a ConfigMap.
        pod = kube_play.run_pod(kube_play.find("CronJob", "retrain"), "retrain-2", {**TRAIN, "SEED": "2"},
                                names=small_names_file.read_text())
        assert pod.states == {pod.container(-1): ("exited", 0)}, pod.logs
        second = wait_until("the server to switch by itself",
                            lambda: (version := seeded_names(kube_play.url)[0]) != first and version, timeout=30)
        time.sleep(2)  # traffic on the new version too
    kube_play.podman.phases.done("kubernetes: retrain pod under traffic")
    print(f"answers during the redeploy: {dict(answers)}")
    assert errors == [] and set(answers) == {200}
    assert answers[200] > 20 and {first, second} <= versions
    second_version, second_names = seeded_names(kube_play.url)
    assert second_version == second and second_names != first_names
    manifest = json.loads(kube_play.podman("exec", kube_play.serve_container, "cat",
                                           f"/models/mlp/{second}/manifest.json").stdout)
    assert manifest["data_sha256"] == words_sha256(load_words(str(small_names_file))[0])  # the ConfigMap's names

    rollback = kube_play.run_pod(kube_play.find("CronJob", "rollback"), "rollback", {})
    assert rollback.states == {rollback.container(-1): ("exited", 0)}
    assert f"LATEST {second} -> {first}" in rollback.logs[rollback.container(-1)]
    wait_until("the server to switch back by itself",
               lambda: seeded_names(kube_play.url) == (first, first_names), timeout=30)
    forward = kube_play.run_pod(kube_play.find("CronJob", "rollback"), "rollback-to", {}, ROLLBACK_TO=second)
    assert f"LATEST {first} -> {second}" in forward.logs[forward.container(-1)]  # --to, as the README sets it
    wait_until("the server to switch to the named version", lambda: seeded_names(kube_play.url)[0] == second,
               timeout=30)
    kube_play.podman.phases.done("kubernetes: rollback pods")
