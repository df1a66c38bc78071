"""The node's side of the node <-> coordinator protocol: key, registration, heartbeats.

- The coordinator's public key comes from the configuration (``--coordinator-key``): a node
  never takes it from whoever answers at the coordinator's URL. Only ``veriml node serve
  --trust-coordinator-on-first-use`` calls :func:`learn_coordinator_key`, which fetches it
  from ``GET /v1/info`` once, logs a warning with its key id and pins it in the node's home;
  from then on a coordinator presenting another key is refused, as SSH refuses a host key
  that changed.
- Registration (``POST /v1/nodes``) sends a signed :class:`NodeDescriptor` with a fresh nonce,
  the runtime fingerprint and ``models: ["*"]`` (any hub model is pulled on demand). It is
  retried until the coordinator accepts it, waiting as :func:`jittered_waits` says (0.25 s
  growing to at most 30 s, each wait drawn at random; at least the ``Retry-After`` of a 429),
  as is the first-use ``GET /v1/info``.
- Heartbeats (``POST /v1/nodes/{node_id}/heartbeat``) are signed :class:`Heartbeat` messages
  carrying the node's load and cached models, sent every ``heartbeat_interval`` seconds (each
  interval shortened by up to a fifth at random). A 404 means the coordinator no longer knows
  the node (a fresh database, say): the node registers again.

The randomness is there for the coordinator's sake: after it restarts, every node finds it gone
at once, and nodes that waited alike would all come back at the same instants.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from veriml.core.dsse import Envelope
from veriml.core.errors import (
    Check,
    Error,
    FormatError,
    KeyFileError,
    NodeUnavailableError,
    VerificationError,
)
from veriml.core.keys import SigningKey, VerifyingKey
from veriml.core.timestamps import utc_now
from veriml.protocol.messages import Heartbeat, NodeDescriptor
from veriml.runtime import Profile, platform_fingerprint, runtime_fingerprint

__all__ = ["CoordinatorLink", "jittered_waits", "learn_coordinator_key"]

log = logging.getLogger("veriml.node")

MAX_INFO_BYTES = 64 * 1024
BACKOFF_START = 0.25
BACKOFF_MAX = 30.0
HEARTBEAT_JITTER = 0.2
"""A heartbeat comes up to this fraction of an interval early, never late (the coordinator
calls a node live for three intervals)."""


def jittered_waits(
    start: float = BACKOFF_START, cap: float = BACKOFF_MAX, *, rng: random.Random
) -> Iterator[float]:
    """Seconds to wait before each retry: "decorrelated jitter" (Brooker, "Exponential Backoff
    And Jitter", AWS Architecture Blog, 2015), each wait drawn uniformly between ``start`` and
    three times the one before, at most ``cap``. Every wait is within ``[start, cap]``, they
    grow about twofold on average, and nodes that start retrying together drift apart at once
    instead of hitting the coordinator in lockstep."""
    if not 0 < start <= cap:
        raise FormatError("backoff waits need 0 < start <= cap", start=start, cap=cap)
    wait = start
    while True:
        wait = min(cap, rng.uniform(start, wait * 3))
        yield wait


async def _fetch_coordinator_key(url: str, client: httpx.AsyncClient) -> VerifyingKey:
    """The key ``url``'s ``GET /v1/info`` presents (an Ed25519 key), or raise."""
    response = await client.get(f"{url}/v1/info")
    if response.status_code != 200 or len(response.content) > MAX_INFO_BYTES:
        raise NodeUnavailableError(
            "coordinator /v1/info did not answer", status=response.status_code
        )
    info = response.json()
    pem = info.get("coordinator_key") if isinstance(info, dict) else None
    if not isinstance(pem, str):
        raise FormatError("coordinator /v1/info has no coordinator_key")
    key = VerifyingKey.from_pem(pem.encode())
    if key.kind != "ed25519":
        raise KeyFileError("the coordinator key must be Ed25519", got=key.kind)
    return key


async def learn_coordinator_key(
    url: str,
    pin: Path,
    *,
    client: httpx.AsyncClient,
    rng: random.Random | None = None,
) -> VerifyingKey:
    """Trust on first use: the coordinator key pinned at ``pin``, or, the first time, the one
    ``url``'s ``GET /v1/info`` presents (asked again until it answers), logged with a warning
    and pinned there.

    With a pin, the coordinator is asked once: a different key is a :class:`VerificationError`
    (``check="coordinator-key"``) and the node must not start; no answer leaves the pin in
    force (the node then refuses every job another key signs). Delete ``pin`` to trust a
    coordinator whose key really changed.
    """
    if pin.exists():
        pinned = VerifyingKey.from_pem(pin.read_bytes())
        try:
            presented = await _fetch_coordinator_key(url, client)
        except (httpx.HTTPError, ValueError, Error) as exc:
            log.warning(
                "coordinator key %s pinned at %s; %s/v1/info cannot confirm it now: %s",
                pinned.key_id,
                pin,
                url,
                _reason(exc),
            )
            return pinned
        if presented.key_id != pinned.key_id:
            raise VerificationError(
                "the coordinator presents another key than the one this node trusted on first "
                "use; if it really changed, delete the pin and start again",
                check=Check.COORDINATOR_KEY,
                pinned=pinned.key_id,
                presented=presented.key_id,
                pin=str(pin),
            )
        return pinned
    waits = jittered_waits(BACKOFF_START, BACKOFF_MAX, rng=rng or random.Random())  # noqa: S311
    while True:
        try:
            key = await _fetch_coordinator_key(url, client)
            break
        except (httpx.HTTPError, ValueError, Error) as exc:
            log.warning("cannot fetch the coordinator key yet: %s", _reason(exc))
        await asyncio.sleep(next(waits))
    log.warning(
        "UNSAFE: trusting coordinator key %s on first use (from %s/v1/info) and pinning it at "
        "%s; pass --coordinator-key to pin it from a source you trust",
        key.key_id,
        url,
        pin,
    )
    pin.parent.mkdir(parents=True, exist_ok=True)
    partial = pin.with_name(pin.name + ".partial")
    partial.write_bytes(key.to_pem())
    partial.replace(pin)
    return key


class CoordinatorLink:
    """Talks to one coordinator on behalf of one node key."""

    def __init__(
        self,
        *,
        url: str,
        key: SigningKey,
        binding: Envelope,
        endpoint: str,
        client: httpx.AsyncClient,
        status: Callable[[], tuple[dict[str, int], list[str]]],
        heartbeat_interval: float,
        profile: Profile | None = None,
        engines: tuple[str, ...] = ("onnxruntime",),
        models: tuple[str, ...] = ("*",),
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.key = key
        self.binding = binding
        """The operator's signed binding of this node (carried in every descriptor)."""
        self.endpoint = endpoint
        self.client = client
        self.status = status
        """Returns ``(load, cached digests)`` for heartbeats."""
        self.heartbeat_interval = heartbeat_interval
        self.profile = profile if profile is not None else Profile()
        self.engines = engines
        """What the descriptor lists as runnable (``llama.cpp`` for GGUF models)."""
        self.models = models
        # Jitter, not secrets; a seeded one makes the waits reproducible in tests.
        self.rng = rng if rng is not None else random.Random()  # noqa: S311
        self.registered = asyncio.Event()
        self.registrations = 0
        self.heartbeats = 0
        self.descriptor: dict[str, Any] | None = None
        """The last descriptor envelope the coordinator accepted (JSON)."""
        self.log_index: int | None = None

    def build_descriptor(self) -> dict[str, Any]:
        """A freshly signed descriptor envelope (new nonce, now as ``issued_at``)."""
        descriptor = NodeDescriptor(
            public_key=self.key.public.to_pem().decode(),
            operator_binding=self.binding,
            endpoint=self.endpoint,
            issued_at=utc_now(),
            nonce=secrets.token_hex(16),
            engines=self.engines,
            models=self.models,
            hardware=platform_fingerprint(),
            runtime=runtime_fingerprint(self.profile),
        )
        return descriptor.sign(self.key).to_json()

    async def fetch_key(self) -> VerifyingKey:
        """Refused: a node believes no coordinator key that whoever answers at its URL
        presents. Its configuration pins the key (``NodeConfig`` requires one), or
        :func:`learn_coordinator_key` pins it on first use before the node starts."""
        raise KeyFileError(
            "this node has no pinned coordinator key: pass --coordinator-key, or start it "
            "with --trust-coordinator-on-first-use",
            url=self.url,
        )

    async def register_once(self) -> int:
        """Register now; the log index of the registration, or raise."""
        envelope = self.build_descriptor()
        try:
            response = await self.client.post(f"{self.url}/v1/nodes", json=envelope)
        except httpx.HTTPError as exc:
            raise NodeUnavailableError(
                "coordinator did not answer the registration", url=self.url, reason=_reason(exc)
            ) from exc
        if response.status_code not in (200, 201):
            retry = response.headers.get("retry-after", "")
            raise NodeUnavailableError(
                "coordinator refused the registration",
                url=self.url,
                status=response.status_code,
                detail=response.text[:300],
                retry_after=min(int(retry), 3600) if retry.isdigit() else 0,
            )
        body = response.json()
        index = body.get("log_index") if isinstance(body, dict) else None
        self.descriptor = envelope
        self.log_index = index if isinstance(index, int) else None
        self.registrations += 1
        self.registered.set()
        log.info("registered with %s as %s (log index %s)", self.url, self.key.key_id, index)
        return self.log_index if self.log_index is not None else -1

    async def register(self) -> None:
        """Register, retrying after jittered, growing waits until the coordinator accepts."""
        waits = jittered_waits(BACKOFF_START, BACKOFF_MAX, rng=self.rng)
        while True:
            try:
                await self.register_once()
                return
            except (NodeUnavailableError, ValueError) as exc:
                # A rate-limited registration waits as long as the coordinator asks.
                asked = exc.evidence.get("retry_after", 0) if isinstance(exc, Error) else 0
                delay = max(next(waits), float(asked))
                log.warning("registration failed, retrying in %.1f s: %s", delay, _reason(exc))
                await asyncio.sleep(delay)

    async def heartbeat_once(self) -> int:
        """Send one heartbeat; the HTTP status the coordinator answered."""
        load, cached = self.status()
        heartbeat = Heartbeat(
            node_id=self.key.key_id,
            issued_at=utc_now(),
            active=load["active"],
            queued=load["queued"],
            capacity=load["capacity"],
            cached=tuple(cached),
        )
        response = await self.client.post(
            f"{self.url}/v1/nodes/{self.key.key_id}/heartbeat",
            json=heartbeat.sign(self.key).to_json(),
        )
        if response.status_code < 300:
            self.heartbeats += 1
        return response.status_code

    def heartbeat_wait(self) -> float:
        """Seconds until the next heartbeat: the interval, up to :data:`HEARTBEAT_JITTER` of
        it early."""
        return self.heartbeat_interval * (1 - HEARTBEAT_JITTER * self.rng.random())

    async def run(self) -> None:
        """Register, then heartbeat forever; re-register whenever the coordinator forgets us."""
        await self.register()
        while True:
            await asyncio.sleep(self.heartbeat_wait())
            try:
                status = await self.heartbeat_once()
            except httpx.HTTPError as exc:
                log.warning("heartbeat failed: %s", _reason(exc))
                continue
            if status == 404:
                log.warning("coordinator does not know this node any more; registering again")
                self.registered.clear()
                await self.register()
            elif status >= 300:
                log.warning("coordinator answered %d to a heartbeat", status)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Error):
        return exc.diagnostics()
    return f"{type(exc).__name__}: {exc}"[:300]
