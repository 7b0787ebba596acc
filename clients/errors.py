"""The exceptions the SDK raises, and how an error response becomes one.

NameGenError
├── NameGenConnectionError      no HTTP answer: refused, reset, DNS ...
│   └── NameGenTimeoutError     connected, but no answer within the timeout
├── UnexpectedResponseError     a 200 that is not a namegen body (wrong URL?)
└── NameGenHTTPError            the server answered with an error status
    ├── BadRequestError         4xx but 429: the request is wrong; sending it again will not help
    ├── TooManyRequestsError    429 still, after the retries: the server is overloaded, not the request wrong
    └── ServerError             5xx
"""
from __future__ import annotations

import httpx

RETRY_STATUSES = frozenset({429, 503})  # the server's "come back later"; anything else is its final answer


class NameGenError(Exception):
    retryable = False

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
        self.attempts = 1
        self.elapsed_s = 0.0

    def __str__(self) -> str:
        if self.attempts > 1:
            return f"{self.describe()} (gave up after {self.attempts} attempts in {self.elapsed_s:.1f} s)"
        return self.describe()

    def describe(self) -> str:
        return self.message


class NameGenConnectionError(NameGenError):
    def __init__(self, message: str, *, url: str, retryable: bool = False):
        super().__init__(message)
        self.url = url
        self.retryable = retryable


class NameGenTimeoutError(NameGenConnectionError):
    pass


class UnexpectedResponseError(NameGenError):
    pass


class NameGenHTTPError(NameGenError):
    def __init__(self, status: int, message: str, *, field: str | None = None,
                 errors: list[tuple[str | None, str]] | None = None, retry_after: float | None = None,
                 url: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field  # the request field the server blamed, e.g. "n" or "names[3]"; None if none
        self.errors = errors or [(field, message)]  # every (field, message) the server listed
        self.retry_after = retry_after  # seconds, from the Retry-After header
        self.url = url
        self.retryable = status in RETRY_STATUSES

    def describe(self) -> str:
        listed = "; ".join(f"{f}: {m}" if f else m for f, m in self.errors)
        return f"HTTP {self.status}: {listed}"


class BadRequestError(NameGenHTTPError):
    pass


class TooManyRequestsError(NameGenHTTPError):
    pass


class ServerError(NameGenHTTPError):
    pass


def error_from_response(response: httpx.Response, retry_after: float | None = None) -> NameGenHTTPError:
    """The server's own message and field, from either error shape it sends:
    FastAPI's 422 `{"detail": [{"loc": [...], "msg": ...}, ...]}` or `{"detail": "a human message"}`."""
    status = response.status_code
    errors = _listed_errors(response)
    field, message = errors[0]
    kind = (TooManyRequestsError if status == 429 else BadRequestError if status < 500 else ServerError)
    return kind(status, message, field=field, errors=errors, retry_after=retry_after, url=str(response.url))


def _listed_errors(response: httpx.Response) -> list[tuple[str | None, str]]:
    try:
        body = response.json()
    except ValueError:
        text = " ".join(response.text.split())[:200]  # a proxy's HTML page, say: keep it to one short line
        return [(None, text or response.reason_phrase or "no message")]
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list) and detail and all(isinstance(d, dict) for d in detail):
        return [(field_from_loc(d.get("loc") or []), str(d.get("msg", d))) for d in detail]
    if isinstance(detail, str):
        return [(None, detail)]
    if isinstance(body, dict) and isinstance(body.get("status"), str):  # /readyz's {"status": "not ready", ...}
        return [(None, body["status"])]
    return [(None, " ".join(response.text.split())[:200])]


def field_from_loc(loc: list) -> str | None:
    """["body", "n"] -> "n"; ["body", "names", 3] -> "names[3]"; ["body"] -> None (the body as a whole)."""
    parts = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    field = ""
    for part in parts:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    return field or None
