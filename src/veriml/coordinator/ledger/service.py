"""The coordinator's view of the ledger (its routes are in ``routes.py``) and stored tensors.

The ledger state is a fold over the log (:mod:`veriml.ledger.state`); the coordinator keeps
one folded copy, brought up to the log's size before it is read, so inference entries that the
inference service appends on its own are counted too. Ledger entries (stake, fees, disputes'
outcomes) go through :meth:`LedgerBook.append`, which checks them against the folded state
before logging them, adds what the ledger derives from them (a verdict's settlement, a fresh
``state`` entry when stakes changed) and logs them as one group: the coordinator never logs an
entry the fold would refuse, so an auditor replaying the log gets the same state
(docs/ledger.md).

Routes (problem JSON on error, docs/ledger.md and docs/coordinator.md):

- ``GET /v1/ledger/state[?size=N]``: the state folded over the whole log, or over its first
  ``N`` entries (folded from scratch: what ``veriml log audit`` compares with);
- ``POST /v1/ledger/deposit``: the body is a ``deposit`` ledger request (a DSSE envelope,
  docs/ledger.md "Authority") signed by the rules' admin account, the coordinator's key;
- ``POST /v1/ledger/stake`` / ``POST /v1/ledger/unstake``: the body is the account's own
  signed ``stake`` / ``unstake`` request (an operator stakes with its operator key);

Every request's inputs are stored in the :class:`TensorStore` before it is logged; they are
read through ``GET /v1/inferences/{id}/tensors/{digest}`` (:mod:`.inference_routes`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from veriml.coordinator.settings import Settings
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import (
    ConflictError,
    FormatError,
    InvalidTensorError,
    NotFoundError,
    PaymentRequiredError,
    VerificationError,
)
from veriml.core.tensors import canonical_tensor_bytes, tensor_digest, tensor_from_canonical
from veriml.core.timestamps import parse_time, utc_now
from veriml.ledger.bonds import BondMap, BondProof
from veriml.ledger.entries import (
    Entry,
    FeeEntry,
    StateEntry,
)
from veriml.ledger.state import LedgerError, LedgerState, fold
from veriml.models.blobstore import BlobStore
from veriml.protocol.accounts import LedgerRequest
from veriml.tlog.log import Log

__all__ = ["LedgerBook", "TensorStore"]

Array = npt.NDArray[Any]
TENSOR_MEDIA_TYPE = "application/vnd.veriml.tensor"
_FOLD_CHUNK = 4096
_BOND_MAPS = 8


class LedgerBook:
    """One folded copy of the ledger, kept up to the log's size; the one way to log ledger
    entries (checked against the state first).

    ``refresh_ttl`` bounds how stale a read may be: reads within it reuse the folded state
    (the scheduler reads it on every request); :meth:`append` always folds to the end first.
    The book also keeps the bond maps of the latest ``state`` entries, to prove an operator's
    stake to a client (:meth:`prove_bonds`).
    """

    def __init__(
        self, log: Log, settings: Settings, *, admin: str, refresh_ttl: float = 0.25
    ) -> None:
        self._log = log
        self.settings = settings
        self.rules = settings.rules(admin)
        self._state = LedgerState()
        self._fold_lock = threading.Lock()
        self._append_lock = asyncio.Lock()
        self._refresh_ttl = refresh_ttl
        self._fresh_until = 0.0
        self._bonds: OrderedDict[int, BondMap] = OrderedDict()

    def refresh(self) -> LedgerState:
        """Fold the entries logged since the last refresh (blocking); the folded state."""
        with self._fold_lock:
            end = self._log.size
            state = self._state
            while state.size < end:
                stop = min(end, state.size + _FOLD_CHUNK)
                for entry in self._log.entries(state.size, stop):
                    latest = state.latest_state
                    state.apply(entry, state.size)
                    if state.latest_state != latest and state.latest_state is not None:
                        self._bonds[state.latest_state] = state.bond_map()
                        while len(self._bonds) > _BOND_MAPS:
                            self._bonds.popitem(last=False)
            self._fresh_until = time.monotonic() + self._refresh_ttl
            return state

    def state(self) -> LedgerState:
        """The folded state, at most ``refresh_ttl`` seconds behind the log (blocking)."""
        if time.monotonic() < self._fresh_until:
            return self._state
        return self.refresh()

    def state_at(self, size: int) -> LedgerState:
        """The state folded from scratch over the log's first ``size`` entries (blocking)."""
        if not 0 <= size <= self._log.size:
            raise NotFoundError("the log has fewer entries", size=size, log_size=self._log.size)
        state = LedgerState()
        for start in range(0, size, _FOLD_CHUNK):
            state = fold(self._log.entries(start, min(size, start + _FOLD_CHUNK)), start=state)
        return state

    def stake_of(self, account: str) -> int:
        return self.state().stake_of(account)

    def reputation_of(self, account: str) -> int:
        return self.state().reputation_of(account)

    def schedulable(self, node_id: str, state: LedgerState | None = None) -> bool:
        """Whether a node may receive jobs: its operator is bonded (the rules' minimum stake)
        and the node's reputation is at least the rules' minimum, in ``state`` (one read for a
        whole node list) or the current fold."""
        state = state if state is not None else self.state()
        return state.bonded(node_id) and state.reputation_of(node_id) >= self.rules.min_reputation

    async def open(self) -> int:
        """Log the rules and the bond map when the log has none, or other rules (start-up);
        the index of the ``state`` entry in force."""
        async with self._append_lock:
            state = await asyncio.to_thread(self.refresh)
            if state.rules == self.rules and state.latest_state is not None:
                return state.latest_state
            return await self._append_state(state)

    async def current_state(self) -> int:
        """The log index of the ``state`` entry an answer cites: the latest, logged anew when
        it is older than half the unstake delay (a client accepts a bond map that recent)."""
        state = await asyncio.to_thread(self.state)
        index = state.latest_state
        at = None if index is None else state.state_at(index)
        if index is not None and at is not None and not self._stale(at):
            return index
        async with self._append_lock:
            state = await asyncio.to_thread(self.refresh)
            index = state.latest_state
            at = None if index is None else state.state_at(index)
            if index is not None and at is not None and not self._stale(at):
                return index
            return await self._append_state(state)

    def _stale(self, at: str) -> bool:
        age = dt.datetime.now(dt.UTC) - parse_time(at)
        return age.total_seconds() > max(1.0, self.rules.unstake_delay / 2)

    async def _append_state(self, state: LedgerState) -> int:
        bonds = state.bond_map()
        entry = StateEntry(self.rules, bonds.root(), bonds.size, utc_now())
        trial = state.copy()
        trial.apply(entry)
        (index,) = await self._log.add_many_async([entry.to_bytes()])
        await asyncio.to_thread(self.refresh)
        return int(index)

    def bonds(self, index: int) -> BondMap | None:
        """The bond map committed by the ``state`` entry at ``index`` (recent ones only)."""
        self.state()
        return self._bonds.get(index)

    def prove_bonds(self, index: int, accounts: Sequence[str]) -> list[BondProof]:
        """Proofs of each account's stake in the bond map of ``state`` entry ``index``;
        accounts without stake are left out (a client then refuses them)."""
        bonds = self.bonds(index)
        if bonds is None:
            return []
        hashes = bonds.leaf_hashes()
        staked = {a for a, _ in bonds.accounts}
        return [bonds.prove(a, hashes) for a in dict.fromkeys(accounts) if a in staked]

    async def append(self, entries: Sequence[Entry]) -> list[int]:
        """Check ``entries`` in order against the folded state and log them as one group,
        with what the ledger derives from them: the settlement of a verdict (the rule's
        slashes, reward and reputation, docs/ledger.md "Settlement") and, when stakes
        changed, a fresh ``state`` entry. The indexes of everything logged, in order.

        A ledger rule they break is a :class:`ConflictError` naming it, and nothing is logged.
        Appends are serialised in this process; each entry is checked against the state
        that includes the entries before it.
        """
        if not entries:
            return []
        async with self._append_lock:
            state = await asyncio.to_thread(self.refresh)
            trial = state.copy()
            before = trial.bond_map().root()
            group: list[Entry] = []
            for entry in entries:
                try:
                    trial.apply(entry)
                except LedgerError as exc:
                    raise ConflictError(f"ledger rule: {exc.message}", **exc.evidence) from exc
                group.append(entry)
                for settled in trial.expected:  # after a verdict: its settlement, as derived
                    trial.apply(settled)
                    group.append(settled)
            bonds = trial.bond_map()
            if bonds.root() != before:
                group.append(StateEntry(self.rules, bonds.root(), bonds.size, utc_now()))
            data = [entry.to_bytes() for entry in group]
            indices = await self._log.add_many_async(data)
            await asyncio.to_thread(self.refresh)
            return list(indices)

    # -- fees ---------------------------------------------------------------------------------

    def check_payment(
        self, payer: str | None, payment: Envelope | None, request_id: str, jobs: int
    ) -> None:
        """Raise :class:`PaymentRequiredError` unless the request may run: free by rule, or signed
        by ``payer`` with a signed ``payment`` for ``request_id`` that covers ``jobs`` fees and
        a balance that does too."""
        fee = self.rules.fee_per_job
        if fee == 0:
            return
        if payer is None or payment is None:
            raise PaymentRequiredError(
                "this coordinator charges fees: sign the request and attach a signed payment "
                "(X-Veriml-Payment)",
                fee_per_job=fee,
                jobs=jobs,
            )
        try:
            request = LedgerRequest.open(payment, op="payment", account=payer)
        except (VerificationError, FormatError) as exc:
            raise PaymentRequiredError(
                "the payment is not a payment signed by the request's signer",
                reason=exc.diagnostics()[:200],
            ) from exc
        needed = fee * jobs
        if request.request != request_id or request.amount < needed:
            raise PaymentRequiredError(
                "the payment does not cover this request's fees",
                request=str(request.request)[:200],
                allowed=request.amount,
                needed=needed,
            )
        balance = self.state().account(payer).balance
        if balance < needed:
            raise PaymentRequiredError(
                "the payer's balance does not cover the fees",
                account=payer,
                balance=balance,
                needed=needed,
            )

    def fees(
        self, payer: str | None, payment: Envelope | None, nodes: Sequence[str], inference: str
    ) -> list[Entry]:
        """The fee entries for one answered request (none when inference is free)."""
        fee = self.rules.fee_per_job
        if payer is None or payment is None or fee == 0:
            return []
        at = utc_now()
        return [FeeEntry(payer, node, fee, inference, at, payment) for node in nodes]


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
        """The canonical bytes of a stored tensor (blocking); :class:`NotFoundError` if absent."""
        if not self._blobs.has(digest):
            raise NotFoundError("no tensor with this digest", digest=digest)
        data = self._blobs.cat(digest, max_size=self.max_bytes + 1024)
        try:
            tensor_from_canonical(data, max_bytes=self.max_bytes)
        except InvalidTensorError as exc:  # another kind of blob (a model file) has this digest
            raise NotFoundError("no tensor with this digest", digest=digest) from exc
        return data

    def get(self, digest: Digest) -> Array:
        return tensor_from_canonical(self.get_bytes(digest), max_bytes=self.max_bytes)
