"""The load generators' HTTP client: keep-alive HTTP/1.1 connections posting /v1/generate back to back, and
the tally of what they were answered.

Bare asyncio streams and requests encoded once: on a 2-core machine httpx spends about 3.5 ms of CPU per
request, more than the server, so a load generator built on an HTTP client library measures itself. This is
the whole client of `namegen bench` (clients/loadgen.py) and of the serving benchmarks (bench/):

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
    """One connection posting next_request() until it returns None, each answer waited for (at most
    `timeout` seconds, connecting included) before the next request goes. An exchange that fails (refused,
    reset, timed out, not HTTP) is answered with the exception's name and the next request reconnects."""
    connection = None
    while (request := next_request()) is not None:
        sent = time.perf_counter()
        try:
            async with asyncio.timeout(timeout):
                if connection is None:
                    connection = await asyncio.open_connection(target.host, target.port, ssl=target.tls)
                status, payload, keep_alive = await _exchange(*connection, request)
        except (OSError, EOFError, TimeoutError, ValueError, asyncio.LimitOverrunError) as exc:
            answered(sent, type(exc).__name__, b"")  # IncompleteReadError is an EOFError: closed mid-answer
            connection = _close(connection)
            continue
        answered(sent, status, payload)
        if not keep_alive:
            connection = _close(connection)
    _close(connection)


class NotHTTPError(ValueError):
    pass


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> tuple[int, bytes, bool]:
    """(status, body, whether the connection stays open) of one request."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or not head[9:12].isdigit():
        raise NotHTTPError(head[:40])
    headers = head.lower()
    keep_alive = b"\r\nconnection: close" not in headers
    length = _header(headers, b"content-length")
    if length is not None:
        return int(head[9:12]), await reader.readexactly(int(length)), keep_alive
    if _header(headers, b"transfer-encoding") == b"chunked":
        return int(head[9:12]), await _read_chunked(reader), keep_alive
    return int(head[9:12]), await reader.read(), False  # the body ends with the connection


def _header(lowered_head: bytes, name: bytes) -> bytes | None:
    start = lowered_head.find(b"\r\n" + name + b":")
    if start < 0:
        return None
    start += len(name) + 3
    return lowered_head[start:lowered_head.index(b"\r\n", start)].strip()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
        pass
    return b"".join(chunks)


def _close(connection) -> None:
    if connection is not None:
        connection[1].close()


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

    @property
    def answered(self) -> int:
        return len(self.latencies) + sum(self.failed.values())

    def percentile_ms(self, q: float) -> float:
        """q in percent, nearest rank, of the successful requests' latencies (nan if none succeeded)."""
        value = percentile(sorted(self.latencies), q)
        return math.nan if value is None else value * 1000
