"""The SDK's retries: an httpx transport that asks again when asking again is safe
(docs/sdk.md, "Retries").

A request is retried only if repeating it cannot do anything twice: ``GET`` and ``HEAD``, and a
``POST`` that carries an ``Idempotency-Key`` (the coordinator answers a key it has answered
before from storage: inference and LLM requests send one). It is retried on

- a connection failure before an answer came (refused, reset, closed without an answer, a
  body cut short: :data:`RETRIED_ERRORS`), never on a timeout while the server works on it;
- ``503 Service Unavailable``, and ``429 Too Many Requests`` when it says when to come back.

Any other answer, a 4xx above all, is the caller's; a verification failure is decided above the
transport, on an answer that came, and is never retried. A request marked as a stream
(:data:`STREAM`) is retried only until its response headers arrive; once its body is being
read it is the caller's, since a stream's first chunks may already have been shown.

Waits are the server's ``Retry-After`` (delay-seconds or an HTTP-date, RFC 9110 §10.2.3) when
it sends one, else exponential backoff with jitter (``stamina``). A call makes at most
``retries`` retries and decides on none once ``timeout`` seconds have passed since its first
attempt (so it takes at most that, one more wait and its last attempt); a ``Retry-After`` that
does not fit in what remains is not waited out: the server's answer is returned at once.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import re
import time
from dataclasses import dataclass
from typing import Final

import httpx
import stamina

from veriml.core.errors import FormatError

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_RETRY_TIMEOUT",
    "RETRIED_ERRORS",
    "STREAM",
    "AsyncRetryTransport",
    "Retries",
    "RetryTransport",
    "parse_retry_after",
    "replayable",
]

DEFAULT_RETRIES: Final = 3
DEFAULT_RETRY_TIMEOUT: Final = 30.0
STREAM: Final = "veriml.stream"
"""Request extension: the caller reads this response as a stream (``build_request(...,
extensions={STREAM: True})``), so it is retried only until its headers arrive."""
IDEMPOTENCY_KEY: Final = "Idempotency-Key"
RETRIED_ERRORS: Final = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
"""Connection failures worth another attempt. Read and write timeouts are not among them: the
server may still be working on the request, and asking again would only add to its load."""

_DELAY_SECONDS = re.compile(r"[0-9]{1,10}")
_log = logging.getLogger(__name__)
# stamina warns of every retry on its logger. An application that configures logging sees it;
# one that does not (the CLI) must not get it on stderr through logging's last resort.
logging.getLogger("stamina").addHandler(logging.NullHandler())


@dataclass(frozen=True, slots=True, kw_only=True)
class Retries:
    """How a client retries: at most ``retries`` retries of one call, none decided on once
    ``timeout`` seconds have passed (0 retries: never), waiting ``wait_initial`` doubling up to
    ``wait_max`` seconds plus up to ``wait_jitter`` of random jitter between them, unless the
    server says how long (``Retry-After``)."""

    retries: int = DEFAULT_RETRIES
    timeout: float = DEFAULT_RETRY_TIMEOUT
    wait_initial: float = 0.25
    wait_max: float = 5.0
    wait_jitter: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int):
            raise FormatError("retries is a number of retries (0: none)", got=repr(self.retries))
        if not 0 <= self.retries <= 100:
            raise FormatError("retries must be between 0 and 100", got=self.retries)
        times = {
            "retry_timeout": self.timeout,
            "wait_initial": self.wait_initial,
            "wait_max": self.wait_max,
        }
        if not all(t > 0 for t in times.values()) or self.wait_jitter < 0:
            raise FormatError("retry times must be positive", **times, wait_jitter=self.wait_jitter)

    @property
    def enabled(self) -> bool:
        return self.retries > 0

    def caller(self) -> stamina.RetryingCaller:
        """stamina's retrying caller with these bounds (the ``on`` hook is given per call)."""
        return stamina.RetryingCaller(
            attempts=self.retries + 1,
            timeout=self.timeout,
            wait_initial=self.wait_initial,
            wait_max=self.wait_max,
            wait_jitter=self.wait_jitter,
        )

    def async_caller(self) -> stamina.AsyncRetryingCaller:
        return stamina.AsyncRetryingCaller(
            attempts=self.retries + 1,
            timeout=self.timeout,
            wait_initial=self.wait_initial,
            wait_max=self.wait_max,
            wait_jitter=self.wait_jitter,
        )


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """The seconds a ``Retry-After`` value asks to wait from ``now`` (a Unix time): its
    delay-seconds, or the time until its HTTP-date (RFC 9110 §10.2.3; a date in the past is 0).
    ``None`` when there is none or it cannot be read."""
    if value is None:
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": an HTTP-date is in GMT all the same
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - now)


def replayable(request: httpx.Request) -> bool:
    """Whether sending ``request`` again cannot do anything twice, and its body can be sent
    again (bytes, not a one-pass generator)."""
    idempotent = request.method in ("GET", "HEAD") or (
        request.method == "POST" and IDEMPOTENCY_KEY in request.headers
    )
    return idempotent and isinstance(request.stream, httpx.ByteStream)


class _Again(Exception):
    """An answer worth asking again for: 503, or 429 with ``Retry-After``."""

    def __init__(self, response: httpx.Response, retry_after: float | None) -> None:
        super().__init__(f"{response.status_code} {response.reason_phrase}")
        self.response = response
        self.retry_after = retry_after


def _again(response: httpx.Response) -> _Again | None:
    """The retry an answer asks for, if any (its body already read)."""
    if response.status_code not in (429, 503):
        return None
    wait = parse_retry_after(response.headers.get("Retry-After"), now=time.time())
    if response.status_code == 429 and wait is None:
        return None  # rate limited, and not told for how long: the caller's to pace
    return _Again(response, wait)


def _needs_body(request: httpx.Request, response: httpx.Response) -> bool:
    """Read within the retries: a whole answer (a body cut short is retried with it), or one
    about to be dropped for another attempt; a stream's body is the caller's."""
    return not request.extensions.get(STREAM) or response.status_code in (429, 503)


def _rebuilt(request: httpx.Request, response: httpx.Response, raw: bytes) -> httpx.Response:
    """A response with its (still encoded) body in memory, as the transport's answer."""
    extensions = {k: v for k, v in response.extensions.items() if k != "network_stream"}
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        content=raw,
        request=request,
        extensions=extensions,
    )


class _Decider:
    """stamina's ``on`` hook for one call: whether (and, for ``Retry-After``, how long) to
    wait before the next attempt. It sees every failed attempt, the last one too."""

    def __init__(self, request: httpx.Request, retries: Retries) -> None:
        self.request = request
        self.started = time.monotonic()
        self.deadline = self.started + retries.timeout
        self.failed = 0

    def __call__(self, exc: BaseException) -> bool | float:
        self.failed += 1
        if isinstance(exc, _Again):
            wait = exc.retry_after
            if wait is not None and wait > self.deadline - time.monotonic():
                self._note(exc, f"Retry-After {wait:.0f} s is beyond the time left to retry")
                return False
            self._note(exc, "retrying" if wait is None else f"retrying after {wait:.0f} s")
            return True if wait is None else wait
        if isinstance(exc, RETRIED_ERRORS):
            self._note(exc, "retrying")
            return True
        return False

    def _note(self, exc: BaseException, what: str) -> None:
        reason = str(exc)[:200] or type(exc).__name__
        method, url = self.request.method, self.request.url
        _log.info("%s %s: attempt %d failed (%s); %s", method, url, self.failed, reason, what)

    def exhausted(self, exc: httpx.TransportError) -> httpx.TransportError:
        """The last connection failure, saying how often and for how long it was tried."""
        if self.failed <= 1:
            return exc
        spent = time.monotonic() - self.started
        message = f"{exc} (after {self.failed} attempts in {spent:.1f} s)"
        return type(exc)(message, request=self.request)


class RetryTransport(httpx.BaseTransport):
    """An httpx transport that retries what :func:`replayable` allows, as :class:`Retries`
    says, over ``inner`` (the module docstring says when)."""

    def __init__(self, inner: httpx.BaseTransport, retries: Retries) -> None:
        self.inner = inner
        self.retries = retries
        self._caller = retries.caller()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.retries.enabled or not replayable(request):
            return self.inner.handle_request(request)
        decide = _Decider(request, self.retries)
        try:
            return self._caller(decide, self._once, request)
        except _Again as again:
            return again.response  # out of attempts or time: the server's own answer
        except httpx.TransportError as exc:
            raise decide.exhausted(exc) from exc

    def _once(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if _needs_body(request, response):
            try:
                raw = b"".join(response.iter_raw())
            finally:
                response.close()
            response = _rebuilt(request, response, raw)
        again = _again(response)
        if again is not None:
            raise again
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncRetryTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`RetryTransport`."""

    def __init__(self, inner: httpx.AsyncBaseTransport, retries: Retries) -> None:
        self.inner = inner
        self.retries = retries
        self._caller = retries.async_caller()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.retries.enabled or not replayable(request):
            return await self.inner.handle_async_request(request)
        decide = _Decider(request, self.retries)
        try:
            return await self._caller(decide, self._once, request)
        except _Again as again:
            return again.response
        except httpx.TransportError as exc:
            raise decide.exhausted(exc) from exc

    async def _once(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if _needs_body(request, response):
            try:
                raw = b"".join([chunk async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()
            response = _rebuilt(request, response, raw)
        again = _again(response)
        if again is not None:
            raise again
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()
