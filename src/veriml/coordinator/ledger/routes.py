"""The ledger routes: ``GET /v1/ledger/state`` and ``/rules``, and the signed account moves
``POST /v1/ledger/deposit``, ``/stake`` and ``/unstake`` (docs/ledger.md).

Each move is an account's signed ledger request;
:class:`~veriml.coordinator.ledger.service.LedgerBook` checks it against the folded ledger and
appends it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from veriml.coordinator.auth import read_body
from veriml.coordinator.deps import LedgerDep
from veriml.coordinator.ledger.service import LedgerBook
from veriml.coordinator.schemas import LEDGER_MOVE, LEDGER_STATE
from veriml.core.canonical import parse_json_object
from veriml.core.dsse import Envelope
from veriml.core.errors import (
    Check,
    SignatureError,
    VerificationError,
)
from veriml.core.timestamps import format_time, parse_time, utc_now
from veriml.ledger.entries import (
    DepositEntry,
    Entry,
    StakeEntry,
    UnstakeEntry,
)
from veriml.protocol.accounts import LedgerRequest

router = APIRouter(tags=["ledger"])


async def _ledger_request(request: Request, op: str) -> tuple[LedgerRequest, Envelope]:
    """The body: an account's signed ledger request for ``op`` (a DSSE envelope), checked
    (403 when its signature does not verify or it is for another op)."""
    raw = await read_body(request, 64 << 10)
    envelope = Envelope.from_json(parse_json_object(raw, what=f"{op} request"))
    try:
        return LedgerRequest.open(envelope, op=op), envelope
    except SignatureError:
        raise
    except VerificationError as exc:
        raise SignatureError(exc.message, check=Check.LEDGER_REQUEST, **exc.evidence) from exc


def _fresh(ledger_request: LedgerRequest) -> None:
    """A request is logged close to when it was signed (the fold allows 10 minutes)."""
    issued = parse_time(ledger_request.issued_at, what="issued_at")
    skew = abs(dt.datetime.now(dt.UTC) - issued)
    if skew > dt.timedelta(minutes=5):
        raise VerificationError(
            "the ledger request is stale or from the future",
            check=Check.FRESHNESS,
            issued_at=ledger_request.issued_at,
        )


async def _append_one(book: LedgerBook, entry: Entry, account: str) -> dict[str, Any]:
    index = (await book.append([entry]))[0]
    return {
        "log_index": index,
        "account": account,
        "state": book.state().account(account).to_json(),
    }


@router.get("/v1/ledger/state", operation_id="get_ledger_state", responses=LEDGER_STATE)
async def get_ledger_state(
    request: Request, book: LedgerDep, size: Annotated[int | None, Query(ge=0)] = None
) -> dict[str, Any]:
    """Balances, stakes, reputation, rules, operators and open disputes, folded from the log."""
    if size is None:
        state = await asyncio.to_thread(book.refresh)
    else:
        state = await asyncio.to_thread(book.state_at, size)
    return state.to_json()


@router.get("/v1/ledger/rules", operation_id="get_ledger_rules")
async def get_ledger_rules(request: Request, book: LedgerDep) -> dict[str, Any]:
    """The rules in force (as the latest ``state`` entry logs them) and that entry's index:
    what a challenger bonds, what a request pays, the minimum stake."""
    state = await asyncio.to_thread(book.state)
    rules = state.rules
    return {
        "rules": None if rules is None else rules.to_json(),
        "state": state.latest_state,
        "epoch": state.epoch,
    }


@router.post("/v1/ledger/deposit", operation_id="ledger_deposit", openapi_extra=LEDGER_MOVE)
async def ledger_deposit(request: Request, book: LedgerDep) -> dict[str, Any]:
    """Credit an account (minted): a ``deposit`` request signed by the rules' admin account
    (the coordinator's key)."""
    ledger_request, envelope = await _ledger_request(request, "deposit")
    _fresh(ledger_request)
    if ledger_request.account != book.rules.admin:
        raise SignatureError(
            "deposits must be signed by the ledger's admin key", check=Check.LEDGER_REQUEST
        )
    account = str(ledger_request.to)
    entry = DepositEntry(
        account, ledger_request.amount, utc_now(), ledger_request.memo or "", envelope
    )
    return await _append_one(book, entry, account)


@router.post("/v1/ledger/stake", operation_id="ledger_stake", openapi_extra=LEDGER_MOVE)
async def ledger_stake(request: Request, book: LedgerDep) -> dict[str, Any]:
    """Move the signer's balance into stake (the body is its signed ``stake`` request)."""
    ledger_request, envelope = await _ledger_request(request, "stake")
    _fresh(ledger_request)
    account = ledger_request.account
    entry = StakeEntry(account, ledger_request.amount, utc_now(), envelope)
    return await _append_one(book, entry, account)


@router.post("/v1/ledger/unstake", operation_id="ledger_unstake", openapi_extra=LEDGER_MOVE)
async def ledger_unstake(request: Request, book: LedgerDep) -> dict[str, Any]:
    """Start unbonding the signer's stake; it returns to the balance after the delay."""
    ledger_request, envelope = await _ledger_request(request, "unstake")
    _fresh(ledger_request)
    now = dt.datetime.now(dt.UTC)
    available = format_time(now + dt.timedelta(seconds=book.rules.unstake_delay))
    account = ledger_request.account
    entry = UnstakeEntry(account, ledger_request.amount, format_time(now), available, envelope)
    return await _append_one(book, entry, account)
