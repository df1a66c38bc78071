"""What every request gets before it runs, shared by the inference service and the
completion service (:mod:`veriml.coordinator.llm.service`): its draw from the randomness
beacon and the ledger context it cites (:class:`RequestDraws`), the log indexes its answer
relies on, who asked and with which ``Idempotency-Key`` (docs/network.md, "Inference request
and answer"; docs/privacy.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from veriml.coordinator.nodes.beacon import Beacon, Epoch
from veriml.coordinator.nodes.scheduler import Candidate
from veriml.core.dsse import Envelope
from veriml.core.errors import Check, ConflictError, FormatError
from veriml.core.timestamps import format_time
from veriml.ledger.entries import Entry
from veriml.ledger.rules import Rules
from veriml.protocol.draw import Draw
from veriml.verify.policy import DisputeRef, Policy

if TYPE_CHECKING:
    from veriml.coordinator.ledger.service import LedgerBook

__all__ = [
    "EpochSource",
    "RequestDraws",
    "answer_cites",
    "check_request_id",
    "provenance_json",
    "requester",
    "same_requester",
]

_KEY_PATTERN = re.compile(r"[A-Za-z0-9._:~+/=-]{1,200}")


def provenance_json(provenance: tuple[int, int | None] | None) -> dict[str, Any] | None:
    """An answer's ``provenance`` member: ``{"model": index, "namespace": index | null}``."""
    if provenance is None:
        return None
    return {"model": provenance[0], "namespace": provenance[1]}


class RequestDraws:
    """The randomness and ledger context every request gets before it runs: its draw secret
    from the beacon's current epoch, the ``state`` entry it cites, the rules, and the stake
    proofs its answer carries. Shared by the inference and completion services."""

    def __init__(self, *, beacon: EpochSource | None, ledger: LedgerBook | None) -> None:
        # Without a beacon (a service built by hand, in tests) draws come from a key this
        # process keeps to itself: unpredictable, but no log commits to it. A bare callable
        # is the current epoch alone.
        self._beacon: Beacon | _OneEpoch
        if beacon is None:
            self._beacon = _OneEpoch(lambda: _PRIVATE_EPOCH)
        elif isinstance(beacon, Beacon):
            self._beacon = beacon
        else:
            self._beacon = _OneEpoch(beacon)
        self.ledger = ledger

    def draw(self, request_id: str, epoch: int | None = None) -> Draw:
        """The request's draw, from the current epoch or from ``epoch`` when the client named
        it (``X-Veriml-Epoch``: then the coordinator cannot begin epochs until one draws what
        it wants, since the client refuses a draw from any other). A named epoch that is
        neither the current one nor the one before is a :class:`ConflictError` (409): the client
        asks for the current epoch again."""
        if epoch is None:
            return self._beacon.current().draw(request_id)
        named = self._beacon.epoch(epoch)
        if named is None:
            raise ConflictError(
                "the request names a randomness epoch that is not current",
                check=Check.EPOCH,
                epoch=epoch,
                current_epoch=self._beacon.current().number,
            )
        return named.draw(request_id)

    @property
    def rules(self) -> Rules | None:
        return None if self.ledger is None else self.ledger.rules

    def final_after(self, policy: Policy) -> str | None:
        """When the answer can no longer be challenged: ``optimistic:W``'s W, else the
        rules' challenge window (None without a ledger, except for optimistic)."""
        window: float | None = policy.window if policy.kind == "optimistic" else None
        if window is None and self.ledger is not None:
            window = self.ledger.rules.challenge_window
        if window is None:
            return None
        return format_time(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=window))

    async def beacon(self, draw: Draw | None) -> int | None:
        """The log index of the ``beacon`` entry that began ``draw``'s epoch (cited by the
        answer, so the SDK can check the epoch is current), None without a ledger. The beacon
        knows it for the epochs requests draw from; the ledger's fold is asked only for an
        epoch the beacon has moved past."""
        if draw is None:
            return None
        epoch = self._beacon.epoch(draw.epoch)
        if epoch is not None and epoch.index is not None:
            return epoch.index
        if self.ledger is None:
            return None
        state = await asyncio.to_thread(self.ledger.state)
        return state.epoch_index(draw.epoch)

    async def state(self) -> int | None:
        """The ``state`` entry the request is scheduled under (and its answer cites)."""
        return None if self.ledger is None else await self.ledger.current_state()

    def bonds(self, state: int | None, operators: Sequence[str]) -> dict[str, Any] | None:
        """The answer's ``bonds`` member: the cited state and each operator's stake proof."""
        if state is None or self.ledger is None:
            return None
        proofs = self.ledger.prove_bonds(state, operators)
        return {"state": state, "proofs": [p.to_json() for p in proofs]}

    def check_payment(
        self, client: str | None, payment: Envelope | None, request_id: str, jobs: int
    ) -> None:
        if self.ledger is not None:
            self.ledger.check_payment(client, payment, request_id, jobs)

    def fees(
        self, client: str | None, payment: Envelope | None, nodes: Sequence[str], request: str
    ) -> list[Entry]:
        if self.ledger is None:
            return []
        return self.ledger.fees(client, payment, nodes, request)


_PRIVATE_EPOCH = Epoch(0, secrets.token_bytes(32))

EpochSource = Beacon | Callable[[], Epoch]
"""The app's :class:`Beacon`, or (services built by hand) a reader of the current epoch."""


class _OneEpoch:
    """A reader of the current epoch as a beacon: no earlier epoch can be named."""

    def __init__(self, current: Callable[[], Epoch]) -> None:
        self.current = current

    def epoch(self, number: int) -> Epoch | None:
        epoch = self.current()
        return epoch if epoch.number == number else None


def answer_cites(
    nodes: Sequence[Candidate],
    state: int | None,
    provenance: tuple[int, int | None] | None,
    disputes: Sequence[DisputeRef],
    beacon: int | None = None,
) -> tuple[int, ...]:
    """The log indexes an answer relies on, proven beside it: the nodes' registrations, the
    cited state, the model's provenance, each dispute's challenge and verdict, the beacon
    entry that began the draw's epoch."""
    cites = [n.log_index for n in nodes]
    for index in (state, beacon):
        if index is not None:
            cites.append(index)
    if provenance is not None:
        cites += [i for i in provenance if i is not None]
    for ref in disputes:
        cites.append(ref.log_index)
        if ref.opened is not None:
            cites.append(ref.opened)
    return tuple(sorted(set(cites)))


def requester(client: str | None, visibility: Any) -> dict[str, str]:
    """The request members a log entry carries about who asked (docs/privacy.md): the signer's
    key id (``client``), and ``visibility: "public"`` when the requester let anyone read what
    the request left (its inputs, canonical request and outputs). Private is the default and is
    not written."""
    if visibility not in (None, "private", "public"):
        raise FormatError("visibility must be private or public", param="visibility")
    out = {} if client is None else {"client": client}
    if visibility == "public":
        out["visibility"] = "public"
    return out


def same_requester(answer: Mapping[str, Any], client: str | None, request_id: str) -> None:
    """A repeated ``Idempotency-Key`` gets the stored answer only from its requester: the
    same signing key, or none when the first request was unsigned too (a stranger who guessed
    the key and the inputs must not read a private answer)."""
    if (answer.get("request") or {}).get("client") != client:
        raise ConflictError("this Idempotency-Key was used by another requester", key=request_id)


def check_request_id(value: str) -> str:
    """A client-chosen request id (``Idempotency-Key``): 1-200 URL-safe characters."""
    if not _KEY_PATTERN.fullmatch(value):
        raise FormatError(
            "Idempotency-Key must be 1-200 characters of A-Z a-z 0-9 . _ : ~ + / = -",
            got=value[:40],
        )
    return value
