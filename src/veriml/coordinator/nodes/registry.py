"""The node registry: signed registrations, signed heartbeats, liveness.

``POST /v1/nodes`` checks the descriptor (docs/network.md, "Node descriptor") in order:

0. the body is at most :data:`MAX_MESSAGE_BODY` bytes and the descriptor's payload at most
   ``MAX_DESCRIPTOR_BYTES``, every member within its bound and the endpoint a plain http(s)
   origin (413, 400), before its signature is checked;
1. the DSSE envelope is signed by the key it carries, ``node_id`` is that key's id, and the
   operator binding it carries is signed by the operator it names, for this node (403);
2. ``issued_at`` is within the freshness window of the coordinator's clock (403);
3. the operator has registrations left in its rate limit (429: with the client address's
   budget, counted before the body is read, this bounds the entries anyone can append);
4. the nonce was never used before (409: a replay);
5. the node is not bound to another operator already (409: a node key stays with its first
   operator, so an operator cannot borrow another's nodes or shed a conviction);

then appends ONE ``NodeEntry`` (the node's own signed descriptor, so anyone can re-check it
from the log) through the ledger book, which checks it against the folded ledger, and inserts
or replaces the node's row with the entry's index. A node that registers again (a restart, a
new endpoint) gets a new entry and its row is updated.

``POST /v1/nodes/{id}/heartbeat`` takes a heartbeat signed by the registered key (403 for
any other key, 404 for an unknown node) and newer than the last one (409), within the node's
heartbeat rate limit (429).
"""

from __future__ import annotations

import datetime as dt

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from veriml.coordinator.db.nodes import NodeRepository, NonceRepository
from veriml.coordinator.ledger.service import LedgerBook
from veriml.coordinator.ratelimit import RateLimits
from veriml.coordinator.settings import Settings
from veriml.core.canonical import parse_json_object
from veriml.core.dsse import Envelope
from veriml.core.errors import (
    Check,
    ConflictError,
    LimitExceededError,
    NotFoundError,
    SignatureError,
    VerificationError,
)
from veriml.core.keys import VerifyingKey
from veriml.ledger.entries import NodeEntry
from veriml.protocol.messages import Heartbeat, NodeDescriptor, parse_time
from veriml.tlog.log import Log

__all__ = ["MAX_MESSAGE_BODY", "RegistryService", "parse_envelope", "read_body"]

# A descriptor or heartbeat envelope: a payload of at most 64 KiB (a descriptor's, 16 KiB),
# base64, plus signatures.
MAX_MESSAGE_BODY = 96 * 1024
# How far in the future a heartbeat's issued_at may be (clock skew).
HEARTBEAT_SKEW = dt.timedelta(seconds=60)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with :class:`LimitExceededError` (413) past ``limit`` bytes:
    from ``Content-Length`` before reading, and while streaming."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise LimitExceededError("request body is too large", limit=limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise LimitExceededError("request body is too large", limit=limit)
    return bytes(body)


def parse_envelope(body: bytes) -> Envelope:
    """A DSSE envelope from a request body; one without signatures is refused as unsigned
    (403), not as malformed."""
    obj = parse_json_object(body, what="DSSE envelope")
    if obj.get("signatures") in ([], None):
        raise SignatureError("the message is unsigned", check=Check.SIGNATURE)
    return Envelope.from_json(obj)


class RegistryService:
    """Registers nodes and records their heartbeats (steps in the module docstring)."""

    def __init__(
        self,
        *,
        settings: Settings,
        nodes: NodeRepository,
        nonces: NonceRepository,
        log: Log,
        book: LedgerBook | None = None,
        limits: RateLimits | None = None,
    ) -> None:
        self.settings = settings
        self.nodes = nodes
        self.nonces = nonces
        self.log = log
        self.book = book
        self.limits = limits
        """Registrations per operator and heartbeats per node, counted once signed."""

    def check(self, envelope: Envelope, *, now: dt.datetime | None = None) -> NodeDescriptor:
        """Steps 0 to 5 (blocking); the descriptor."""
        descriptor = NodeDescriptor.open(  # 0, 1, 2
            envelope, now=now, max_age=dt.timedelta(seconds=self.settings.descriptor_max_age)
        )
        if self.limits is not None:  # 3
            self.limits.hit("register", "operator", descriptor.operator)
        self.nonces.use(descriptor.nonce)  # 4
        if self.book is not None:  # 5
            bound = self.book.state().operator_of(descriptor.node_id)
            if bound is not None and bound != descriptor.operator:
                raise ConflictError(
                    "this node is bound to another operator; a new operator needs a new node key",
                    node=descriptor.node_id,
                    operator=bound,
                )
        return descriptor

    def register(self, envelope: Envelope, *, now: dt.datetime | None = None) -> tuple[str, int]:
        """Check, log and record a node descriptor (blocking); ``(node_id, log_index)``."""
        descriptor = self.check(envelope, now=now)
        index = self.log.add(NodeEntry(envelope).to_bytes())
        self.nodes.register(descriptor, envelope.to_json(), index)
        return descriptor.node_id, index

    async def register_async(self, envelope: Envelope) -> tuple[str, int]:
        """:meth:`register`, logging through the ledger book (checked against the fold)."""
        descriptor = await run_in_threadpool(self.check, envelope)
        if self.book is None:
            index = await run_in_threadpool(self.log.add, NodeEntry(envelope).to_bytes())
        else:
            index = (await self.book.append([NodeEntry(envelope)]))[0]
        await run_in_threadpool(self.nodes.register, descriptor, envelope.to_json(), index)
        return descriptor.node_id, index

    def heartbeat(
        self, node_id: str, envelope: Envelope, *, now: dt.datetime | None = None
    ) -> None:
        """Check a heartbeat against the node's registered key and record its load."""
        row = self.nodes.get(node_id)
        if row is None:
            raise NotFoundError("no such node; register first", node=node_id)
        heartbeat = Heartbeat.open(envelope, VerifyingKey.from_pem(row.public_key.encode()))
        if heartbeat.node_id != node_id:
            raise VerificationError(
                "heartbeat names another node", check=Check.HEARTBEAT, node=heartbeat.node_id
            )
        if self.limits is not None:
            self.limits.hit("heartbeat", "node", node_id)
        issued = parse_time(heartbeat.issued_at, what="issued_at")
        if issued > (now or dt.datetime.now(dt.UTC)) + HEARTBEAT_SKEW:
            raise VerificationError(
                "heartbeat is from the future", check=Check.FRESHNESS, issued_at=heartbeat.issued_at
            )
        self.nodes.heartbeat(
            node_id,
            issued_at=issued.timestamp(),
            active=heartbeat.active,
            queued=heartbeat.queued,
            capacity=heartbeat.capacity,
            cached=heartbeat.cached,
        )
