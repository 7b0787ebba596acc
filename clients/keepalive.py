"""The load generators' HTTP client: keep-alive HTTP/1.1 connections posting /v1/generate back to back, and
the tally of what they were answered.

An asyncio protocol and requests encoded once: on a 2-core machine httpx spends milliseconds of CPU per
request, more than the server, so a load generator built on an HTTP client library measures itself; even
asyncio's streams cost about a quarter more per request than callbacks. This is the whole client of
`namegen bench` (clients/loadgen.py) and of the serving benchmarks (bench/):

    target = Target.parse("http://127.0.0.1:8000")
    request = target.post({"n": 1000})
    tally = Tally()
    await keep_posting(target, lambda: request if time.perf_counter() < until else None, tally)
"""
from __future__ import annotations

import asyncio
import json
import math
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Sequence
from urllib.parse import urlsplit

from .sdk import USER_AGENT

# answered(sent, status, payload): sent is the time.perf_counter() the request went out at; status is the
# HTTP status, or the name of the exception that ended the exchange (then payload is b"").
Answered = Callable[[float, "int | str", bytes], None]


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    netloc: str  # for the Host header
    path: str  # the base URL's path + /v1/generate (a server behind a path prefix)
    tls: ssl.SSLContext | None

    @classmethod
    def parse(cls, base_url: str) -> Target:
        """An http(s) base URL, as clients.sdk.resolve_base_url returns it."""
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"{base_url!r} is not an http(s) URL with a host")
        https = url.scheme == "https"
        return cls(url.hostname, url.port or (443 if https else 80), url.netloc.rpartition("@")[2],
                   url.path.rstrip("/") + "/v1/generate", ssl.create_default_context() if https else None)

    def post(self, body: dict) -> bytes:
        """The whole request for this JSON body, ready to write."""
        data = json.dumps(body, separators=(",", ":")).encode()
        return (f"POST {self.path} HTTP/1.1\r\nHost: {self.netloc}\r\nUser-Agent: {USER_AGENT}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data


async def keep_posting(target: Target, next_request: Callable[[], bytes | None], answered: Answered,
                       timeout: float | None = None) -> None:
    """One connection posting next_request() until it returns None, each request written the moment the
    answer before it is read (by the callback that read it: no task switch in between). At most `timeout`
    seconds to connect, and as long for each answer. An exchange that fails (refused, reset, timed out,
    closed mid-answer, not HTTP) is answered with the exception's name and the next request reconnects."""
    loop = asyncio.get_running_loop()
    request = next_request()
    while request is not None:
        sent = time.perf_counter()
        connection = _Connection(next_request, answered, timeout)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: connection, target.host, target.port, ssl=target.tls)
        except (OSError, TimeoutError) as exc:
            answered(sent, type(exc).__name__, b"")
            request = next_request()
            continue
        request = await connection.post(request, sent)


class NotHTTPError(ValueError):
    pass


class _Connection(asyncio.Protocol):
    """One connection's exchanges, run by the event loop's callbacks. post() resolves once the connection is
    done with: to the request still to send (on a new connection), or None when next_request() said stop."""

    def __init__(self, next_request: Callable[[], bytes | None], answered: Answered, timeout: float | None):
        self.next_request, self.answered, self.timeout = next_request, answered, timeout
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()  # what came and is not yet an answer
        self.head: tuple[int, int | str, bool] | None = None  # status, framing, keep-alive of the answer coming
        self.sent = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def post(self, request: bytes, sent: float) -> asyncio.Future:
        self._write(request, sent)
        return self.done

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            while not self.done.done() and (answer := self._answer()) is not None:
                self._answered(*answer)
        except ValueError as exc:  # NotHTTPError, a length or a chunk size that is not a number
            self._fail(type(exc).__name__)

    def eof_received(self) -> bool:
        if self.head is not None and self.head[1] == "close" and not self.done.done():
            self._answered(self.head[0], bytes(self.buffer), False)  # the body that ends with the connection
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(type(exc).__name__ if exc else "IncompleteReadError")  # nothing to do once done

    def _write(self, request: bytes, sent: float) -> None:
        self.sent = sent
        if self.timeout is not None:
            self.timer = asyncio.get_running_loop().call_later(self.timeout, self._fail, "TimeoutError")
        self.transport.write(request)

    def _answer(self) -> tuple[int, bytes, bool] | None:
        """The next whole answer in the buffer, taken out of it; None until one is there."""
        if self.head is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            self.head = _parse_head(bytes(self.buffer[:end + 4]))
            del self.buffer[:end + 4]
        status, framing, keep_alive = self.head
        if framing == "close":
            return None  # eof_received answers
        if framing == "chunked":
            body = _dechunk(self.buffer)
            if body is None:
                return None
            payload, used = body
        elif len(self.buffer) < framing:
            return None
        else:
            payload, used = bytes(self.buffer[:framing]), framing
        del self.buffer[:used]
        self.head = None
        return status, payload, keep_alive

    def _answered(self, status: int, payload: bytes, keep_alive: bool) -> None:
        self._stop_timer()
        self.answered(self.sent, status, payload)
        request = self.next_request()
        if request is None or not keep_alive:
            self.done.set_result(request)
            self.transport.close()
        else:
            self._write(request, time.perf_counter())

    def _fail(self, error: str) -> None:
        if self.done.done():
            return
        self._stop_timer()
        self.answered(self.sent, error, b"")
        self.transport.abort()
        self.done.set_result(self.next_request())

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _parse_head(head: bytes) -> tuple[int, int | str, bool]:
    """(status, framing, keep-alive): framing is the Content-Length, "chunked", or "close" (the body ends
    with the connection)."""
    if not head.startswith(b"HTTP/1.") or not head[9:12].isdigit():
        raise NotHTTPError(head[:40])
    lowered = head.lower()
    status, keep_alive = int(head[9:12]), b"\r\nconnection: close" not in lowered
    length = _header(lowered, b"content-length")
    if length is not None:
        return status, int(length), keep_alive
    if _header(lowered, b"transfer-encoding") == b"chunked":
        return status, "chunked", keep_alive
    return status, "close", False


def _header(lowered_head: bytes, name: bytes) -> bytes | None:
    start = lowered_head.find(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    return lowered_head[start:lowered_head.index(b"\r\n", start)].strip()


def _dechunk(buffer: bytearray) -> tuple[bytes, int] | None:
    """(body, bytes used) of a whole chunked body at the buffer's start, trailers included; None if the buffer
    does not hold all of it yet."""
    chunks, at = [], 0
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
        at = line_end + 2
        if size == 0:
            break
        if len(buffer) < at + size + 2:
            return None
        chunks.append(bytes(buffer[at:at + size]))
        at += size + 2
    while (line_end := buffer.find(b"\r\n", at)) >= 0:  # trailers, up to an empty line
        empty, at = line_end == at, line_end + 2
        if empty:
            return b"".join(chunks), at
    return None


def count_names(payload: bytes) -> int | None:
    """Names in a /v1/generate answer, None if it is not one. Counted without parsing (a 1,000-name answer
    is some 40 KB of JSON): each name is one object with one "name" key, and a name cannot hold a bare quote."""
    if not payload.startswith(b"{") or b'"names"' not in payload:
        return None
    return payload.count(b'"name"')


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least q% of the values at or below it."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


class Tally:
    """What keep_posting's answers add up to, counted from `measure_from` (a time.perf_counter()) on: the
    latency and names of each 200, and how many of every other status or error (`failed`)."""

    def __init__(self, measure_from: float = -math.inf, count_names: Callable[[bytes], int | None] = count_names):
        self.measure_from, self.count_names = measure_from, count_names
        self.latencies: list[float] = []  # seconds
        self.names = 0
        self.failed: dict[int | str, int] = {}

    def __call__(self, sent: float, status: int | str, payload: bytes) -> None:
        if sent < self.measure_from:
            return
        names = self.count_names(payload) if status == 200 else None
        if names is None:
            key = "200 not a namegen body" if status == 200 else status
            self.failed[key] = self.failed.get(key, 0) + 1
            return
        self.latencies.append(time.perf_counter() - sent)
        self.names += names

    def percentile_ms(self, q: float) -> float:
        """q in percent, nearest rank, of the successful requests' latencies (nan if none succeeded)."""
        value = percentile(sorted(self.latencies), q)
        return math.nan if value is None else value * 1000
