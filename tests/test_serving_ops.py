"""Operations over real HTTP: determinism under traffic, scores vs eval, overload, deadlines, reload, SIGTERM."""
import gc
import shutil
import signal
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from export.pipeline import export_checkpoint
from serving.manager import ModelManager
from serving.metrics import Metrics
from namegen.contract import read_latest
from serving.settings import Settings
from training.checkpoint import load_checkpoint
from training.data import Dataset
from training.models import nll

SEEDED = {"n": 200, "seed": 77, "temperature": 0.9, "prefix": "a", "unique": True}


def hammer(url, stop: threading.Event, failures: list, versions: set, n=20):
    """Random unseeded generation and scoring until told to stop; records non-200s and the versions seen."""
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            for path, body in [("/v1/generate", {"n": n}), ("/v1/score", {"names": ["emma", "liam"] * 50})]:
                response = client.post(path, json=body)
                if response.status_code != 200:
                    failures.append((response.status_code, response.text))
                else:
                    versions.add(response.json()["version"])


def test_seeded_http_results_do_not_depend_on_traffic_or_batch_settings(live_server, served_registry,
                                                                       start_server):
    alone = httpx.post(live_server + "/v1/generate", json=SEEDED, timeout=60).json()["names"]
    stop, failures = threading.Event(), []
    threads = [threading.Thread(target=hammer, args=(live_server, stop, failures, set())) for _ in range(6)]
    for t in threads:
        t.start()
    with ThreadPoolExecutor(4) as pool:
        mixed = list(pool.map(lambda _: httpx.post(live_server + "/v1/generate", json=SEEDED, timeout=60)
                              .json()["names"], range(8)))
    stop.set()
    for t in threads:
        t.join()
    assert not failures
    assert all(m == alone for m in mixed)
    small = start_server(served_registry, max_batch_rows=5, threads=1)
    assert httpx.post(small.url + "/v1/generate", json=SEEDED, timeout=120).json()["names"] == alone


def test_api_scores_of_val_names_equal_offline_eval(live_server, trained_checkpoints):
    checkpoint = load_checkpoint(trained_checkpoints["mlp"])
    data = Dataset.from_words(checkpoint.words(), "checkpoint", checkpoint.vocab)
    expected = nll(checkpoint.model, *data.contexts("val", checkpoint.block_size))
    total_nll = total_chars = 0.0
    names = data.split.val
    for i in range(0, len(names), 1000):
        results = httpx.post(live_server + "/v1/score", json={"names": names[i:i + 1000]}, timeout=60).json()["results"]
        total_nll += sum(r["nll"] for r in results)
        total_chars += sum(len(r["chars"]) for r in results)
    assert abs(total_nll / total_chars - expected) < 1e-5


def test_full_queue_is_429_with_retry_after_and_deadline_is_504(served_registry, start_server):
    server = start_server(served_registry, max_queue=1, max_batch_rows=1, request_timeout_s=3)
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: httpx.post(server.url + "/v1/generate", json={"n": 10000}, timeout=60),
                                  range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert 429 in statuses and 504 in statuses and not [s for s in statuses if s not in (429, 504)], statuses
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers["retry-after"] == "1" and "retry" in rejected.json()["detail"]
    assert "fewer names" in next(r for r in responses if r.status_code == 504).json()["detail"]
    # the server is not wedged: cancelled rows are gone and a small request goes through
    assert httpx.post(server.url + "/v1/generate", json={"n": 2, "seed": 1}, timeout=30).status_code == 200


def test_overload_refuses_by_names_asked_and_sheds_what_waited_past_the_queue_deadline(served_registry,
                                                                                      start_server):
    server = start_server(served_registry, max_batch_rows=1, max_queued_names=1500, queue_timeout_s=0.5,
                          admission_wait_s=0)
    with ThreadPoolExecutor(6) as pool:
        busy = pool.submit(httpx.post, server.url + "/v1/generate", json={"n": 3000, "seed": 1}, timeout=60)
        time.sleep(0.3)  # it holds the one row; what comes next waits
        waiting = [pool.submit(httpx.post, server.url + "/v1/generate", json={"n": 1000}, timeout=60)
                   for _ in range(3)]
        answers = [w.result() for w in waiting]
        assert busy.result().status_code == 200
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [429, 429, 503], statuses  # one fits 1,500 queued names; it is shed at the deadline
    refused = next(r for r in answers if r.status_code == 429)
    assert "names are waiting" in refused.json()["detail"]
    shed = next(r for r in answers if r.status_code == 503)
    assert shed.headers["retry-after"] == "1" and "waited over 0.5 s" in shed.json()["detail"]
    assert httpx.post(server.url + "/v1/generate", json={"n": 2, "seed": 1}, timeout=30).status_code == 200


def test_requests_finding_the_queue_full_wait_in_line_for_room_instead_of_a_429(served_registry, start_server):
    server = start_server(served_registry, max_queue=1, admission_wait_s=20)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: httpx.post(server.url + "/v1/generate", json={"n": 3000, "seed": i},
                                                     timeout=60), range(8)))
    assert [r.status_code for r in answers] == [200] * 8
    quick = start_server(served_registry, max_queue=1, admission_wait_s=0)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: httpx.post(quick.url + "/v1/generate", json={"n": 3000}, timeout=60)
                                 .status_code, range(8)))
    assert 429 in statuses


@pytest.fixture
def own_registry(served_registry, tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(served_registry, root)
    return root


def test_new_version_is_picked_up_under_load_with_no_failed_request(own_registry, trained_checkpoints,
                                                                   start_server):
    server = start_server(own_registry)
    old = read_latest(own_registry, "mlp")
    before = httpx.post(server.url + "/v1/generate", json=SEEDED).json()
    stop, failures, versions = threading.Event(), [], set()
    threads = [threading.Thread(target=hammer, args=(server.url, stop, failures, versions)) for _ in range(4)]
    for t in threads:
        t.start()
    # A different model published under the same name: the swap must be visible in the results.
    new = export_checkpoint(trained_checkpoints["bigram-counts"], own_registry, name="mlp").manifest["version"]
    deadline = time.monotonic() + 60
    while new not in versions and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert not failures
    assert {old, new} <= versions
    after = httpx.post(server.url + "/v1/generate", json=SEEDED).json()
    assert after["version"] == new and before["version"] == old
    assert after["names"] != before["names"]


def test_a_replaced_version_is_freed_although_start_up_objects_are_frozen(own_registry, trained_checkpoints):
    # The server gc.freeze()s what start-up built (serving/app.py), so nothing of a served version may
    # depend on the cyclic collector to be freed after a reload: reference counting alone must do it.
    manager = ModelManager(Settings(registry=own_registry, models=["mlp"]), Metrics())
    manager.refresh()
    old_model, old_engine = weakref.ref(manager.get("mlp").model), weakref.ref(manager.get("mlp").engine)
    gc.freeze()
    try:
        export_checkpoint(trained_checkpoints["mlp"], own_registry, name="mlp")
        assert manager.refresh()["mlp"]["status"] == "loaded"
        deadline = time.monotonic() + 30  # the old version drains and closes on a thread of its own
        while (old_model() or old_engine()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert old_model() is None and old_engine() is None
    finally:
        manager.close()
        gc.unfreeze()


def test_corrupt_version_is_rejected_and_the_old_one_keeps_serving(own_registry, start_server):
    import hashlib
    import json

    server = start_server(own_registry)
    old = read_latest(own_registry, "mlp")
    bad = "29991231T235959999999Z"
    shutil.copytree(own_registry / "mlp" / old, own_registry / "mlp" / bad)
    onnx_path = own_registry / "mlp" / bad / "model.onnx"
    onnx_path.write_bytes(b"not an onnx model")
    manifest = json.loads((own_registry / "mlp" / bad / "manifest.json").read_text())
    manifest["version"] = bad
    manifest["files"]["model.onnx"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()  # passes the hash check
    (own_registry / "mlp" / bad / "manifest.json").write_text(json.dumps(manifest))
    (own_registry / "mlp" / "LATEST").write_text(bad + "\n")
    deadline = time.monotonic() + 30
    while "namegen_reload_failures_total{model=\"mlp\"} 1.0" not in httpx.get(server.url + "/metrics").text:
        assert time.monotonic() < deadline, "the bad version was never tried"
        time.sleep(0.1)
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert httpx.post(server.url + "/v1/generate", json={"n": 3}).json()["version"] == old
    assert any("rejected mlp/" + bad in line for line in server.log)


def test_admin_reload_needs_the_token_and_loads_now(own_registry, trained_checkpoints, start_server):
    server = start_server(own_registry, admin_token="s3cret", watch_interval_s=3600)
    assert httpx.post(server.url + "/v1/admin/reload").status_code == 401
    assert httpx.post(server.url + "/v1/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 401
    new = export_checkpoint(trained_checkpoints["mlp"], own_registry, name="mlp").manifest["version"]
    response = httpx.post(server.url + "/v1/admin/reload", headers={"Authorization": "Bearer s3cret"}, timeout=60)
    assert response.status_code == 200
    assert response.json()["models"]["mlp"] == {"status": "loaded", "version": new}
    assert httpx.post(server.url + "/v1/generate", json={"n": 1}).json()["version"] == new


def test_sigterm_drains_requests_in_flight(served_registry, start_server):
    server = start_server(served_registry, max_batch_rows=8)
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        response=httpx.post(server.url + "/v1/generate", json={"n": 4000, "seed": 2}, timeout=120)))
    thread.start()
    time.sleep(1.0)
    server.process.send_signal(signal.SIGTERM)
    thread.join()
    assert result["response"].status_code == 200 and len(result["response"].json()["names"]) == 4000
    # drained, then exit status 0: a supervisor sees a clean stop, not a process killed by its signal
    assert server.process.wait(60) == 0
    assert any("Finished server process" in line for line in server.log)
