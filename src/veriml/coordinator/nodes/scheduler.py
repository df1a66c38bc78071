"""Choosing nodes for a request, and retrying slots on other nodes when one fails.

The selection is pure (no I/O, no clock of its own): given the registered nodes, the model, the
time, what has been tried and the request's **draw secret**, :func:`pick` returns the nodes to
use. Its rules (docs/network.md, "Scheduling"):

1. only **live** nodes (a heartbeat or registration within ``live_within`` seconds) that
   **serve** the model (``"*"`` or its digest in the descriptor's ``models``); the candidates
   the caller passes have already been filtered by the ledger rules (an operator with the
   minimum stake, a reputation at least the minimum, docs/ledger.md "Rules");
2. never a node already **tried** for this request, never a second node of an **operator**
   already answering (a quorum needs distinct operators);
3. nodes with a **negative reputation** (they lost a dispute) last;
4. otherwise a **stake-weighted random order of operators** (weighted sampling without
   replacement, Efraimidis and Spirakis 2006: each operator's key is ``ln(u) / stake`` with
   ``u`` uniform from ``SHA-256(tag || r || operator)``), and within an operator a uniform
   order of its nodes. ``r`` is the request's draw secret (:mod:`veriml.protocol.draw`),
   which the coordinator cannot choose or draw again and which neither the client nor a node
   can predict. Nothing a node reports (its load, its cache) and nothing a client sends (its
   request id) orders the draw, so neither can steer it; an operator's chance of being
   picked is its share of the stake, so splitting a stake across many operators gains
   nothing, and no eligible operator starves.

:func:`gather` is the retry loop: one slot per answer the policy needs, each slot trying up to
``attempts_per_slot`` nodes, all slots concurrently, within one overall deadline.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from veriml.core.digest import Digest
from veriml.core.errors import Error, FormatError, NodeUnavailableError, VerificationError
from veriml.core.keys import VerifyingKey

if TYPE_CHECKING:
    from veriml.coordinator.db.nodes import NodeRow

__all__ = [
    "Candidate",
    "Failure",
    "Gathered",
    "check_retry_options",
    "draw_order",
    "eligible",
    "gather",
    "node_key",
    "pick",
    "retryable",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A registered node as the scheduler sees it."""

    node_id: str
    operator: str
    """The operator account (key id) that bound the node; its stake stands behind it."""
    endpoint: str
    public_key: str
    log_index: int
    last_seen: float  # Unix seconds of the last heartbeat or registration
    active: int = 0
    capacity: int = 1
    cached: frozenset[str] = frozenset()
    models: tuple[str, ...] = ("*",)
    reputation: int = 0
    """From the ledger fold: paid jobs and disputes won, minus lost disputes."""
    stake: int = 1
    """The operator's stake (the draw's weight)."""

    @classmethod
    def of(cls, row: NodeRow, **scheduling: Any) -> Candidate:
        """The registered node ``row`` as the scheduler sees it; ``scheduling`` gives what
        the caller knows of its load, models, reputation and stake."""
        return cls(
            node_id=row.node_id,
            operator=row.operator,
            endpoint=row.endpoint,
            public_key=row.public_key,
            log_index=row.log_index,
            last_seen=row.last_seen,
            **scheduling,
        )

    def serves(self, model: Digest) -> bool:
        return "*" in self.models or model.to_text() in self.models

    def is_live(self, now: float, live_within: float) -> bool:
        return now - self.last_seen <= live_within


@functools.lru_cache(maxsize=1024)
def node_key(public_key: str) -> VerifyingKey:
    """A node's registered public key (PEM) parsed once: every answer is verified under it."""
    return VerifyingKey.from_pem(public_key.encode())


def check_retry_options(
    service: str, *, job_timeout: float, attempts_per_slot: int, live_within: float
) -> None:
    """Refuse a service configuration that could never answer (non-positive timeouts or
    attempts): the inference and completion services share these rules."""
    if not (job_timeout > 0 and attempts_per_slot >= 1 and live_within > 0):
        raise FormatError(
            f"{service} timeouts and attempts must be positive",
            job_timeout=job_timeout,
            attempts_per_slot=attempts_per_slot,
            live_within=live_within,
        )


_OPERATOR_TAG = b"veriml-schedule-operator/v1\n"
_NODE_TAG = b"veriml-schedule-node/v1\n"


def _uniform(tag: bytes, draw: bytes, name: str) -> float:
    """A number in (0, 1] drawn from ``SHA-256(tag || r || name)`` (53 bits)."""
    bits = int.from_bytes(hashlib.sha256(tag + draw + name.encode()).digest()[:8], "big") >> 11
    return (bits + 1) / float(1 << 53)


def draw_order(candidates: Iterable[Candidate], draw: bytes) -> list[Candidate]:
    """``candidates`` in the request's scheduling order (rules 3 and 4 of the module
    docstring): operators in a stake-weighted random order, each operator's nodes together
    in a uniform order; nodes with a negative reputation after all others."""
    by_operator: dict[str, list[Candidate]] = {}
    for node in candidates:
        by_operator.setdefault(node.operator, []).append(node)

    def operator_key(operator: str) -> float:
        stake = max(1, max(n.stake for n in by_operator[operator]))
        return math.log(_uniform(_OPERATOR_TAG, draw, operator)) / stake

    order: list[Candidate] = []
    for operator in sorted(by_operator, key=operator_key, reverse=True):
        nodes = by_operator[operator]
        order += sorted(nodes, key=lambda n: _uniform(_NODE_TAG, draw, n.node_id))
    return sorted(order, key=lambda n: n.reputation < 0)  # stable: keeps the draw's order


def eligible(
    candidates: Iterable[Candidate],
    model: Digest,
    *,
    now: float,
    live_within: float,
    draw: bytes,
    exclude_nodes: Collection[str] = (),
    exclude_operators: Collection[str] = (),
) -> list[Candidate]:
    """Live nodes that serve ``model`` and are not excluded, in the request's order."""
    usable = [
        node
        for node in candidates
        if node.is_live(now, live_within)
        and node.serves(model)
        and node.node_id not in exclude_nodes
        and node.operator not in exclude_operators
    ]
    return draw_order(usable, draw)


def pick(
    candidates: Iterable[Candidate],
    model: Digest,
    count: int,
    *,
    now: float,
    live_within: float,
    draw: bytes,
    exclude_nodes: Collection[str] = (),
    exclude_operators: Collection[str] = (),
) -> list[Candidate]:
    """Up to ``count`` eligible nodes of distinct operators, in the request's order.

    Fewer than ``count`` come back when there are not enough live nodes of distinct operators;
    the caller decides whether that is an error.
    """
    chosen: list[Candidate] = []
    operators: set[str] = set(exclude_operators)
    for node in eligible(
        candidates,
        model,
        now=now,
        live_within=live_within,
        draw=draw,
        exclude_nodes=exclude_nodes,
        exclude_operators=exclude_operators,
    ):
        if len(chosen) == count:
            break
        if node.operator in operators:
            continue
        operators.add(node.operator)
        chosen.append(node)
    return chosen


def retryable(exc: BaseException) -> bool:
    """A node that did not answer, or answered with evidence that does not verify, is replaced
    by another node; any other error ends the request."""
    return isinstance(exc, NodeUnavailableError | VerificationError)


@dataclass(frozen=True, slots=True)
class Failure:
    """One node's failed attempt, kept as evidence for the error the caller may raise."""

    node: Candidate
    error: Error


@dataclass(frozen=True, slots=True)
class Gathered(Generic[T]):
    """What :func:`gather` collected: answers in the order slots finished, and failures."""

    answers: tuple[tuple[Candidate, T], ...]
    failures: tuple[Failure, ...] = field(default_factory=tuple)

    def report(self, observe: Callable[[str, str], None]) -> None:
        """Tell ``observe`` of every failed attempt: ``("node-failure", "unavailable")`` for
        a node that did not answer, ``("node-failure", "unverified")`` for evidence that did
        not verify."""
        for failure in self.failures:
            unavailable = isinstance(failure.error, NodeUnavailableError)
            observe("node-failure", "unavailable" if unavailable else "unverified")


async def gather(
    first: Sequence[Candidate],
    attempt: Callable[[Candidate], Awaitable[T]],
    replace: Callable[[Collection[str], Collection[str]], Candidate | None],
    *,
    attempts_per_slot: int,
    timeout: float,
) -> Gathered[T]:
    """Run ``attempt`` on each node of ``first`` concurrently (one slot each); when an attempt
    fails with a :func:`retryable` error, ask ``replace(tried_nodes, busy_operators)`` for
    another node and try it, up to ``attempts_per_slot`` nodes per slot.

    A slot that runs out of attempts or replacements gives up; slots still running when
    ``timeout`` seconds have passed are cancelled (and count as failures). A non-retryable
    error cancels everything and propagates. ``busy_operators`` are the operators of every node
    running or answered, so a replacement never duplicates an operator in the answer set.
    """
    tried: set[str] = {node.node_id for node in first}
    busy: dict[str, str] = {node.node_id: node.operator for node in first}
    answers: list[tuple[Candidate, T]] = []
    failures: list[Failure] = []
    running: dict[asyncio.Task[T], tuple[Candidate, int]] = {
        asyncio.ensure_future(attempt(node)): (node, 1) for node in first
    }
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while running:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            done, _ = await asyncio.wait(
                running, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                node, used = running.pop(task)
                exc = task.exception()
                if exc is None:
                    answers.append((node, task.result()))
                    continue
                if not isinstance(exc, Error) or not retryable(exc):
                    raise exc
                failures.append(Failure(node, exc))
                del busy[node.node_id]
                if used >= attempts_per_slot:
                    continue
                successor = replace(frozenset(tried), frozenset(busy.values()))
                if successor is None:
                    continue
                tried.add(successor.node_id)
                busy[successor.node_id] = successor.operator
                running[asyncio.ensure_future(attempt(successor))] = (successor, used + 1)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
        for task in running:
            if not task.cancelled():
                task.exception()  # retrieved, so asyncio does not report it as lost
    for node, _ in running.values():
        failures.append(
            Failure(node, NodeUnavailableError("node did not answer in time", node=node.node_id))
        )
    return Gathered(tuple(answers), tuple(failures))
