"""Connections as a hostile client holds them: slow headers, slow or cut-off bodies, too many at once;
and what operators see: exit status after SIGTERM, metrics by route, HEAD, readiness without paths."""
import socket
import time

import httpx
import pytest


def raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.fixture(scope="module")
def strict_server(served_registry):
    from conftest import ServerProcess

    server = ServerProcess(served_registry, header_timeout_s=1, body_timeout_s=1, max_connections=40)
    server.wait_ready()
    yield server
    server.stop()


def test_slow_headers_are_cut_off_with_408(strict_server):
    sockets = [raw_connection(strict_server.url) for _ in range(20)]
    for sock in sockets:
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nhost: x\r\ncontent-")  # and never the rest
    started = time.monotonic()
    answers = [read_all(sock) for sock in sockets]  # returns once the server closes the connection
    assert time.monotonic() - started < 5
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers)
    assert httpx.post(strict_server.url + "/v1/generate", json={"n": 2}).status_code == 200


def test_a_body_that_does_not_arrive_in_time_is_408(strict_server):
    sock = raw_connection(strict_server.url)
    sock.sendall(b"POST /v1/generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 b"content-length: 100\r\n\r\n{\"n\": 1")
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 1 s" in answer


def test_a_client_gone_mid_body_is_not_answered_as_if_its_body_had_arrived(strict_server):
    def count(status):
        text = httpx.get(strict_server.url + "/metrics").text
        line = f'namegen_requests_total{{route="/v1/generate",status="{status}"}}'
        return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))

    before_422, before_gone = count(422), count(499)
    for _ in range(10):
        sock = raw_connection(strict_server.url)
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"content-length: 1000\r\n\r\n{\"n\": 3, \"prefix\": \"a")
        sock.close()
    deadline = time.monotonic() + 10
    while count(499) < before_gone + 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert count(499) == before_gone + 10 and count(422) == before_422


def test_connections_past_the_limit_get_503_not_a_hang(strict_server):
    held = [raw_connection(strict_server.url) for _ in range(45)]  # past max_connections 40
    try:
        time.sleep(0.5)
        response = httpx.get(strict_server.url + "/healthz", timeout=10)
        assert response.status_code == 503
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while httpx.get(strict_server.url + "/healthz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_413_is_counted_under_its_route_and_head_works(live_server):
    assert httpx.post(live_server + "/v1/score", json={"names": ["a"] * 400_000}).status_code == 413
    assert 'namegen_requests_total{route="/v1/score",status="413"}' in httpx.get(live_server + "/metrics").text
    for path in ("/healthz", "/readyz", "/v1/models", "/metrics"):
        response = httpx.head(live_server + path)
        assert response.status_code == 200 and response.content == b"", path


def test_readiness_names_what_is_missing_without_the_servers_paths(tmp_path, start_server):
    server = start_server(tmp_path, ready=False, models="mlp")
    response = httpx.get(server.url + "/readyz")
    assert response.status_code == 503 and response.json()["waiting_for"] == ["mlp"]
    assert str(tmp_path) not in response.text
