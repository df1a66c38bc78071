"""Rate limits on every mutating and expensive route (docs/network.md, "Rate limits").

Each route family has a limit in the settings (``rate_limit_<family>``, "20/minute;120/hour":
every window must have room), and a request is counted against two budgets of its family:

- its **client address**: an IPv4 address or an IPv6 /64 (what one host gets), counted before
  the route runs. Loopback clients and clients without an IP address (a Unix socket, an
  in-process test client) are this machine's own processes and get ``rate_limit_local_factor``
  times the budget; networks in ``rate_limit_exempt`` get none at all.
- its **signing key**, never taken on its word. A registration's operator and a heartbeat's
  node are counted by the registry once their signatures verified. A signed request's key id
  (RFC 9421 ``keyid``: publications, inferences, completions, dispute moves) and a ledger
  request's account are read before the route runs, only to *test* their budget, and counted
  once the route answered 2xx, which it does only for a signature that verified: naming
  somebody else's key spends nothing of theirs.

Past a budget the answer is 429 problem JSON with ``Retry-After`` (whole seconds until the
window has room again), before the route reads a byte of the body; the SDK waits that long
and retries what is safe to retry.

Counters are the ``limits`` library's sliding-window counters (two counters per budget, O(1)
per request). In memory (the default) each replica counts alone, so N replicas behind a
balancer allow up to N times a budget; a ``redis://``, ``memcached://`` or ``mongodb://``
storage URL shares them, and is called from worker threads. When that storage cannot be
reached, requests are let through (logged), so the limiter never takes the coordinator down.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import time
from collections.abc import Callable
from functools import lru_cache, partial
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, Final, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from limits import RateLimitItem
from limits.errors import ConfigurationError, StorageError
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from veriml.coordinator.problems import problem
from veriml.coordinator.settings import Settings
from veriml.core.errors import Error, FormatError, KeyFileError
from veriml.core.keys import VerifyingKey
from veriml.protocol.openapi import problems

__all__ = [
    "RateLimitMiddleware",
    "RateLimitedError",
    "RateLimits",
    "family_of",
    "install_rate_limits",
]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

# (family, method, path): the routes each family covers (the path as a full match).
_ROUTES: Final[tuple[tuple[str, str, re.Pattern[str]], ...]] = (
    ("register", "POST", re.compile(r"/v1/nodes")),
    ("heartbeat", "POST", re.compile(r"/v1/nodes/[^/]+/heartbeat")),
    ("publish", "POST", re.compile(r"/v1/models")),
    ("inference", "POST", re.compile(r"/v1/(?:inferences|(?:chat/)?completions|embeddings)")),
    ("dispute", "POST", re.compile(r"/v1/disputes(?:/[^/]+/[a-z]+)?")),
    ("ledger", "POST", re.compile(r"/v1/ledger/[a-z]+")),
    # Folds the log (from its start when ?size= is given): as costly as a write.
    ("ledger", "GET", re.compile(r"/v1/ledger/state")),
)
# Families whose routes check an RFC 9421 signature whenever one is present.
_SIGNED_FAMILIES: Final = frozenset({"publish", "inference", "dispute"})
_KEYID = re.compile(r'keyid="(sha256:[0-9a-f]{64})"')
_MAX_PEEK = 64 * 1024  # a ledger request is a few KiB; a bigger body is counted by address
_LOCAL = "local"
_TOO_MANY: Final = problems(
    {429: 'too many requests from this address or key (docs/network.md, "Rate limits")'}
)["429"] | {"headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}}}
_WARN_EVERY = 60.0


class RateLimitedError(Error):
    """A client address, key, operator or node asked more often than its route family allows
    (HTTP 429 with ``Retry-After``)."""

    exit_code = 1

    @property
    def retry_after(self) -> int:
        value = self.evidence.get("retry_after", 1)
        return value if isinstance(value, int) else 1


def family_of(method: str, path: str) -> str | None:
    """The rate-limited family of a request, or None when its route has no limit."""
    for family, wanted, pattern in _ROUTES:
        if method == wanted and pattern.fullmatch(path):
            return family
    return None


class RateLimits:
    """The budgets of one coordinator (see the module docstring), over one ``limits``
    storage. Every method is blocking and thread-safe; :meth:`call` runs one from a coroutine
    without blocking the event loop on a networked storage."""

    def __init__(
        self,
        *,
        families: dict[str, tuple[RateLimitItem, ...]],
        storage: Storage,
        local_factor: int = 1,
        exempt: tuple[IPv4Network | IPv6Network, ...] = (),
    ) -> None:
        self._families = {f: items for f, items in families.items() if items}
        self._local = {
            f: tuple(type(i)(i.amount * local_factor, i.multiples) for i in items)
            for f, items in self._families.items()
        }
        self._storage = storage
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._exempt = exempt
        self._inline = isinstance(storage, MemoryStorage)
        self._warned = 0.0
        # Parsing an address costs more than counting it; clients come back.
        self._bucket = lru_cache(maxsize=4096)(self._bucket_of)

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        url = settings.rate_limit_storage
        try:
            # wrap_exceptions: a driver's errors arrive as limits' StorageError.
            storage = storage_from_string(url, wrap_exceptions=True)
            if not isinstance(storage, Storage):  # Settings refuse async+ schemes
                raise ConfigurationError(f"not a synchronous storage: {url[:40]}")
        except ConfigurationError as exc:  # an unknown scheme, or its driver not installed
            raise FormatError(
                "the rate limit storage cannot be opened",
                storage=url.partition("://")[0],
                reason=str(exc)[:200],
            ) from exc
        return cls(
            families=settings.rate_limits(),
            storage=storage,
            local_factor=settings.rate_limit_local_factor,
            exempt=settings.rate_limit_networks(),
        )

    def limits(self, family: str) -> tuple[RateLimitItem, ...]:
        """``family``'s limits (empty: not limited)."""
        return self._families.get(family, ())

    def address(self, client: tuple[str, int] | list[Any] | None) -> tuple[str, bool] | None:
        """The budget a client address counts against and whether it is local (loopback or
        not an IP address); None for an exempt address."""
        return self._bucket(str(client[0]) if client else "")

    def _bucket_of(self, host: str) -> tuple[str, bool] | None:
        try:
            ip: IPv4Address | IPv6Address = ip_address(host)
        except ValueError:
            return _LOCAL, True
        if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self._exempt):
            return None
        if isinstance(ip, IPv6Address):
            return f"{IPv6Address(int(ip) >> 64 << 64)}/64", ip.is_loopback
        return str(ip), ip.is_loopback

    def hit(self, family: str, scope: str, who: str, *, local: bool = False) -> None:
        """Count one request of ``family`` against ``who``'s budget (``scope``: what ``who``
        is: an address, a key, an operator, a node); :class:`RateLimitedError` when it has no
        room (and nothing is counted)."""
        items = (self._local if local else self._families).get(family, ())
        # Every window must have room before any is counted (one window's hit checks itself).
        for item in items if len(items) > 1 else ():
            if not self._guarded(partial(self._limiter.test, item, family, scope, who)):
                self._refuse(item, family, scope, who)
        for item in items:
            if not self._guarded(partial(self._limiter.hit, item, family, scope, who)):
                self._refuse(item, family, scope, who)

    def test(self, family: str, scope: str, who: str) -> None:
        """:class:`RateLimitedError` when ``who`` has no room left in ``family``; counts nothing."""
        for item in self._families.get(family, ()):
            if not self._guarded(partial(self._limiter.test, item, family, scope, who)):
                self._refuse(item, family, scope, who)

    def count(self, family: str, scope: str, who: str) -> None:
        """Count one request against ``who`` without refusing it (it was already answered)."""
        for item in self._families.get(family, ()):
            self._guarded(partial(self._limiter.hit, item, family, scope, who))

    async def call(self, method: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``method(*args, **kwargs)``, in a worker thread unless the counters are in memory."""
        if self._inline:
            return method(*args, **kwargs)
        return await run_in_threadpool(method, *args, **kwargs)

    def _guarded(self, action: Callable[[], bool]) -> bool:
        try:
            return action()
        except StorageError as exc:  # a storage that cannot be reached: let the request through
            now = time.monotonic()
            if now - self._warned > _WARN_EVERY:
                self._warned = now
                _log.warning("rate limits not applied (storage: %s)", str(exc)[:200])
            return True

    def _refuse(self, item: RateLimitItem, family: str, scope: str, who: str) -> None:
        try:
            reset = self._limiter.get_window_stats(item, family, scope, who).reset_time
        except StorageError:  # storage gone since the test: ask for a full window
            reset = time.time() + item.get_expiry()
        retry = max(1, math.ceil(reset - time.time()))
        raise RateLimitedError(
            f"too many {family} requests from this {scope}: at most {item}; retry in {retry} s",
            family=family,
            scope=scope,
            limit=str(item),
            retry_after=retry,
        )


def rate_limited_response(exc: RateLimitedError) -> JSONResponse:
    """The 429 problem for ``exc``, with ``Retry-After``."""
    members = dict(exc.evidence)
    members["error"] = type(exc).__name__
    return problem(
        429,
        exc.message,
        title="Too Many Requests",
        headers={"Retry-After": str(exc.retry_after)},
        **members,
    )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _signer(scope: Scope) -> str | None:
    """The key id a signed request claims (RFC 9421 ``keyid``; not verified here)."""
    text = _header(scope, b"signature-input")
    if text is None or len(text) > 4096:
        return None
    match = _KEYID.search(text)
    return match.group(1) if match else None


def _account(body: bytes) -> str | None:
    """The account a ledger request's DSSE payload names by its public key (not verified
    here; the route checks the signature)."""
    try:
        envelope = json.loads(body)
        payload = json.loads(base64.b64decode(envelope["payload"], validate=True))
        pem = payload["public_key"]
        return VerifyingKey.from_pem(pem.encode()).key_id if isinstance(pem, str) else None
    except (ValueError, TypeError, KeyError, binascii.Error, KeyFileError, RecursionError):
        return None


class RateLimitMiddleware:
    """ASGI middleware: each rate-limited request's address budget is counted and its key's
    tested before the route runs (429 otherwise); the key's is counted on a 2xx answer."""

    def __init__(self, app: ASGIApp, *, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        family = family_of(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if family is None or not self.limits.limits(family):
            await self.app(scope, receive, send)
            return
        limits = self.limits
        key: str | None = None
        try:
            address = limits.address(scope.get("client"))
            if address is not None:
                who, local = address
                await limits.call(limits.hit, family, "address", who, local=local)
            if family in _SIGNED_FAMILIES:
                key = _signer(scope)
            elif family == "ledger" and scope["method"] == "POST":
                receive, body = await _peek(receive)
                key = _account(body) if body is not None else None
            if key is not None:
                await limits.call(limits.test, family, "key", key)
        except RateLimitedError as exc:
            await rate_limited_response(exc)(scope, receive, send)
            return
        if key is None:
            await self.app(scope, receive, send)
            return
        signer = key

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                await limits.call(limits.count, family, "key", signer)
            await send(message)

        await self.app(scope, receive, counted)


async def _peek(receive: Receive) -> tuple[Receive, bytes | None]:
    """Read the start of a body (up to :data:`_MAX_PEEK` bytes) and a ``receive`` that hands
    the app every message again; the body, or None when it is longer."""
    messages: list[Message] = []
    size = 0
    more = True
    while more and size <= _MAX_PEEK:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        more = bool(message.get("more_body", False))
    whole = not more and size <= _MAX_PEEK
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")

    async def replay() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return replay, body if whole else None


def install_rate_limits(app: FastAPI, limits: RateLimits) -> None:
    """Wire ``limits`` into ``app``: the middleware, the 429 problem for :class:`RateLimitedError`
    raised by services (the registry), and 429 in the OpenAPI document of every limited
    operation. Add it before the other middleware, so requests it refuses are still metered."""

    async def _limited(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RateLimitedError)
        return rate_limited_response(exc)

    app.add_exception_handler(RateLimitedError, _limited)
    app.add_middleware(RateLimitMiddleware, limits=limits)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            for path, operations in document.get("paths", {}).items():
                for method, operation in operations.items():
                    family = family_of(method.upper(), path)
                    if family is not None and limits.limits(family):
                        operation.setdefault("responses", {}).setdefault("429", _TOO_MANY)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
