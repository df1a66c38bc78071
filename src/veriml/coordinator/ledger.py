"""The coordinator's view of the ledger, and the ledger and tensor routes.

The ledger state is a fold over the log (:mod:`veriml.ledger.state`); the coordinator keeps
one folded copy, brought up to the log's size before it is read, so inference entries that the
inference service appends on its own are counted too. Ledger entries (stake, fees, disputes'
outcomes) go through :meth:`LedgerBook.append`, which checks them against the folded state
before logging them: the coordinator never logs an entry the fold would refuse, so an auditor
replaying the log gets the same state (docs/verification.md, "Ledger").

Routes (problem JSON on error, docs/verification.md and docs/coordinator.md):

- ``GET /v1/ledger/state[?size=N]``: the state folded over the whole log, or over its first
  ``N`` entries (folded from scratch: what ``veriml log audit`` compares with);
- ``POST /v1/ledger/deposit`` ``{"account", "amount", "memo"?}``: signed by the coordinator's
  own key (its operator mints);
- ``POST /v1/ledger/stake`` / ``POST /v1/ledger/unstake`` ``{"amount"}``: signed by the
  account's key (a node stakes with its node key: the account is the key id);
- ``GET /v1/tensors/{digest}``: a stored tensor in its canonical encoding (its SHA-256 is the
  digest), for watchers and referees. Every request's inputs are stored before it is logged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, Query, Request, Response

from veriml.coordinator.auth import RequestSignature
from veriml.coordinator.settings import Settings
from veriml.core.canonical import parse_json_object
from veriml.core.digest import Digest
from veriml.core.errors import (
    Conflict,
    FormatError,
    InvalidTensor,
    NotFound,
    SignatureError,
)
from veriml.core.tensors import canonical_tensor_bytes, tensor_digest, tensor_from_canonical
from veriml.core.timestamps import format_time, utc_now
from veriml.ledger.entries import (
    AMOUNT_LIMIT,
    DepositEntry,
    Entry,
    FeeEntry,
    StakeEntry,
    UnstakeEntry,
)
from veriml.ledger.state import LedgerError, LedgerState, fold
from veriml.models.blobstore import BlobStore
from veriml.tlog.log import Log

__all__ = ["LedgerBook", "TensorStore", "router"]

Array = npt.NDArray[Any]
TENSOR_MEDIA_TYPE = "application/vnd.veriml.tensor"
_FOLD_CHUNK = 4096


class LedgerBook:
    """One folded copy of the ledger, kept up to the log's size; the one way to log ledger
    entries (checked against the state first).

    ``refresh_ttl`` bounds how stale a read may be: reads within it reuse the folded state
    (the scheduler reads it on every request); :meth:`append` always folds to the end first.
    """

    def __init__(self, log: Log, settings: Settings, *, refresh_ttl: float = 0.25) -> None:
        self._log = log
        self.settings = settings
        self._state = LedgerState()
        self._fold_lock = threading.Lock()
        self._append_lock = asyncio.Lock()
        self._refresh_ttl = refresh_ttl
        self._fresh_until = 0.0

    def refresh(self) -> LedgerState:
        """Fold the entries logged since the last refresh (blocking); the folded state."""
        with self._fold_lock:
            end = self._log.size
            while self._state.size < end:
                stop = min(end, self._state.size + _FOLD_CHUNK)
                for entry in self._log.entries(self._state.size, stop):
                    self._state.apply(entry, self._state.size)
            self._fresh_until = time.monotonic() + self._refresh_ttl
            return self._state

    def state(self) -> LedgerState:
        """The folded state, at most ``refresh_ttl`` seconds behind the log (blocking)."""
        if time.monotonic() < self._fresh_until:
            return self._state
        return self.refresh()

    def state_at(self, size: int) -> LedgerState:
        """The state folded from scratch over the log's first ``size`` entries (blocking)."""
        if not 0 <= size <= self._log.size:
            raise NotFound("the log has fewer entries", size=size, log_size=self._log.size)
        state = LedgerState()
        for start in range(0, size, _FOLD_CHUNK):
            state = fold(self._log.entries(start, min(size, start + _FOLD_CHUNK)), start=state)
        return state

    def stake_of(self, account: str) -> int:
        return self.state().stake_of(account)

    def reputation_of(self, account: str) -> int:
        return self.state().reputation_of(account)

    def schedulable(self, node_id: str, state: LedgerState | None = None) -> bool:
        """Whether a node may receive jobs: enough stake and reputation (the settings' rules),
        in ``state`` (one read for a whole node list) or the current fold."""
        state = state if state is not None else self.state()
        return (
            state.stake_of(node_id) >= self.settings.min_stake
            and state.reputation_of(node_id) >= self.settings.min_reputation
        )

    async def append(self, entries: Sequence[Entry]) -> list[int]:
        """Check ``entries`` in order against the folded state, log them, fold them.

        A ledger rule they break is a :class:`Conflict` naming it, and nothing is logged.
        Appends are serialised in this process; each entry is checked against the state
        that includes the entries before it.
        """
        if not entries:
            return []
        async with self._append_lock:
            state = await asyncio.to_thread(self.refresh)
            trial = state.copy()
            for entry in entries:
                try:
                    trial.apply(entry)
                except LedgerError as exc:
                    raise Conflict(f"ledger rule: {exc.message}", **exc.evidence) from exc
            data = [entry.to_bytes() for entry in entries]
            indices = await asyncio.to_thread(self._log.add_many, data)
            await asyncio.to_thread(self.refresh)
            return indices

    # -- fees ---------------------------------------------------------------------------------

    def check_funds(self, payer: str | None, jobs: int) -> None:
        """Raise :class:`Conflict` unless ``payer`` can pay ``jobs`` fees (no-op when free)."""
        fee = self.settings.fee_per_job
        if payer is None or fee == 0:
            return
        balance = self.state().account(payer).balance
        if balance < fee * jobs:
            raise Conflict(
                "the client's balance does not cover the fees",
                account=payer,
                balance=balance,
                needed=fee * jobs,
            )

    def fees(self, payer: str | None, nodes: Sequence[str], inference: str) -> list[Entry]:
        """The fee entries for one answered request (none when unsigned or free)."""
        fee = self.settings.fee_per_job
        if payer is None or fee == 0:
            return []
        at = utc_now()
        return [FeeEntry(payer, node, fee, inference, at) for node in nodes]


class TensorStore:
    """Tensors stored by digest in the blob store, in their canonical encoding: the bytes
    hash to the tensor digest, so the store's own check is the tensor's."""

    def __init__(self, blobs: BlobStore, *, max_bytes: int) -> None:
        self._blobs = blobs
        self.max_bytes = max_bytes

    def put(self, arrays: Mapping[str, Array]) -> dict[str, Digest]:
        """Store each array unless present (blocking); their digests by name."""
        out: dict[str, Digest] = {}
        for name, array in arrays.items():
            # The digest hashes the array in place; the encoded copy is made only for a tensor
            # the store does not hold yet (a repeated input costs one hash and one lookup).
            digest = out[name] = tensor_digest(np.asarray(array))
            if not self._blobs.has(digest):
                self._blobs.put_bytes(canonical_tensor_bytes(np.asarray(array)))
        return out

    def get_bytes(self, digest: Digest) -> bytes:
        """The canonical bytes of a stored tensor (blocking); :class:`NotFound` if absent."""
        if not self._blobs.has(digest):
            raise NotFound("no tensor with this digest", digest=digest)
        data = self._blobs.cat(digest, max_size=self.max_bytes + 1024)
        try:
            tensor_from_canonical(data, max_bytes=self.max_bytes)
        except InvalidTensor as exc:  # another kind of blob (a model file) has this digest
            raise NotFound("no tensor with this digest", digest=digest) from exc
        return data

    def get(self, digest: Digest) -> Array:
        return tensor_from_canonical(self.get_bytes(digest), max_bytes=self.max_bytes)


# -- routes ---------------------------------------------------------------------------------------

router = APIRouter(tags=["ledger"])


def _book(request: Request) -> LedgerBook:
    book: LedgerBook = request.app.state.ledger
    return book


async def _signed_body(request: Request, what: str) -> tuple[str, dict[str, Any]]:
    """The verified signer's key id and the JSON body; unsigned requests are refused (401)."""
    signature = RequestSignature.from_headers(request.headers)
    raw = await request.body()
    if len(raw) > 64 << 10:
        raise FormatError(f"{what} request body is too large", size=len(raw))
    if signature is None:
        raise SignatureError(
            f"{what} requests must be signed (X-Veriml-Key, X-Veriml-Signature)",
            check="request-signature",
        )
    signer = signature.verify(request.method, request.url.path, Digest.of(raw))
    return signer, parse_json_object(raw, what=f"{what} request")


def _amount(body: Mapping[str, Any]) -> int:
    amount = body.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount < AMOUNT_LIMIT:
        raise FormatError("amount must be a positive integer", got=str(amount)[:40])
    return amount


def _members(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise FormatError("request has unknown members", members=",".join(unknown))


async def _append_one(book: LedgerBook, entry: Entry, account: str) -> dict[str, Any]:
    index = (await book.append([entry]))[0]
    return {
        "log_index": index,
        "account": account,
        "state": book.state().account(account).to_json(),
    }


@router.get("/v1/ledger/state", operation_id="get_ledger_state")
async def get_ledger_state(
    request: Request, size: Annotated[int | None, Query(ge=0)] = None
) -> dict[str, Any]:
    """Balances, stakes, reputation and open disputes, folded from the log."""
    book = _book(request)
    if size is None:
        state = await asyncio.to_thread(book.refresh)
    else:
        state = await asyncio.to_thread(book.state_at, size)
    return state.to_json()


@router.post("/v1/ledger/deposit", operation_id="ledger_deposit")
async def ledger_deposit(request: Request) -> dict[str, Any]:
    """Credit an account (minted); only the coordinator's own key may sign it."""
    signer, body = await _signed_body(request, "deposit")
    if signer != request.app.state.coordinator_key.key_id:
        raise SignatureError(
            "deposits must be signed by the coordinator's key", check="request-signature"
        )
    _members(body, {"account", "amount", "memo"})
    account, memo = body.get("account"), body.get("memo", "")
    if not isinstance(account, str) or not 0 < len(account) <= 256:
        raise FormatError("account must be a key id (1-256 characters)")
    if not isinstance(memo, str) or len(memo) > 256:
        raise FormatError("memo must be a string of at most 256 characters")
    entry = DepositEntry(account, _amount(body), utc_now(), memo)
    return await _append_one(_book(request), entry, account)


@router.post("/v1/ledger/stake", operation_id="ledger_stake")
async def ledger_stake(request: Request) -> dict[str, Any]:
    """Move the signer's balance into stake."""
    signer, body = await _signed_body(request, "stake")
    _members(body, {"amount"})
    return await _append_one(_book(request), StakeEntry(signer, _amount(body), utc_now()), signer)


@router.post("/v1/ledger/unstake", operation_id="ledger_unstake")
async def ledger_unstake(request: Request) -> dict[str, Any]:
    """Start unbonding the signer's stake; it returns to the balance after the delay."""
    signer, body = await _signed_body(request, "unstake")
    _members(body, {"amount"})
    book = _book(request)
    now = dt.datetime.now(dt.UTC)
    available = format_time(now + dt.timedelta(seconds=book.settings.unstake_delay))
    entry = UnstakeEntry(signer, _amount(body), format_time(now), available)
    return await _append_one(book, entry, signer)


@router.get("/v1/tensors/{digest}", operation_id="get_tensor", tags=["inference"])
async def get_tensor(digest: str, request: Request) -> Response:
    """A stored tensor in its canonical encoding (``veriml-tensor/v1``)."""
    try:
        wanted = Digest.from_text(digest)
    except FormatError as exc:
        raise FormatError("tensor digest must be sha256:<64 hex>", got=digest[:80]) from exc
    store: TensorStore = request.app.state.tensors
    data = await asyncio.to_thread(store.get_bytes, wanted)
    return Response(data, media_type=TENSOR_MEDIA_TYPE)
