"""The SDK and the load generator against a scripted real HTTP server: retries on 429/503 honouring
Retry-After, their bounds in count and time, connection errors, timeouts, error messages, what is sent."""
import asyncio
import json
import time

import pytest

from clients import (AsyncNameGenClient, BadRequestError, NameGenClient, NameGenConnectionError, NameGenTimeoutError,
                     RetryPolicy, ServerError, TooManyRequestsError, UnexpectedResponseError)
from clients.loadgen import run_load
from conftest import run_module
from scripted_server import Answer, ScriptedServer, closed_port_url, fake_names, in_order

GENERATED = {"model": "mlp", "version": "3", "seed": 7, "names": [{"name": "kara", "nll": 6.5}]}
QUICK = RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_max=0.05, max_elapsed=5.0)


def call(kind: str, url: str, method: str, *args, retry: RetryPolicy = QUICK, timeout: float = 5.0, **kwargs):
    """One SDK call through the sync or the async client; both must behave the same."""
    if kind == "sync":
        with NameGenClient(url, retry=retry, timeout=timeout) as client:
            return getattr(client, method)(*args, **kwargs)

    async def go():
        async with AsyncNameGenClient(url, retry=retry, timeout=timeout) as client:
            return await getattr(client, method)(*args, **kwargs)
    return asyncio.run(go())


both = pytest.mark.parametrize("kind", ["sync", "async"])


@both
@pytest.mark.parametrize("status", [429, 503])
def test_429_and_503_twice_then_ok_is_retried_until_it_succeeds(kind, status):
    busy = Answer(status, {"detail": "queue full"}, {"Retry-After": "0"})
    with ScriptedServer(in_order(busy, busy, Answer(200, GENERATED))) as server:
        result = call(kind, server.url, "generate", 1, seed=7)
    assert [g.name for g in result.names] == ["kara"]
    assert len(server.received) == 3


def test_retry_waits_as_long_as_retry_after_says():
    busy = Answer(429, {"detail": "queue full"}, {"Retry-After": "1"})
    with ScriptedServer(in_order(busy, Answer(200, GENERATED))) as server:
        call("sync", server.url, "generate")
    first, second = server.received
    assert 1.0 <= second.at - first.at < 1.5  # the 1 s asked for, plus at most backoff_base of jitter


@both
def test_a_server_that_always_429s_gets_max_attempts_then_the_error_with_its_message(kind):
    policy = RetryPolicy(max_attempts=3, backoff_base=0.01, max_elapsed=5.0)
    with ScriptedServer(in_order(Answer(429, {"detail": "queue full, try later"}, {"Retry-After": "0"}))) as server:
        start = time.monotonic()
        with pytest.raises(TooManyRequestsError) as raised:
            call(kind, server.url, "generate", retry=policy)
    assert len(server.received) == 3 and raised.value.attempts == 3
    assert time.monotonic() - start < 1.0
    assert raised.value.status == 429 and raised.value.message == "queue full, try later"
    assert "gave up after 3 attempts" in str(raised.value)


def test_a_retry_after_beyond_the_time_budget_gives_up_at_once_instead_of_sleeping():
    policy = RetryPolicy(max_attempts=10, max_elapsed=2.0)
    with ScriptedServer(in_order(Answer(503, {"detail": "loading models"}, {"Retry-After": "60"}))) as server:
        start = time.monotonic()
        with pytest.raises(ServerError, match="loading models"):
            call("sync", server.url, "models", retry=policy)
    assert len(server.received) == 1 and time.monotonic() - start < 0.5


@both
def test_a_closed_port_is_retried_then_raises_a_connection_error_naming_the_url(kind):
    url = closed_port_url()
    policy = RetryPolicy(max_attempts=3, backoff_base=0.05, max_elapsed=5.0)
    start = time.monotonic()
    with pytest.raises(NameGenConnectionError) as raised:
        call(kind, url, "health", retry=policy)
    assert raised.value.attempts == 3 and url in str(raised.value)
    assert time.monotonic() - start < 1.0  # two jittered waits of at most 0.05 s and 0.1 s


@both
def test_422_is_not_retried_and_carries_the_servers_field_and_message(kind):
    invalid = {"detail": [{"loc": ["body", "n"], "msg": "Input should be greater than or equal to 1",
                           "type": "greater_than_equal"}]}
    with ScriptedServer(in_order(Answer(422, invalid))) as server:
        with pytest.raises(BadRequestError) as raised:
            call(kind, server.url, "generate", 0)
    assert len(server.received) == 1
    error = raised.value
    assert (error.status, error.field, error.message) == (422, "n", "Input should be greater than or equal to 1")
    assert str(error) == "HTTP 422: n: Input should be greater than or equal to 1"


def test_every_422_error_the_server_lists_is_kept():
    invalid = {"detail": [{"loc": ["body", "names", 3], "msg": "String should have at most 64 characters"},
                          {"loc": ["body", "model"], "msg": "Input should be a valid string"}]}
    with ScriptedServer(in_order(Answer(422, invalid))) as server:
        with pytest.raises(BadRequestError) as raised:
            call("sync", server.url, "score", ["a", "b", "c", "x" * 99])
    assert raised.value.field == "names[3]"
    assert raised.value.errors == [("names[3]", "String should have at most 64 characters"),
                                   ("model", "Input should be a valid string")]


@both
def test_404_surfaces_the_servers_message(kind):
    with ScriptedServer(in_order(Answer(404, {"detail": "unknown model 'nope'"}))) as server:
        with pytest.raises(BadRequestError) as raised:
            call(kind, server.url, "score", ["emma"], model="nope")
    assert (raised.value.status, raised.value.message, raised.value.field) == (404, "unknown model 'nope'", None)


@pytest.mark.parametrize("status", [500, 504])
def test_server_errors_other_than_503_are_not_retried(status):
    with ScriptedServer(in_order(Answer(status, {"detail": "deadline exceeded"}))) as server:
        with pytest.raises(ServerError, match="deadline exceeded"):
            call("sync", server.url, "generate")
    assert len(server.received) == 1


def test_an_html_error_page_becomes_a_one_line_message():
    page = b"<html>\n<body>\n<h1>502 Bad Gateway</h1>\n</body>\n</html>\n"
    with ScriptedServer(in_order(Answer(502, page))) as server:
        with pytest.raises(ServerError) as raised:
            call("sync", server.url, "models")
    assert raised.value.message == "<html> <body> <h1>502 Bad Gateway</h1> </body> </html>"


@both
def test_a_slow_answer_times_out_once_and_is_not_sent_again(kind):
    with ScriptedServer(in_order(Answer(200, GENERATED, delay_s=1.5))) as server:
        start = time.monotonic()
        with pytest.raises(NameGenTimeoutError):
            call(kind, server.url, "generate", timeout=0.3)
    assert time.monotonic() - start < 1.0 and len(server.received) == 1


def test_a_200_that_is_not_a_namegen_body_says_so():
    with ScriptedServer(in_order(Answer(200, {"hello": "world"}))) as server:
        with pytest.raises(UnexpectedResponseError, match="is the URL a namegen server"):
            call("sync", server.url, "generate")


@both
def test_only_the_fields_the_caller_set_are_sent(kind):
    scored = {"model": "mlp", "version": "3", "results": []}
    with ScriptedServer(in_order(Answer(200, GENERATED), Answer(200, scored))) as server:
        call(kind, server.url, "generate", 3, seed=7, prefix="ka", exclude_training=True)
        call(kind, server.url, "score", "emma")
    generate, score = server.received
    assert (generate.method, generate.path, generate.body) == (
        "POST", "/v1/generate", {"n": 3, "seed": 7, "prefix": "ka", "exclude_training": True})
    assert (score.path, score.body) == ("/v1/score", {"names": ["emma"]})


@both
def test_health_reports_not_ready_without_retrying_the_503(kind):
    with ScriptedServer(in_order(Answer(503, {"status": "not ready", "models": {}}))) as server:
        health = call(kind, server.url, "health")
    assert (health.ready, health.status) == (False, "not ready")
    assert [r.path for r in server.received] == ["/readyz"]


def test_the_base_url_comes_from_namegen_url_when_not_given(monkeypatch):
    with ScriptedServer(in_order(Answer(200, {"status": "ready", "models": {"mlp": "3"}}))) as server:
        monkeypatch.setenv("NAMEGEN_URL", server.url + "/")
        with NameGenClient() as client:
            assert client.base_url == server.url
            assert client.health().models == {"mlp": "3"}


def test_load_generator_counts_only_measured_requests_and_their_names():
    with ScriptedServer(fake_names) as server:
        report = asyncio.run(run_load(server.url, concurrency=4, requests=25, n=3, warmup=5))
    assert len(server.received) == 30  # 5 warm-up + 25 measured
    assert (report.requests, report.ok, report.errors) == (25, 25, {})
    assert report.names_per_s == pytest.approx(3 * report.requests_per_s)
    lat = report.latency_ms
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]


def test_load_generator_counts_errors_by_status_and_does_not_retry_them():
    answers = iter(range(10**6))

    def every_third_is_busy(request):
        return Answer(429, {"detail": "queue full"}) if next(answers) % 3 == 2 else fake_names(request)

    with ScriptedServer(every_third_is_busy) as server:
        report = asyncio.run(run_load(server.url, concurrency=3, requests=30))
    assert len(server.received) == 30
    assert (report.ok, report.errors) == (20, {"429": 10})


def test_load_generator_bounded_by_duration_stops_by_itself():
    with ScriptedServer(fake_names) as server:
        start = time.monotonic()
        report = asyncio.run(run_load(server.url, concurrency=2, duration=0.5))
    assert 0.5 <= time.monotonic() - start < 1.5
    assert report.ok > 0 and report.elapsed_s >= 0.5


def test_load_generator_sends_the_requested_mix():
    with ScriptedServer(fake_names) as server:
        asyncio.run(run_load(server.url, concurrency=2, requests=40, n=[1, 5], seeded=True,
                             model=["mlp", "bigram-counts"]))
    bodies = [r.body for r in server.received]
    assert {b["n"] for b in bodies} == {1, 5}
    assert {b["model"] for b in bodies} == {"mlp", "bigram-counts"}
    assert all(0 <= b["seed"] < 2**63 for b in bodies)


def test_bench_cli_prints_a_report_and_writes_json_out(tmp_path):
    out = tmp_path / "bench" / "report.json"
    with ScriptedServer(fake_names) as server:
        result = run_module("clients", "bench", "--url", server.url, "--requests", "20", "-c", "2", "-n", "2",
                            "--json-out", out, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "req/s" in result.stdout and "p99" in result.stdout
    saved = json.loads(out.read_text())
    assert (saved["requests"], saved["ok"], saved["mix"]["ns"]) == (20, 20, [2])
    assert {"host", "cpus"} <= saved["machine"].keys() and saved["started_at"]


def test_bench_cli_exits_1_when_no_request_succeeds():
    with ScriptedServer(in_order(Answer(503, {"detail": "not ready"}))) as server:
        result = run_module("clients", "bench", "--url", server.url, "--requests", "4", "-c", "2", timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: none of 4 requests to {server.url} succeeded (503 x4)"
