"""deploy/k8s as the tests read it: rendered by `kubectl kustomize` (kubectl from Debian's kubernetes-client
where there is none), then looked up by kind and name. Shared by test_k8s_manifests.py and test_k8s_pods.py."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from conftest import apt_install

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "deploy" / "k8s"


def kubectl() -> str:
    """kubectl's path; Debian's kubernetes-client (kubectl 1.20, kustomize 2.0) is installed where it is absent."""
    if shutil.which("kubectl") is None:
        apt_install(["kubernetes-client"], ["kubectl"])
    path = shutil.which("kubectl")
    assert path, "apt-get installed kubernetes-client, yet there is no kubectl"
    return path


def render(directory: Path) -> list[dict]:
    """`kubectl kustomize DIRECTORY`: the documents kubectl apply -k would send."""
    done = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"kubectl kustomize {directory} exited {done.returncode}:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{len(matches)} {kind} named {name} in {[d['metadata']['name'] for d in docs]}"
    return matches[0]


def pod_template(workload: dict) -> dict:
    """The pod template of a Deployment, Job or CronJob."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]


def containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]
