"""Invariants of the ledger fold over random logs (Hypothesis), under the authority rules.

Each log is drawn one entry at a time against the state so far, so it mixes entries the fold
must accept (admin deposits, signed stakes, node registrations, inferences and the fees right
after them, challenges both parties signed, verdicts followed by their settlement, state
entries for the current bond map) with entries it must refuse (deposits by anyone else,
unstakes before the delay, fees beyond their payment, not right after their inference, to a
node that did not answer, was paid already, is not registered or did not sign its receipt,
challenges nobody signed, with a forged receipt, naming a node without its statement or an
unregistered node, settlements the rule does not give, stale bond roots, replayed requests).
Whatever happens, money is conserved and a refused entry leaves no trace.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from _ledger import (
    ACME,
    ACME_NODE,
    ACME_NODE_2,
    ADMIN,
    ALICE,
    BOB,
    BOLT,
    BOLT_NODE,
    RULES,
    WATCHER,
    challenge,
    deposit,
    fee,
    inference,
    ledger,
    node_entry,
    payment,
    receipt,
    stake,
    state_entry,
    t,
    unstake,
    verdict,
)
from veriml.core.digest import Digest
from veriml.core.dsse import Statement
from veriml.ledger import (
    ChallengeEntry,
    DepositEntry,
    Entry,
    FeeEntry,
    InferenceEntry,
    LedgerError,
    LedgerState,
    NodeEntry,
    ReputationEntry,
    RewardEntry,
    SlashEntry,
    StakeEntry,
    StateEntry,
    UnstakeEntry,
    fold,
)

SIGNERS = (ALICE, BOB, WATCHER, ACME, BOLT)
NODES = (ACME_NODE, BOLT_NODE, ACME_NODE_2)  # ACME_NODE_2 only once a "node" entry registers it
REGISTERED = frozenset(n.key_id for n in (ACME_NODE, BOLT_NODE))  # by start()
ACCOUNTS = tuple(k.key_id for k in (*SIGNERS, *NODES))
DISPUTES = ("d1", "d2", "d3")
REQUESTS = ("req-1", "req-2")
KINDS = (
    "deposit",
    "stake",
    "unstake",
    "node",
    "inference",
    "fee",
    "challenge",
    "verdict",
    "stray",
    "state",
    "replay",
)
MONEY = (DepositEntry, StakeEntry, UnstakeEntry, FeeEntry, ChallengeEntry)


def start() -> LedgerState:
    """Rules first, then two operators with one node each and some of their money staked."""
    return ledger(
        node_entry(ACME_NODE, ACME),
        node_entry(BOLT_NODE, BOLT),
        deposit(ACME, 200),
        deposit(BOLT, 200),
        stake(ACME, 100),
        stake(BOLT, 100),
    )


def amounts(top: int) -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=top)


def registered(accepted: list[Entry]) -> frozenset[str]:
    """The nodes whose keys the fold knows after ``accepted``: start()'s and those of the
    node entries since."""
    return REGISTERED | {e.open().node_id for e in accepted if isinstance(e, NodeEntry)}


def paying(accepted: list[Entry]) -> tuple[str, dict[str, set[str]], set[str]] | None:
    """Whom a fee may pay next: the request of the inference entry the log ends with (then
    only its fees), the nodes whose receipts it holds (each with the key ids that signed a
    receipt naming it there), and the nodes its fees paid already."""
    paid: set[str] = set()
    for entry in reversed(accepted):
        if isinstance(entry, FeeEntry):
            paid.add(entry.payee)
        elif isinstance(entry, InferenceEntry):
            answered: dict[str, set[str]] = {}
            for r in entry.receipts:
                node = Statement.from_bytes(r.payload).predicate["node"]["id"]
                answered.setdefault(node, set()).update(s.keyid for s in r.signatures)
            return entry.request_id, answered, paid
        else:
            return None
    return None


def fee_refused(paid: FeeEntry, accepted: list[Entry], spent: dict[bytes, int]) -> bool:
    """Whether the fold must refuse ``paid`` after ``accepted``: not right after its
    inference, to a node that did not answer, was paid, is not registered or did not sign its
    receipt, or beyond its payment."""
    context = paying(accepted)
    payload = paid.authorization.payload  # type: ignore[union-attr]
    return (
        context is None
        or context[0] != paid.inference
        or paid.payee not in context[1]
        or paid.payee in context[2]
        or paid.payee not in registered(accepted)
        or paid.payee not in context[1][paid.payee]  # no receipt naming it is its own
        or spent.get(payload, 0) + paid.amount > paid.request.amount
    )


def draw_entry(
    data: st.DataObject, state: LedgerState, accepted: list[Entry], spent: dict[bytes, int], at: int
) -> tuple[Entry, bool]:
    """One entry for ``state`` at time ``at``; ``True`` when the fold must refuse it.
    ``spent`` is what the accepted fees paid under each payment (by its signed payload)."""
    draw = data.draw
    if state.expected and draw(st.integers(0, 9), label="settle now") < 8:
        due = state.expected[0]  # what the fold waits for after a verdict
        if draw(st.integers(0, 3), label="tamper") == 0:
            if isinstance(due, ReputationEntry):
                return dataclasses.replace(due, delta=due.delta + 1), True
            return dataclasses.replace(due, amount=due.amount + 1), True
        return due, False
    context = paying(accepted)
    if context is not None and draw(st.booleans(), label="pay now"):
        kind = "fee"  # the fees of an inference come right after it
    else:
        kind = draw(st.sampled_from(KINDS), label="kind")
    if kind == "deposit":
        by = draw(st.sampled_from((ADMIN, ADMIN, ALICE)), label="by")
        return deposit(draw(st.sampled_from(ACCOUNTS)), draw(amounts(100)), at, by=by), by != ADMIN
    if kind == "stake":
        who = draw(st.sampled_from(SIGNERS))
        return stake(who, draw(amounts(state.account(who.key_id).balance + 5)), at), False
    if kind == "unstake":
        early = draw(st.booleans(), label="early")
        after = RULES.unstake_delay - (1 if early else 0)
        who = draw(st.sampled_from(SIGNERS))
        amount = draw(amounts(state.stake_of(who.key_id) + 5))
        return unstake(who, amount, at, after=after), early
    if kind == "node":  # registers ACME_NODE_2 (again: the same operator is fine)
        return node_entry(ACME_NODE_2, ACME, at=at), False
    if kind == "inference":
        answering = draw(st.lists(st.sampled_from(NODES), min_size=1, max_size=3, unique=True))
        request_id = draw(st.sampled_from(REQUESTS))
        answered = inference(request_id, *answering)
        if draw(st.integers(0, 3), label="forge a receipt") == 0:
            # A statement naming a node (or an account) that another key signed.
            subject = draw(st.sampled_from((*NODES, WATCHER)), label="named")
            by = draw(st.sampled_from((*NODES, ACME)).filter(lambda k: k != subject), label="by")
            made_up = receipt(subject, request_id, by=by)
            receipts = list(answered.receipts)
            receipts.insert(draw(st.integers(0, len(receipts)), label="where"), made_up)
            answered = dataclasses.replace(answered, receipts=tuple(receipts))
        return answered, False
    if kind == "fee":
        payer = draw(st.sampled_from(SIGNERS))
        amount = draw(amounts(10))
        allowed = draw(st.sampled_from((amount, amount + 5, max(0, amount - 1))), label="allowed")
        request = draw(st.sampled_from(REQUESTS))
        payee = draw(st.sampled_from(ACCOUNTS))
        if context is not None and draw(st.integers(0, 3), label="as the log asks"):
            request = context[0]
            payee = draw(st.sampled_from(sorted(context[1])), label="an answering node")
        paid = fee(
            payer,
            payee,
            amount,
            at,
            request=request,
            authorization=payment(payer, request, allowed, at),
        )
        return paid, fee_refused(paid, accepted, spent)
    if kind == "challenge":
        dispute = draw(st.sampled_from(DISPUTES))
        defendant = draw(st.sampled_from(NODES))
        outputs = {"y": Digest.of(draw(st.binary(max_size=1)))}
        who = draw(st.sampled_from(SIGNERS))
        hows = ("node", "account", "named", "named-unsigned", "unsigned", "forged")
        how = draw(st.sampled_from(hows), label="signed")
        node = draw(st.sampled_from(NODES), label="challenger node")
        if how == "node":  # a node in its own name: its statement signs
            entry = challenge(dispute, defendant, node.key_id, node=node, at=at, outputs=outputs)
        elif how == "unsigned":  # an account id: nobody signed the challenge
            entry = challenge(dispute, defendant, who.key_id, at=at, outputs=outputs)
        else:  # a signed request; "forged": the defendant's receipt signed by someone else;
            # "named": naming a node, with its statement; "named-unsigned": without
            forged = receipt(defendant, by=who) if how == "forged" else None
            bond = draw(amounts(20))
            named = node if how.startswith("named") else None
            entry = challenge(
                dispute,
                defendant,
                who,
                bond=bond,
                at=at,
                node=named,
                outputs=outputs,
                statement=forged,
            )
            if how == "named-unsigned":
                members = {k: v for k, v in entry.challenger.items() if k != "statement"}
                entry = dataclasses.replace(entry, challenger=members)
        known = registered(accepted)
        unknown = defendant.key_id not in known or (
            how in ("node", "named") and node.key_id not in known
        )
        return entry, unknown or how in ("named-unsigned", "unsigned", "forged")
    if kind == "verdict":
        winner = draw(st.sampled_from(("defendant", "challenger", "none", "neither")))
        open_ones = sorted(state.open_disputes)
        pool = open_ones if open_ones and draw(st.integers(0, 3), label="open one") else DISPUTES
        return verdict(draw(st.sampled_from(pool)), winner, at), False
    if kind == "stray":  # a slash, reward or reputation change of the coordinator's own
        account = draw(st.sampled_from(ACCOUNTS))
        dispute = draw(st.sampled_from(DISPUTES))
        amount = draw(amounts(20))
        stray: Entry = draw(
            st.sampled_from(
                (
                    SlashEntry(account, amount, amount // 2, dispute, t(at)),
                    RewardEntry(account, amount, "challenge", t(at), dispute),
                    ReputationEntry(account, amount - 10, "dispute-won", t(at), dispute),
                )
            )
        )
        return stray, stray not in state.expected[:1]
    if kind == "state":
        if draw(st.booleans(), label="stale"):
            bonds = state.bond_map()
            stale = StateEntry(RULES, Digest.of(b"stale"), bonds.size, t(at))
            return stale, True
        return state_entry(state, at), False
    money = [e for e in accepted if isinstance(e, MONEY)]
    if not money:
        return deposit(ALICE, 1, at), False
    again = draw(st.sampled_from(money), label="replayed")
    if isinstance(again, FeeEntry):  # once per node, right after its inference, within payment
        return again, fee_refused(again, accepted, spent)
    return again, True  # every other signed request is used once


def assert_conserved(state: LedgerState) -> None:
    accounts = state.accounts().values()
    stakes = sum(a.stake for a in accounts)
    unbonding = sum(a.unbonding_total for a in accounts)
    bonds = sum(d.bond for d in state.open_disputes.values())
    totals = state.totals
    assert totals.minted == (
        sum(a.balance for a in accounts)
        + stakes
        + unbonding
        + bonds
        + sum(state.held.values())
        + totals.burned
    )
    assert totals.staked == stakes + unbonding
    assert all(a.balance >= 0 and a.stake >= 0 for a in accounts)
    assert all(u.amount > 0 for a in accounts for u in a.unbonding)


def run(data: st.DataObject, steps: int) -> tuple[LedgerState, list[Entry], list[Entry]]:
    """Fold ``steps`` drawn entries, checking every step; (state, all entries, accepted)."""
    state = start()
    accepted: list[Entry] = []
    tried: list[Entry] = []
    spent: dict[bytes, int] = {}
    clock = 0
    for _ in range(steps):
        # Mostly forward, sometimes a little behind (two appenders racing).
        at = max(0, clock + data.draw(st.integers(min_value=-5, max_value=80), label="dt"))
        clock = max(clock, at)
        entry, must_refuse = draw_entry(data, state, accepted, spent, at)
        tried.append(entry)
        before, size = state.digest(), state.size
        refused = _refusal(state.apply, entry)
        event(f"{type(entry).__name__} {'refused' if refused else 'accepted'}")
        if refused is not None:
            assert refused.index == size
            assert (state.digest(), state.size) == (before, size)
        else:
            assert not must_refuse, f"the fold accepted {entry!r}"
            accepted.append(entry)
            if isinstance(entry, FeeEntry):
                payload = entry.authorization.payload  # type: ignore[union-attr]
                spent[payload] = spent.get(payload, 0) + entry.amount
        assert_conserved(state)
    return state, tried, accepted


@settings(max_examples=120, deadline=None)
@given(st.integers(min_value=0, max_value=60), st.data())
def test_money_is_conserved_and_refused_entries_change_nothing(
    steps: int, data: st.DataObject
) -> None:
    state, _, accepted = run(data, steps)
    # The accepted entries alone fold to the same state: a refusal left no trace.
    assert fold(accepted, start=start()).digest() == state.digest()


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=40), st.data())
def test_folding_logged_bytes_in_chunks_gives_the_same_digest(
    steps: int, data: st.DataObject
) -> None:
    state, _, accepted = run(data, steps)
    logged = [e.to_bytes() for e in accepted]
    whole = fold(logged, start=start())
    assert whole.digest() == state.digest()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(logged)), max_size=4), label="cuts"))
    chunked = start()
    for lo, hi in zip([0, *cuts], [*cuts, len(logged)], strict=True):
        chunked = fold(logged[lo:hi], start=chunked)
    assert chunked.to_json() == whole.to_json()


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=40), st.data())
def test_check_agrees_with_apply_and_a_copy_folds_like_the_original(
    steps: int, data: st.DataObject
) -> None:
    _, tried, _ = run(data, steps)
    state = start()
    for entry in tried:
        trial = state.copy()
        before = state.digest()
        would = _refusal(state.check, entry) is None
        assert state.digest() == before
        did = _refusal(trial.apply, entry) is None
        assert would == did
        if did:
            state.apply(entry)
            assert state.digest() == trial.digest()


def _refusal(fold_one: Any, entry: Entry) -> LedgerError | None:
    try:
        fold_one(entry)
    except LedgerError as exc:
        return exc
    return None
