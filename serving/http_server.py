"""The HTTP server around the app: uvicorn on httptools and uvloop, with the limits a public server needs
and uvicorn leaves open, and an exit status of 0 after a graceful SIGTERM; in one process, or in
NAMEGEN_WORKERS processes (workers.py)."""
from __future__ import annotations

import json
import signal
import sys

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import Settings
from .workers import serve_workers

DRAIN_SECONDS = 30  # SIGTERM: stop accepting, finish what is in flight for at most this long


SWEEP_S = 0.25  # how often connections are checked against the read deadlines
BODY_TIMED_OUT = "namegen.body_timed_out"  # set in a request's scope when its body missed the deadline


def read_deadline_protocol(header_timeout_s: float, body_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with read deadlines: a request's headers must arrive within
    header_timeout_s, and its body within body_timeout_s of them; past either the connection gets 408
    and is closed. uvicorn arms no timer while a request arrives, so a client that sends it slowly
    (slowloris) holds its connection for ever. One timer checks every connection a few times a second,
    so a request pays for two time readings, not a timer of its own."""
    sweeping: list = []  # the armed sweep, if any

    class ReadDeadlineProtocol(HttpToolsProtocol):
        _headers_since: float | None = None  # when the request now arriving began, until its headers are in
        _body_since: float | None = None  # when its headers were in, until its body is

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._headers_since = self.loop.time()
            if not sweeping:
                sweeping.append(self.loop.call_later(SWEEP_S, sweep, self.loop, self.connections))

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._headers_since is None:  # a request after a keep-alive pause
                self._headers_since = self.loop.time()

        def on_headers_complete(self) -> None:
            self._headers_since, self._body_since = None, self.loop.time()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._body_since = None
            super().on_message_complete()

        def overdue(self, now: float) -> str | None:
            if self._headers_since is not None and now - self._headers_since > header_timeout_s:
                return f"the request headers did not arrive within {header_timeout_s:g} s"
            if self._body_since is not None and now - self._body_since > body_timeout_s and \
                    self.cycle is not None and not self.cycle.response_started:
                self.cycle.scope[BODY_TIMED_OUT] = True
                return f"the request body did not arrive within {body_timeout_s:g} s"
            return None

    def sweep(loop, connections) -> None:
        now = loop.time()
        for protocol in list(connections):
            reason = protocol.overdue(now) if isinstance(protocol, ReadDeadlineProtocol) else None
            if reason and not protocol.transport.is_closing():
                body = json.dumps({"detail": reason}).encode()
                protocol.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                         b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
                protocol.transport.close()
        sweeping[:] = [loop.call_later(SWEEP_S, sweep, loop, connections)] if connections else []

    return ReadDeadlineProtocol


def _exit_cleanly(signum, frame) -> None:
    # uvicorn re-raises the SIGTERM it drained for with the handler it found in place: this one, so the
    # process ends with status 0 rather than killed by the signal.
    sys.exit(0)


def worker_protocol(*args, **kwargs) -> HttpToolsProtocol:
    """A connection's protocol in a worker process: read_deadline_protocol's, with the deadlines of the
    worker's NAMEGEN_* settings. A function importable by name, because a worker gets its configuration
    pickled (a class made inside read_deadline_protocol would not be)."""
    global _worker_protocol
    if _worker_protocol is None:
        settings = Settings()
        _worker_protocol = read_deadline_protocol(settings.header_timeout_s, settings.body_timeout_s)
    return _worker_protocol(*args, **kwargs)


_worker_protocol: type[HttpToolsProtocol] | None = None


def serve(settings: Settings) -> None:
    """One process serving the app, or settings.workers processes, each serving an app of its own."""
    common = dict(host=settings.host, port=settings.port, log_level=settings.log_level,
                  limit_concurrency=settings.max_connections, timeout_keep_alive=settings.keep_alive_s,
                  timeout_graceful_shutdown=DRAIN_SECONDS)
    if settings.workers > 1:
        return serve_workers(settings.workers, {**common, "http": worker_protocol})
    from .app import create_app  # here: the app's modules import this one's BODY_TIMED_OUT

    config = uvicorn.Config(create_app(settings),
                            http=read_deadline_protocol(settings.header_timeout_s, settings.body_timeout_s), **common)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.Server(config).run()
