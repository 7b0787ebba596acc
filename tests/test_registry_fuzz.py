"""The registry is input too: broken versions published under seeded traffic never fail a request, never
change a seeded name, and never stop a good version published afterwards from being served."""
import json
import os
import random
import shutil
import threading
import time

import httpx
import pytest

from namegen import contract

SEEDED = {"n": 20, "seed": 5}


def _rewrite_manifest(change):
    def mutate(folder, other):
        manifest = json.loads((folder / "manifest.json").read_text())
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return mutate


def _set(key, value):
    return _rewrite_manifest(lambda m: m.__setitem__(key, value))


def _drop(key):
    return _rewrite_manifest(lambda m: m.pop(key))


def _file(name, content: bytes, fix_hash: bool):
    def mutate(folder, other):
        (folder / name).unlink()
        (folder / name).write_bytes(content)
        if fix_hash:
            _set("files", {**json.loads((folder / "manifest.json").read_text())["files"],
                           name: contract.sha256_file(folder / name)})(folder, other)
    return mutate


def _truncate(name, fix_hash):
    def mutate(folder, other):
        _file(name, (folder / name).read_bytes()[:100], fix_hash)(folder, other)
    return mutate


def _swap_weights(folder, other):
    onnx, pt2 = (folder / "model.onnx").read_bytes(), (folder / "model.pt2").read_bytes()
    _file("model.onnx", pt2, True)(folder, other)
    _file("model.pt2", onnx, True)(folder, other)


def _names_link_out(folder, other):
    (folder / "training_names.txt").unlink()
    (folder / "training_names.txt").symlink_to("/etc/passwd")
    _set("files", {**json.loads((folder / "manifest.json").read_text())["files"],
                   "training_names.txt": contract.sha256_file(folder / "training_names.txt")})(folder, other)


def _weights_from_the_other_model(folder, other):
    (folder / "model.onnx").unlink()
    (folder / "model.onnx").symlink_to(other / "model.onnx")


def _folder_links_to_the_other_model(folder, other):
    shutil.rmtree(folder)
    folder.symlink_to(other)


def _manifest_not_json(folder, other):
    (folder / "manifest.json").write_bytes(b'{"format": "namegen.model", "vocab": [' + b"[" * 5000)


def _manifest_huge(folder, other):
    (folder / "manifest.json").write_bytes(b" " * (17 * 2**20) + b"{}")


VERSION_MUTATIONS = [
    _set("block_size", "three"), _set("block_size", 10**9), _set("block_size", 2), _set("vocab", "abc"),
    _set("vocab", [chr(0x100 + i) for i in range(40_000)]), _set("vocab", [".", "a"]), _set("files", []),
    _set("files", {}), _set("training_names", "../../elsewhere.txt"), _set("metrics", {"val_nll": "low"}),
    _set("format", "other"), _set("model_type", 7), _drop("vocab"), _drop("block_size"), _drop("files"),
    _truncate("model.onnx", fix_hash=False), _truncate("model.onnx", fix_hash=True), _swap_weights,
    _file("training_names.txt", b"\xff\xfe\x00bad", fix_hash=True), _names_link_out, _weights_from_the_other_model,
    _folder_links_to_the_other_model, _manifest_not_json, _manifest_huge, _file("model.onnx", b"", fix_hash=True),
]
LATEST_MUTATIONS = [b"\xff\xfe\x00", b"", b"../bigram-counts/20991231T235959999999Z\n", b"2" * 10_000,
                    b"20991231T235959999999Z\n", b"2026112\n", b"\n\n\n", b"20991231T235959999999Z/../..\n"]


def _served(url, name):
    body = httpx.get(url + "/v1/models").json()
    return ({m["name"]: m["version"] for m in body["models"]}.get(name),
            {r["model"]: r["version"] for r in body["rejected"]}.get(name))


def _wait(what, check, timeout=20):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def fuzzed_registry(served_registry, tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(served_registry, root)
    return root


def test_broken_versions_published_under_traffic_fail_no_request_and_good_ones_still_serve(fuzzed_registry,
                                                                                          start_server):
    root = fuzzed_registry
    server = start_server(root, watch_interval_s=0.05)
    models = ["mlp", "bigram-counts"]
    expected = {m: httpx.post(server.url + "/v1/generate", json={**SEEDED, "model": m}).json()["names"] for m in models}
    stop, problems, answered = threading.Event(), [], [0]

    def traffic():
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not stop.is_set():
                for m in models:
                    response = client.post("/v1/generate", json={**SEEDED, "model": m})
                    if response.status_code != 200 or response.json()["names"] != expected[m]:
                        problems.append((m, response.status_code, response.text[:200]))
                    answered[0] += 1

    threads = [threading.Thread(target=traffic) for _ in range(2)]
    for thread in threads:
        thread.start()
    rng = random.Random(7)
    try:
        for step, mutation in enumerate(VERSION_MUTATIONS + LATEST_MUTATIONS):
            _publish_broken(root, server.url, rng.choice(models), mutation, step)
        good = _publish_copy(root, "mlp", "29990101T000000000000Z")  # a sound version, published last
        _wait("the good version", lambda: _served(server.url, "mlp")[0] == good)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert problems == [] and answered[0] > 50
    metrics = httpx.get(server.url + "/metrics").text
    rejections = sum(float(line.split()[-1]) for line in metrics.splitlines()
                     if line.startswith("namegen_reload_failures_total{"))
    assert rejections == len(VERSION_MUTATIONS) + len(LATEST_MUTATIONS)
    assert not any("Traceback" in line for line in server.log)


def _publish_copy(root, name, version):
    current = contract.read_latest(root, name)
    shutil.copytree(root / name / current, root / name / version)
    manifest = json.loads((root / name / version / "manifest.json").read_text())
    (root / name / version / "manifest.json").write_text(json.dumps({**manifest, "version": version}))
    contract.write_latest(root, name, version)
    return version


def _publish_broken(root, url, name, mutation, step):
    """Point `name`'s LATEST at a broken copy of its version (or write broken bytes into LATEST), wait until
    the server has refused it, then point LATEST back."""
    good = contract.read_latest(root, name)
    other = root / ("bigram-counts" if name == "mlp" else "mlp")
    other_version = other / contract.read_latest(root, other.name)
    if isinstance(mutation, bytes):
        (root / name / "LATEST").write_bytes(mutation)
        refused = "LATEST" if mutation != b"20991231T235959999999Z\n" else "20991231T235959999999Z"
    else:
        refused = f"2990{step:04d}T000000000000Z"
        shutil.copytree(root / name / good, root / name / refused)
        mutation(root / name / refused, other_version)
        contract.write_latest(root, name, refused)
    _wait(f"{name} refusing {mutation}", lambda: _served(url, name) == (good, refused))
    contract.write_latest(root, name, good)
    _wait(f"{name} back on {good}", lambda: _served(url, name) == (good, None))
    os.sync()
