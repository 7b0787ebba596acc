"""`NameGenClient` and `AsyncNameGenClient`: the HTTP API as typed Python calls, with timeouts and retries.

Both clients build the same `_Call`s and read answers with the same functions; they differ only in how
they send and how they sleep.
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import httpx

from .errors import (NameGenConnectionError, NameGenError, NameGenTimeoutError, UnexpectedResponseError,
                     error_from_response)
from .results import Generation, Health, ModelList, Scores
from .retry import RetryBudget, RetryPolicy, parse_retry_after

DEFAULT_URL = "http://127.0.0.1:8000"
# Generating 10,000 names takes a while; not reaching the server at all should fail fast.
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
USER_AGENT = "namegen-client/0.1"

# The connection never carried the request, or broke before an answer. Retrying those is safe even for
# POST: generate and score change nothing on the server. A read timeout is not among them: the server
# got the request and is busy with it, and sending it again only adds to the queue.
_RETRYABLE_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.WriteError,
                               httpx.RemoteProtocolError)


def resolve_base_url(url: str | None = None) -> str:
    """The argument, else $NAMEGEN_URL, else the local default; rejected here if it cannot be an HTTP URL."""
    chosen = url or os.environ.get("NAMEGEN_URL") or DEFAULT_URL
    source = "url" if url else "NAMEGEN_URL"
    if not chosen.startswith(("http://", "https://")):
        raise ValueError(f"{source} {chosen!r} must start with http:// or https://, e.g. {DEFAULT_URL}")
    try:
        host = httpx.URL(chosen).host
    except httpx.InvalidURL as exc:
        raise ValueError(f"{source} {chosen!r} is not a valid URL: {exc}") from None
    if not host:
        raise ValueError(f"{source} {chosen!r} names no host, e.g. {DEFAULT_URL}")
    return chosen.rstrip("/")


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    parse: Callable[[dict], Any]
    body: dict | None = None
    answers: frozenset[int] = field(default=frozenset({200}))  # statuses whose body is the result


def _generate_call(n, seed, temperature, top_k, prefix, min_length, max_length, unique, exclude_training,
                   model, sex=None, decade=None, guidance=None) -> _Call:
    chosen = dict(n=n, seed=seed, temperature=temperature, top_k=top_k, prefix=prefix, min_length=min_length,
                  max_length=max_length, unique=unique, exclude_training=exclude_training, model=model, sex=sex,
                  decade=decade, guidance=guidance)
    # Only what the caller set: the server owns the defaults, and may change them.
    body = {key: value for key, value in chosen.items() if value is not None}
    return _Call("POST", "/v1/generate", Generation.from_json, body)


def _score_call(names: str | Sequence[str], model: str | None, sex: str | None = None, decade: int | None = None,
                explain: bool | None = None) -> _Call:
    names = [names] if isinstance(names, str) else list(names)  # score("emma") is one name, not four letters
    chosen = dict(model=model, sex=sex, decade=decade, explain=explain)
    body = {"names": names, **{key: value for key, value in chosen.items() if value is not None}}
    return _Call("POST", "/v1/score", Scores.from_json, body)


_MODELS_CALL = _Call("GET", "/v1/models", ModelList.from_json)
# 503 from /readyz is an answer ("not ready"), not a failure to retry.
_HEALTH_CALL = _Call("GET", "/readyz", Health.from_json, answers=frozenset({200, 503}))


def _result(call: _Call, response: httpx.Response):
    if response.status_code not in call.answers:
        raise error_from_response(response, parse_retry_after(response.headers.get("retry-after")))
    try:
        return call.parse(response.json())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UnexpectedResponseError(
            f"{response.request.method} {response.url} answered {response.status_code} with a body that is "
            f"not a namegen response ({type(exc).__name__}: {exc}); is the URL a namegen server?") from exc


def _transport_error(exc: httpx.TransportError, base_url: str) -> NameGenConnectionError:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return NameGenTimeoutError(f"no answer from {base_url} in time ({reason}); raise the timeout or "
                                   f"ask for fewer names", url=base_url)
    return NameGenConnectionError(f"cannot reach {base_url}: {reason}", url=base_url,
                                  retryable=isinstance(exc, _RETRYABLE_TRANSPORT_ERRORS))


class _ClientSettings:
    def __init__(self, url: str | None, timeout: float | httpx.Timeout, retry: RetryPolicy | None,
                 rng: random.Random | None):
        self.base_url = resolve_base_url(url)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()

    def _http_options(self) -> dict:
        return dict(base_url=self.base_url, timeout=self.timeout, headers={"user-agent": USER_AGENT})


class NameGenClient(_ClientSettings):
    """
    >>> with NameGenClient("http://127.0.0.1:8000") as client:
    ...     [g.name for g in client.generate(5, seed=42).names]
    """

    def __init__(self, url: str | None = None, *, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
                 retry: RetryPolicy | None = None, rng: random.Random | None = None):
        super().__init__(url, timeout, retry, rng)
        self._http = httpx.Client(**self._http_options())

    def generate(self, n: int | None = None, *, seed: int | None = None, temperature: float | None = None,
                 top_k: int | None = None, prefix: str | None = None, min_length: int | None = None,
                 max_length: int | None = None, unique: bool | None = None, exclude_training: bool | None = None,
                 model: str | None = None, sex: str | None = None, decade: int | None = None,
                 guidance: float | None = None) -> Generation:
        """sex ("F", "M") and decade (1880, ..., 2010): a conditional model's conditions; omitted: any.
        guidance: how strongly names lean to them (omitted: the model's default)."""
        return self._send(_generate_call(n, seed, temperature, top_k, prefix, min_length, max_length, unique,
                                         exclude_training, model, sex, decade, guidance))

    def score(self, names: str | Sequence[str], *, model: str | None = None, sex: str | None = None,
              decade: int | None = None, explain: bool | None = None) -> Scores:
        """explain: each name's posterior over a conditional model's condition values."""
        return self._send(_score_call(names, model, sex, decade, explain))

    def models(self) -> ModelList:
        return self._send(_MODELS_CALL)

    def health(self) -> Health:
        return self._send(_HEALTH_CALL)

    def _send(self, call: _Call):
        budget = RetryBudget(self.retry, self._rng)
        while True:
            try:
                return _result(call, self._request(call))
            except NameGenError as error:
                if not error.retryable:
                    raise
                time.sleep(budget.wait_before_retry(error))

    def _request(self, call: _Call) -> httpx.Response:
        try:
            return self._http.request(call.method, call.path, json=call.body)
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.base_url) from exc

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NameGenClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class AsyncNameGenClient(_ClientSettings):
    """
    >>> async with AsyncNameGenClient("http://127.0.0.1:8000") as client:
    ...     [g.name for g in (await client.generate(5, seed=42)).names]
    """

    def __init__(self, url: str | None = None, *, timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
                 retry: RetryPolicy | None = None, rng: random.Random | None = None):
        super().__init__(url, timeout, retry, rng)
        self._http = httpx.AsyncClient(**self._http_options())

    async def generate(self, n: int | None = None, *, seed: int | None = None, temperature: float | None = None,
                       top_k: int | None = None, prefix: str | None = None, min_length: int | None = None,
                       max_length: int | None = None, unique: bool | None = None,
                       exclude_training: bool | None = None, model: str | None = None, sex: str | None = None,
                       decade: int | None = None, guidance: float | None = None) -> Generation:
        return await self._send(_generate_call(n, seed, temperature, top_k, prefix, min_length, max_length,
                                               unique, exclude_training, model, sex, decade, guidance))

    async def score(self, names: str | Sequence[str], *, model: str | None = None, sex: str | None = None,
                    decade: int | None = None, explain: bool | None = None) -> Scores:
        return await self._send(_score_call(names, model, sex, decade, explain))

    async def models(self) -> ModelList:
        return await self._send(_MODELS_CALL)

    async def health(self) -> Health:
        return await self._send(_HEALTH_CALL)

    async def _send(self, call: _Call):
        budget = RetryBudget(self.retry, self._rng)
        while True:
            try:
                return _result(call, await self._request(call))
            except NameGenError as error:
                if not error.retryable:
                    raise
                await asyncio.sleep(budget.wait_before_retry(error))

    async def _request(self, call: _Call) -> httpx.Response:
        try:
            return await self._http.request(call.method, call.path, json=call.body)
        except httpx.TransportError as exc:
            raise _transport_error(exc, self.base_url) from exc

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncNameGenClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()
