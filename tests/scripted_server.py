"""A small real HTTP server for client tests: answers from a script, records what it was sent.

The namegen server cannot be asked to say 429 twice and then 200, or to stall; this one can.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Answer:
    status: int = 200
    body: object = field(default_factory=dict)  # JSON-encoded unless bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Received:
    method: str
    path: str
    body: object  # decoded JSON, or None
    at: float  # time.monotonic()


def in_order(*answers: Answer) -> Callable[[Received], Answer]:
    """The answers one after the other, the last one repeated from then on."""
    queue = list(answers)
    lock = threading.Lock()

    def answer(_request: Received) -> Answer:
        with lock:
            return queue.pop(0) if len(queue) > 1 else queue[0]
    return answer


def fake_names(request: Received) -> Answer:
    """Just enough of /v1/generate for the load generator to count names."""
    n = (request.body or {}).get("n", 10)
    return Answer(200, {"model": "m", "version": "1", "seed": 0, "names": [{"name": "ab", "nll": 1.0}] * n})


class ScriptedServer:
    def __init__(self, answer: Callable[[Received], Answer]):
        self.received: list[Received] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the real server
            disable_nagle_algorithm = True  # headers and body go out as two writes; do not hold the second

            def _handle(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                request = Received(self.command, self.path, json.loads(raw) if raw else None, time.monotonic())
                server.received.append(request)
                reply = answer(request)
                time.sleep(reply.delay_s)
                payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting (timeout tests)
                    pass

            do_GET = do_POST = _handle

            def log_message(self, *args):
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._http.shutdown()
        self._http.server_close()


def closed_port_url() -> str:
    """A 127.0.0.1 URL where nothing listens: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
