"""The fold's rules for the entries that move money (docs/ledger.md, "Authority" and
"Settlement"): deposits, stakes, unstakes and fees, and the slashes, rewards and reputation
changes that settle a verdict. Pure: no I/O."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import VerificationError
from veriml.core.keys import VerifyingKey
from veriml.core.timestamps import format_time, parse_time
from veriml.ledger.entries import (
    DepositEntry,
    FeeEntry,
    ReputationEntry,
    RewardEntry,
    SlashEntry,
    StakeEntry,
    UnstakeEntry,
)
from veriml.ledger.state.change import Change
from veriml.ledger.state.records import Unbonding
from veriml.protocol.accounts import account_key

__all__ = ["RULES"]


def _deposit(change: Change, entry: DepositEntry) -> None:
    rules = change.rules_or_fail()
    request = entry.request
    if request.account != rules.admin:
        raise change.fail(
            "a deposit must be signed by the ledger's admin account",
            signer=request.account,
            admin=rules.admin,
        )
    change.authorised(entry, request)
    change.account(entry.account).balance += entry.amount
    change.totals.minted += entry.amount


def _stake(change: Change, entry: StakeEntry) -> None:
    change.authorised(entry, entry.request)
    account = change.debit(entry.account, entry.amount, "stake exceeds the balance")
    account.stake += entry.amount
    change.totals.staked += entry.amount


def _unstake(change: Change, entry: UnstakeEntry) -> None:
    rules = change.rules_or_fail()
    change.authorised(entry, entry.request)
    earliest = format_time(parse_time(entry.at) + dt.timedelta(seconds=rules.unstake_delay))
    if entry.available_at < earliest:
        raise change.fail(
            "an unstake is released no earlier than the rules' unstake delay",
            available_at=entry.available_at,
            earliest=earliest,
        )
    account = change.account(entry.account)
    if account.stake < entry.amount:
        raise change.fail(
            "unstake exceeds the stake",
            account=entry.account,
            stake=account.stake,
            amount=entry.amount,
        )
    if entry.amount:
        account.stake -= entry.amount
        account.unbonding.append(Unbonding(entry.amount, entry.available_at))
        change.pushes.append((entry.available_at, entry.account))


def _signed_by(envelope: Envelope, key: VerifyingKey) -> bool:
    try:
        envelope.verify([key])
    except VerificationError:
        return False
    return True


def _fee(change: Change, entry: FeeEntry) -> None:
    paying = change.state._paying
    if paying is None or paying.request != entry.inference:
        raise change.fail(
            "a fee follows, at once, the inference entry of the request it pays for",
            inference=entry.inference,
        )
    receipts = paying.receipts.get(entry.payee)
    if not receipts or entry.payee in paying.paid:
        raise change.fail(
            "a fee pays, once, a node whose receipt is in the inference entry",
            payee=entry.payee,
            inference=paying.request,
        )
    # The payee signed that receipt with its registered key: a made-up statement naming an
    # account is no work done.
    node_key = change.state._node_keys.get(entry.payee)
    if node_key is None:
        raise change.fail(
            "a fee pays a node for a receipt it signed",
            payee=entry.payee,
            reason="the payee is not a registered node",
        )
    signer = account_key(node_key)
    if not any(_signed_by(receipt, signer) for receipt in receipts):
        raise change.fail(
            "a fee pays a node for a receipt it signed",
            payee=entry.payee,
            reason="no receipt in the inference entry is the payee's signature",
        )
    change.paying = replace(paying, paid=paying.paid | {entry.payee})
    request = entry.request
    change.near(request.issued_at, entry.at)
    assert entry.authorization is not None  # a fee cannot be built without one
    key = Digest.of(entry.authorization.payload)
    spent = change.spent.get(key, change.state._spent.get(key, 0)) + entry.amount
    if spent > request.amount:
        raise change.fail(
            "fees exceed what the payer's signed payment allows",
            request=entry.inference,
            allowed=request.amount,
            spent=spent,
        )
    change.spent[key] = spent
    change.debit(entry.payer, entry.amount, "fee exceeds the payer's balance")
    payee = change.account(entry.payee)
    payee.balance += entry.amount
    if entry.amount > 0:
        payee.reputation += 1  # a paid job: free requests earn no reputation
    change.totals.fees += entry.amount


def _slash(change: Change, entry: SlashEntry) -> None:
    account = change.account(entry.account)
    slashable = account.stake + account.unbonding_total
    if slashable < entry.amount:
        raise change.fail(
            "slash exceeds the stake and unbonding",
            account=entry.account,
            slashable=slashable,
            amount=entry.amount,
        )
    from_stake = min(account.stake, entry.amount)
    account.stake -= from_stake
    rest = entry.amount - from_stake
    while rest:  # unbonding, newest first
        last = account.unbonding[-1]
        if last.amount <= rest:
            account.unbonding.pop()
            rest -= last.amount
        else:
            account.unbonding[-1] = Unbonding(last.amount - rest, last.available_at)
            rest = 0
    account.slashes += 1
    account.slashed += entry.amount
    change.held[entry.dispute] = change.held_of(entry.dispute) + entry.amount - entry.burned
    totals = change.totals
    totals.staked -= entry.amount
    totals.slashed += entry.amount
    totals.burned += entry.burned


def _reward(change: Change, entry: RewardEntry) -> None:
    assert entry.dispute is not None  # only the settlement writes rewards, always with one
    held = change.held_of(entry.dispute)
    if held < entry.amount:
        raise change.fail(
            "reward exceeds the dispute's held slash",
            dispute=entry.dispute,
            held=held,
            amount=entry.amount,
        )
    change.held[entry.dispute] = held - entry.amount
    change.account(entry.account).balance += entry.amount
    change.totals.rewards += entry.amount


def _reputation(change: Change, entry: ReputationEntry) -> None:
    change.account(entry.account).reputation += entry.delta


RULES: dict[type, Callable[[Change, Any], None]] = {
    DepositEntry: _deposit,
    StakeEntry: _stake,
    UnstakeEntry: _unstake,
    FeeEntry: _fee,
    SlashEntry: _slash,
    RewardEntry: _reward,
    ReputationEntry: _reputation,
}
