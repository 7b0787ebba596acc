"""The load generators' HTTP client (clients/keepalive.py) against a raw HTTP server on 127.0.0.1 that answers
byte for byte what each test scripts: body framings, connections the server closes, stalls, what is sent."""
import asyncio
import json
import time

import pytest

from clients.keepalive import Tally, Target, count_names, keep_posting

NAMES_3 = json.dumps({"model": "m", "version": "1", "seed": 0,
                      "names": [{"name": n, "nll": 1.0} for n in ("ab", "cd", "ef")]}).encode()


def sized(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


def chunked(body: bytes) -> bytes:
    half = len(body) // 2
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]))
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\nx-trailer: 1\r\n\r\n"


async def serve_and_post(answers: list, requests: int, timeout: float | None = 5.0, base_path: str = ""):
    """A server answering the i-th request with answers[i] (bytes; "close" drops the connection after part
    of an answer; ("stall", s, bytes) waits s seconds first; ("dribble", bytes) writes 5 bytes at a time;
    ("then close", bytes) closes after it), one keep_posting sending `requests` requests.
    Returns (tally, the request heads and bodies received, connections accepted, seconds keep_posting took)."""
    received, connections = [], [0]

    async def handle(reader, writer):
        connections[0] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                received.append((head.decode(), json.loads(await reader.readexactly(length))))
                answer = answers[len(received) - 1]
                if isinstance(answer, tuple) and answer[0] == "stall":
                    await asyncio.sleep(answer[1])
                    answer = answer[2]
                if isinstance(answer, tuple) and answer[0] == "dribble":
                    for at in range(0, len(answer[1]), 5):
                        await asyncio.sleep(0.0005 if at else 0)
                        writer.write(answer[1][at:at + 5])
                        await writer.drain()
                    continue
                if isinstance(answer, tuple) and answer[0] == "then close":
                    writer.write(answer[1])
                    break
                if answer == "close":
                    writer.write(sized(NAMES_3)[:40])
                    break
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = Target.parse(f"http://127.0.0.1:{port}{base_path}")
    request = target.post({"n": 3})
    left = [requests]

    def next_request():
        left[0] -= 1
        return request if left[0] >= 0 else None

    tally = Tally()
    async with server:
        start = time.perf_counter()
        await keep_posting(target, next_request, tally, timeout)
        took = time.perf_counter() - start
        await asyncio.sleep(0.05)  # the handlers see the client go before the loop ends
    return tally, received, connections[0], took


def post(answers, requests, **kw):
    return asyncio.run(serve_and_post(answers, requests, **kw))[:3]


def test_sized_and_chunked_bodies_are_read_whole_on_one_kept_alive_connection():
    tally, received, connections = post([sized(NAMES_3), chunked(NAMES_3), sized(NAMES_3)], 3)
    assert (len(tally.latencies), tally.names, tally.failed, connections) == (3, 9, {}, 1)
    assert [body for _, body in received] == [{"n": 3}] * 3


def test_answers_arriving_a_few_bytes_at_a_time_are_put_together():
    tally, _, connections = post([("dribble", sized(NAMES_3)), ("dribble", chunked(NAMES_3))], 2)
    assert (tally.names, tally.failed, connections) == (6, {}, 1)


def test_a_body_without_length_ends_with_the_connection_and_the_next_request_reconnects():
    tally, _, connections = post([("then close", b"HTTP/1.1 200 OK\r\n\r\n" + NAMES_3), sized(NAMES_3)], 2)
    assert (tally.names, tally.failed, connections) == (6, {}, 2)


def test_an_answer_with_connection_close_is_counted_and_the_next_request_reconnects():
    tally, _, connections = post([sized(NAMES_3, extra="Connection: close\r\n"), sized(NAMES_3)], 2)
    assert (tally.names, tally.failed, connections) == (6, {}, 2)


def test_a_connection_dropped_mid_answer_is_one_error_and_the_next_request_reconnects():
    tally, _, connections = post(["close", sized(NAMES_3)], 2)
    assert (tally.names, tally.failed, connections) == (3, {"IncompleteReadError": 1}, 2)


def test_statuses_and_bodies_that_are_not_names_are_counted_by_kind():
    busy = sized(b'{"detail":"queue full"}', "429 Too Many Requests")
    tally, _, _ = post([busy, sized(b'{"detail":"x"}'), busy, sized(NAMES_3)], 4)
    assert tally.failed == {429: 2, "200 not a namegen body": 1} and tally.names == 3


def test_an_answer_slower_than_the_timeout_is_a_timeout_error_without_waiting_for_it():
    tally, _, _, took = asyncio.run(serve_and_post([("stall", 2.0, sized(NAMES_3)), sized(NAMES_3)], 2, timeout=0.3))
    assert tally.failed == {"TimeoutError": 1} and tally.names == 3
    assert took < 1.5


def test_the_request_goes_to_the_base_urls_path_with_host_and_json_headers():
    _, received, _ = post([sized(NAMES_3)], 1, base_path="/namegen/")
    head = received[0][0].lower()
    assert head.startswith("post /namegen/v1/generate http/1.1\r\n")
    assert "\r\nhost: 127.0.0.1:" in head and "\r\ncontent-type: application/json\r\n" in head


def test_a_refused_connection_is_counted_and_retried_for_each_request():
    from scripted_server import closed_port_url

    target = Target.parse(closed_port_url())
    sends = iter([target.post({"n": 1})] * 3 + [None])
    tally = Tally()
    asyncio.run(keep_posting(target, lambda: next(sends), tally, 5.0))
    assert tally.failed == {"ConnectionRefusedError": 3}


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_names_are_counted_without_parsing_whatever_the_json_spacing(separators):
    names = [{"name": "a" * i, "nll": 1.5} for i in range(1, 8)]
    payload = json.dumps({"model": "m", "names": names, "seed": 1}, separators=separators).encode()
    assert count_names(payload) == 7
    assert count_names(b'{"detail": "no names here"}') is None and count_names(b"names") is None


def test_target_rejects_what_is_not_an_http_url():
    with pytest.raises(ValueError, match="not an http"):
        Target.parse("ftp://example.org")
