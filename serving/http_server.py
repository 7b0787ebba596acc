"""The HTTP server process around the app: uvicorn on httptools and uvloop, with the limits a public
server needs and uvicorn leaves open, and an exit status of 0 after a graceful SIGTERM."""
from __future__ import annotations

import asyncio
import signal
import sys

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import Settings

DRAIN_SECONDS = 30  # SIGTERM: stop accepting, finish what is in flight for at most this long


def header_timeout_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline for each request's headers: uvicorn arms no timer while
    a request's headers arrive, so a client that sends them slowly (slowloris) holds its connection for
    ever. Past the deadline the connection gets 408 and is closed."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:  # a request after a keep-alive pause
                self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._cancel_header_timer()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._header_timer = self.loop.call_later(timeout_s, self._headers_too_slow)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.cycle is None or self.cycle.response_complete:  # between requests: still reading headers
                if not self.transport.is_closing():
                    self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n"
                                         b"connection: close\r\n\r\n")
                    self.transport.close()

    return HeaderTimeoutProtocol


def _exit_cleanly(signum, frame) -> None:
    # uvicorn re-raises the SIGTERM it drained for with the handler it found in place: this one, so the
    # process ends with status 0 rather than killed by the signal.
    sys.exit(0)


def serve(app, settings: Settings) -> None:
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            http=header_timeout_protocol(settings.header_timeout_s),
                            limit_concurrency=settings.max_connections,
                            timeout_keep_alive=settings.keep_alive_s, timeout_graceful_shutdown=DRAIN_SECONDS)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.Server(config).run()
