"""deploy/k8s checked offline, no cluster: strict-valid against the Kubernetes 1.37 schemas, every file in the
kustomization, names, ports, paths and users that agree with the images, serving/settings.py and the routes,
and a security scanner (checkov) that passes with each skipped check justified next to its skip.

What cannot run without a cluster (HPA, PDB, Service routing, rolling updates, NetworkPolicy) is checked
here as configuration only; test_k8s_pods.py runs the rest in podman.
"""
from __future__ import annotations

import copy
import fcntl
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

import kube
from containers import CACHE

ROOT = kube.ROOT
KUBERNETES = "1.37.0"
SERVE_DOCKERFILE = (ROOT / "serving" / "Dockerfile").read_text()
TRAIN_DOCKERFILE = (ROOT / "training" / "Dockerfile").read_text()


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return kube.render(kube.BASE)


def serve_spec(docs) -> dict:
    return kube.pod_template(kube.find(docs, "Deployment", "serve"))["spec"]


def workloads(docs) -> list[dict]:
    return [doc for doc in docs if doc["kind"] in ("Deployment", "Job", "CronJob")]


# -- the files ----------------------------------------------------------------------------------------------------
def test_the_kustomization_lists_every_manifest_file_and_names_both_images():
    kustomization = yaml.safe_load((kube.BASE / "kustomization.yaml").read_text())
    files = sorted(p.name for p in kube.BASE.iterdir() if p.suffix in (".yaml", ".yml") and p.stem != "kustomization")
    assert sorted(kustomization["resources"]) == files
    assert [p for p in kube.BASE.iterdir() if p.is_dir()] == []  # nothing it could leave out below it
    assert {image["name"] for image in kustomization["images"]} == {"namegen-serve", "namegen-train"}


def test_every_manifest_is_strict_valid_against_the_kubernetes_1_37_schemas(docs):
    raw = [doc for path in sorted(kube.BASE.glob("*.yaml")) if path.stem != "kustomization"
           for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert len(raw) == len(docs) == 13
    for doc in raw + docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    # Strict means strict: a misspelled field is refused, not ignored.
    typo = copy.deepcopy(kube.find(docs, "Deployment", "serve"))
    typo["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        kubernetes_validate.validate(typo, KUBERNETES, strict=True)


# -- agreement with the images, the settings and the routes ---------------------------------------------------------
def dockerfile_env(dockerfile: str) -> dict[str, str]:
    """ENV KEY=value pairs, continuation lines included."""
    env = {}
    for block in re.findall(r"^ENV (.*?)(?<!\\)$", dockerfile, flags=re.M | re.S):
        env.update(pair.split("=", 1) for pair in block.replace("\\\n", " ").split() if "=" in pair)
    return env


def test_ports_probes_user_and_paths_agree_with_the_server_image_and_its_routes(docs):
    from serving.app import ROUTERS

    spec = serve_spec(docs)
    (container,) = spec["containers"]
    settings = kube.find(docs, "ConfigMap", "serve-settings")["data"]
    image_env = dockerfile_env(SERVE_DOCKERFILE)
    port = int(re.search(r"^EXPOSE (\d+)$", SERVE_DOCKERFILE, flags=re.M).group(1))
    assert container["ports"] == [{"name": "http", "containerPort": port}]
    assert int(settings["NAMEGEN_PORT"]) == int(image_env["NAMEGEN_PORT"]) == port
    service = kube.find(docs, "Service", "serve")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    policy = kube.find(docs, "NetworkPolicy", "serve")
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == ["http"]  # that port only

    routes = {route.path for module in ROUTERS for route in module.router.routes}
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    assert {probe["path"] for probe in probes.values()} <= routes
    assert {probe["port"] for probe in probes.values()} == {"http"}

    uid = int(re.search(r"useradd --uid (\d+)", SERVE_DOCKERFILE).group(1))
    assert spec["securityContext"]["runAsUser"] == uid
    assert "\nUSER namegen\n" in SERVE_DOCKERFILE
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert settings["NAMEGEN_REGISTRY"] == image_env["NAMEGEN_REGISTRY"] == mounts["models"]["mountPath"]
    assert mounts["models"]["readOnly"] is True
    assert {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v} \
        == {"models": kube.find(docs, "PersistentVolumeClaim", "models")["metadata"]["name"]}


def script_variables(path: Path) -> set[str]:
    return set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", path.read_text()))


def test_the_training_pods_run_the_images_entrypoints_on_the_paths_they_use(docs):
    installed = dict(re.findall(r"^COPY deploy/(\S+) /usr/local/bin/(\S+)$", TRAIN_DOCKERFILE, flags=re.M))
    scripts = {command: ROOT / "deploy" / script for script, command in installed.items()}
    train = kube.pod_template(kube.find(docs, "Job", "train"))["spec"]
    by_name = {c["name"]: c for c in kube.containers(train)}
    assert [c["name"] for c in train["initContainers"]] == ["train"]  # export starts only after it exited 0
    assert [c["name"] for c in train["containers"]] == ["export"]
    assert train["restartPolicy"] == "Never"
    for name, container in by_name.items():
        (command,) = container["command"]
        script = scripts[command].read_text()
        for mount in container["volumeMounts"]:
            if mount["name"] != "tmp":
                assert mount["mountPath"] in script, (name, mount)
        assert container["image"].startswith("namegen-train")
    assert "/data/names.txt" in scripts["namegen-train"].read_text()
    assert [m["mountPath"] for m in by_name["train"]["volumeMounts"] if m["name"] == "names"] == ["/data"]
    volumes = {v["name"]: v for v in train["volumes"]}
    assert volumes["names"]["configMap"]["optional"] is True  # no names file: the default dataset
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "models"


def manifest_variables(docs, component: str) -> set[str]:
    """Every environment variable the manifests give the component's containers: ConfigMap data they take
    with envFrom, and env entries."""
    names = set()
    for workload in workloads(docs):
        spec = kube.pod_template(workload)["spec"]
        if workload["metadata"]["labels"]["app.kubernetes.io/component"] != component:
            continue
        for container in kube.containers(spec):
            names |= {e["name"] for e in container.get("env", [])}
            for source in container.get("envFrom", []):
                names |= set(kube.find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    return names


def unread_settings(names: set[str]) -> set[str]:
    """The NAMEGEN_* names serving/settings.py does not read (a typo there would be ignored silently)."""
    from serving.settings import Settings

    prefix = Settings.model_config["env_prefix"]
    read = {prefix + field.upper() for field in Settings.model_fields}
    return {name for name in names if name.startswith("NAMEGEN_")} - read


def test_every_namegen_variable_in_a_manifest_is_one_serving_settings_reads(docs):
    names = manifest_variables(docs, "serve")
    assert {"NAMEGEN_REGISTRY", "NAMEGEN_THREADS", "NAMEGEN_ADMIN_TOKEN"} <= names
    assert names - {n for n in names if n.startswith("NAMEGEN_")} == set()  # nothing else reaches the server
    assert unread_settings(names) == set()
    assert unread_settings(names | {"NAMEGEN_WATCH_INTERVAL"}) == {"NAMEGEN_WATCH_INTERVAL"}  # the check bites


def test_every_training_variable_is_one_the_scripts_or_the_rollback_read(docs):
    read = script_variables(ROOT / "deploy" / "train.sh") | script_variables(ROOT / "deploy" / "export.sh")
    rollback = kube.pod_template(kube.find(docs, "CronJob", "rollback"))["spec"]["containers"][0]
    read_by_rollback = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", " ".join(rollback["command"])))
    assert set(kube.find(docs, "ConfigMap", "train-settings")["data"]) <= read
    assert read_by_rollback - read == {"ROLLBACK_TO"}


def test_threads_match_the_cpu_limits_and_the_grace_period_outlasts_the_drain(docs):
    from serving.http_server import DRAIN_SECONDS

    spec = serve_spec(docs)
    (container,) = spec["containers"]
    assert kube.find(docs, "ConfigMap", "serve-settings")["data"]["NAMEGEN_THREADS"] == \
        container["resources"]["limits"]["cpu"]
    train = kube.pod_template(kube.find(docs, "Job", "train"))["spec"]
    assert {c["resources"]["limits"]["cpu"] for c in kube.containers(train)} == \
        {kube.find(docs, "ConfigMap", "train-settings")["data"]["TRAIN_THREADS"]}
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "/bin/sleep"  # absolute: images imported without a PATH have none
    assert spec["terminationGracePeriodSeconds"] > int(pre_stop[1]) + DRAIN_SECONDS


# -- the cluster's parts: configuration only, nothing here runs them ------------------------------------------------
def test_the_deployment_spreads_two_hardened_replicas_and_the_service_hpa_pdb_and_policy_select_them(docs):
    deployment = kube.find(docs, "Deployment", "serve")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spec = serve_spec(docs)
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["labelSelector"]["matchLabels"] == labels
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False,
        "capabilities": {"drop": ["ALL"]}}
    assert kube.find(docs, "Service", "serve")["spec"]["selector"] == labels
    assert kube.find(docs, "PodDisruptionBudget", "serve")["spec"]["selector"]["matchLabels"] == labels
    assert kube.find(docs, "NetworkPolicy", "serve")["spec"]["podSelector"]["matchLabels"] == labels
    hpa = kube.find(docs, "HorizontalPodAutoscaler", "serve")
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "serve"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert kube.find(docs, "PersistentVolumeClaim", "models")["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_job_and_the_cronjob_train_with_one_pod_template_and_only_retraining_is_scheduled(docs):
    job, retrain = kube.find(docs, "Job", "train"), kube.find(docs, "CronJob", "retrain")
    assert kube.pod_template(job) == kube.pod_template(retrain)
    assert {k: v for k, v in retrain["spec"]["jobTemplate"]["spec"].items() if k != "template"} == \
        {k: v for k, v in job["spec"].items() if k != "template"}
    assert retrain["spec"]["suspend"] is True and retrain["spec"]["concurrencyPolicy"] == "Forbid"
    rollback = kube.find(docs, "CronJob", "rollback")
    assert rollback["spec"]["suspend"] is True  # a template for `kubectl create job --from`, never a schedule
    assert "python -m export rollback --registry /models" in " ".join(rollback["spec"]["jobTemplate"]["spec"]
                                                                       ["template"]["spec"]["containers"][0]["command"])


# -- the security scanner -----------------------------------------------------------------------------------------
def scanner_venv() -> Path:
    """checkov, pinned in pyproject.toml's `scan` extra, in a venv of its own kept in CACHE (see pyproject.toml)."""
    (pin,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["scan"]
    venv = CACHE / f"venv-{pin.replace('==', '-')}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock-scanner", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be making it
        if not (venv / ".complete").exists():
            for command in ([sys.executable, "-m", "venv", "--clear", str(venv)],
                            [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", pin]):
                done = subprocess.run(command, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
                assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            (venv / ".complete").touch()
    return venv


def checkov(venv: Path, *files: Path) -> dict[str, dict[str, list]]:
    """{file: {"passed": [...], "failed": [...], "skipped": [...]}} of check ids; offline (--skip-download)."""
    done = subprocess.run([str(venv / "bin" / "checkov"), "--framework", "kubernetes", "--skip-download",
                           "--output", "json", *[arg for f in files for arg in ("-f", str(f))]],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: some check failed
    results = {str(f): {"passed": [], "failed": [], "skipped": []} for f in files}
    for kind in ("passed", "failed", "skipped"):
        for check in json.loads(done.stdout)["results"][f"{kind}_checks"]:
            results[check["file_abs_path"]][kind].append(check["check_id"])
    return results


def test_checkov_passes_and_every_skipped_check_is_justified_next_to_its_skip(docs, tmp_path):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    weakened = copy.deepcopy(kube.find(docs, "Deployment", "serve"))
    weakened["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    broken = tmp_path / "weakened.yaml"
    broken.write_text(yaml.safe_dump(weakened))
    results = checkov(scanner_venv(), rendered, broken)
    print({path: {kind: len(ids) for kind, ids in result.items()} for path, result in results.items()})
    assert results[str(rendered)]["failed"] == []
    assert len(results[str(rendered)]["passed"]) > 100
    assert "CKV_K8S_22" in results[str(broken)]["failed"]  # the scanner does look: readOnlyRootFilesystem

    # Each skip is an annotation `checkov.io/skipN: CHECK=reason` with a comment line right above it.
    skipped = set(results[str(rendered)]["skipped"])
    for path in kube.BASE.glob("*.yaml"):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if match := re.match(r"\s+checkov\.io/skip\d+: (CKV\w+)=(.+)", line):
                assert lines[i - 1].strip().startswith("#"), f"{path.name}:{i + 1}: no comment says why"
                skipped.discard(match.group(1))
    assert skipped == set()  # nothing skipped without such a line
