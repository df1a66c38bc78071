"""The ledger fold: one test per rule of veriml.ledger.state (its module docstring and
docs/ledger.md), each refusal shown to leave the state exactly as it was (``refuses``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

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
    beacon,
    binding,
    challenge,
    decide,
    deposit,
    descriptor,
    drawn,
    epoch_key,
    fee,
    inference,
    ledger,
    model,
    namespace,
    network,
    node_entries,
    node_entry,
    payment,
    receipt,
    receipt_digest,
    refuses,
    stake,
    state_entry,
    t,
    unstake,
    verdict,
)
from veriml.core import Digest, Envelope
from veriml.core.canonical import canonicalize
from veriml.core.dsse import Statement
from veriml.core.errors import FormatError
from veriml.core.keys import SigningKey
from veriml.ledger import (
    BondMap,
    ChallengeEntry,
    DepositEntry,
    Entry,
    LedgerError,
    LedgerState,
    NodeEntry,
    OpenDispute,
    ReputationEntry,
    RewardEntry,
    Rules,
    SlashEntry,
    StakeEntry,
    StateEntry,
    fold,
    parse_entry,
)
from veriml.ledger.state import STATE_FORMAT
from veriml.protocol.draw import Draw

A, B, W = ALICE.key_id, BOB.key_id, WATCHER.key_id


def test_the_first_state_entry_logs_the_rules_and_the_state_has_the_documented_shape() -> None:
    state = ledger(deposit(ALICE, 70, at=1), deposit(ALICE, 30, at=5, memo="again"))
    assert state.to_json() == {
        "format": STATE_FORMAT,
        "size": 3,
        "at": t(5),
        "rules": RULES.to_json(),
        "accounts": {
            A: {
                "balance": 100,
                "stake": 0,
                "unbonding": [],
                "reputation": 0,
                "jobs": 0,
                "slashes": 0,
                "slashed": 0,
            }
        },
        "operators": {},
        "namespaces": {},
        "disputes": {},
        "totals": {"minted": 100, "burned": 0, "staked": 0, "fees": 0, "rewards": 0, "slashed": 0},
    }
    assert STATE_FORMAT == "veriml-ledger/v2"
    assert (state.rules, state.latest_state, state.state_at(0)) == (RULES, 0, t(0))


def test_nothing_that_needs_the_rules_folds_before_the_first_state_entry() -> None:
    empty = LedgerState()
    refuses(empty, deposit(ALICE, 1), "no rules are logged yet")
    assert empty.rules is None


# -- deposits: minted by the admin only ---------------------------------------------------------


def test_a_deposit_mints_only_when_the_rules_admin_signed_it() -> None:
    state = ledger()
    error = refuses(state, deposit(ALICE, 100, by=ALICE), "signed by the ledger's admin")
    assert (error.evidence["signer"], error.evidence["admin"]) == (A, ADMIN.key_id)
    refuses(state, deposit(BOB, 100, by=ALICE), "admin")
    state.apply(deposit(ALICE, 100))
    assert (state.account(A).balance, state.totals.minted) == (100, 100)


def test_a_replayed_deposit_is_refused() -> None:
    once = deposit(ALICE, 100, at=1)
    state = ledger(once)
    refuses(state, once, "already used")
    # The same signed request carried by an entry at another time is the same request.
    again = DepositEntry(A, 100, t(2), "", once.authorization)
    refuses(state, again, "already used")
    assert state.account(A).balance == 100


# -- stake and unstake: the account's own signature, used once ---------------------------------


def test_stake_moves_balance_into_stake_and_cannot_exceed_it() -> None:
    state = ledger(deposit(ALICE, 100), stake(ALICE, 60, at=1))
    assert (state.account(A).balance, state.stake_of(A), state.totals.staked) == (40, 60, 60)
    error = refuses(state, stake(ALICE, 41, at=2), "stake exceeds the balance")
    assert error.evidence["balance"] == 40


def test_a_replayed_stake_request_is_refused() -> None:
    once = stake(ALICE, 10, at=1)
    state = ledger(deposit(ALICE, 100), once)
    refuses(state, once, "already used")
    refuses(state, StakeEntry(A, 10, t(3), once.authorization), "already used")
    assert state.stake_of(A) == 10


def test_a_request_re_signed_or_cosigned_is_still_the_request_already_used() -> None:
    once = stake(ALICE, 10, at=1)
    state = ledger(deposit(ALICE, 100), once)
    signed = once.authorization
    assert signed is not None
    cosigned = Envelope(
        signed.payload_type,
        signed.payload,
        (*signed.signatures, *stake(BOB, 1).authorization.signatures),  # type: ignore[union-attr]
    )
    refuses(state, StakeEntry(A, 10, t(2), cosigned), "already used")


def test_a_signed_request_is_logged_within_ten_minutes_of_its_signing() -> None:
    state = ledger(deposit(ALICE, 100))
    late = StakeEntry(A, 10, t(601), stake(ALICE, 10, at=0).authorization)
    refuses(state, late, "too far from its entry's time")
    state.apply(StakeEntry(A, 10, t(600), stake(ALICE, 10, at=0).authorization))


def test_an_unstake_released_before_the_rules_delay_is_refused() -> None:
    state = ledger(deposit(ALICE, 100), stake(ALICE, 100, at=1))
    error = refuses(state, unstake(ALICE, 10, at=2, after=99), "unstake delay")
    assert (error.evidence["available_at"], error.evidence["earliest"]) == (t(101), t(102))
    state.apply(unstake(ALICE, 10, at=2, after=100))
    assert [(u.amount, u.available_at) for u in state.account(A).unbonding] == [(10, t(102))]


def test_a_replayed_unstake_request_is_refused_and_an_unstake_cannot_exceed_the_stake() -> None:
    once = unstake(ALICE, 10, at=2)
    state = ledger(deposit(ALICE, 100), stake(ALICE, 30, at=1), once)
    refuses(state, once, "already used")
    refuses(state, unstake(ALICE, 21, at=3), "unstake exceeds the stake")
    assert (state.stake_of(A), state.account(A).unbonding_total) == (20, 10)


def test_unbonding_stays_slashable_then_returns_at_the_first_entry_at_or_after_its_time() -> None:
    state = ledger(deposit(ALICE, 100), stake(ALICE, 100, at=1), unstake(ALICE, 30, at=2))
    assert state.totals.staked == 100  # unbonding is still at stake
    state.apply(deposit(BOB, 0, at=101))
    assert state.account(A).balance == 0
    # The release happens before the entry at t(102) applies: it can stake the released 30.
    state.apply(stake(ALICE, 30, at=102))
    account = state.account(A)
    assert (account.balance, account.stake, account.unbonding) == (0, 100, [])


def test_an_unstake_due_at_once_is_released_by_the_next_entry_not_by_itself() -> None:
    rules = Rules(admin=ADMIN.key_id, unstake_delay=0)
    state = ledger(deposit(ALICE, 5), stake(ALICE, 5), unstake(ALICE, 5, after=0), rules=rules)
    assert state.account(A).balance == 0
    state.apply(deposit(BOB, 0))
    assert (state.account(A).balance, state.totals.staked) == (5, 0)


def test_untimed_entries_release_nothing_and_an_earlier_time_keeps_the_clock() -> None:
    state = ledger(
        deposit(ALICE, 10), stake(ALICE, 10), unstake(ALICE, 10, at=0), deposit(BOB, 0, at=50)
    )
    state.apply(inference("r-1", ACME_NODE))  # no time: the unbonding due at t(100) stays
    state.apply(deposit(BOB, 0, at=20))  # an older time: the clock stays at t(50)
    assert state.at == t(50)
    assert state.account(A).unbonding_total == 10
    state.apply(deposit(BOB, 0, at=100))
    assert state.account(A).balance == 10


def test_a_refused_entry_does_not_release_what_was_due() -> None:
    state = ledger(
        node_entry(ACME_NODE, ACME),
        deposit(ALICE, 10),
        stake(ALICE, 10),
        unstake(ALICE, 10),
        inference("req-1", ACME_NODE),
    )
    refuses(state, fee(ALICE, ACME_NODE, 11, at=100), "fee exceeds")
    assert state.account(A).unbonding_total == 10
    assert state.at == t(0)
    state.apply(fee(ALICE, ACME_NODE, 10, at=100))
    assert (state.account(A).balance, state.account(ACME_NODE.key_id).balance) == (0, 10)


# -- fees: right after their inference, to the registered nodes that answered it -----------------


def test_a_fee_moves_the_payers_balance_to_the_payee_and_gives_the_payee_one_reputation() -> None:
    state = ledger(
        node_entry(ACME_NODE, ACME),
        deposit(ALICE, 10),
        inference("req-1", ACME_NODE),
        fee(ALICE, ACME_NODE, 4, at=1),
    )
    assert (state.account(A).balance, state.account(ACME_NODE.key_id).balance) == (6, 4)
    assert state.reputation_of(ACME_NODE.key_id) == 1
    assert state.totals.fees == 4


def test_a_free_request_earns_no_reputation_only_a_job() -> None:
    state = ledger(
        *node_entries(ACME_NODE, BOLT_NODE),
        deposit(ALICE, 10),
        inference("req-1", ACME_NODE, BOLT_NODE, ACME_NODE),
        fee(ALICE, ACME_NODE, 0, at=1),
        fee(ALICE, BOLT_NODE, 0, at=1),
    )
    state.apply(inference("r-2", ACME_NODE, outcome="rejected"))
    node = state.account(ACME_NODE.key_id)
    assert (node.jobs, node.reputation) == (1, 0)  # one accepted answer, nothing paid for it
    assert (state.account(BOLT_NODE.key_id).jobs, state.reputation_of(BOLT_NODE.key_id)) == (1, 0)


def test_fees_beyond_the_payments_amount_are_refused() -> None:
    allowed = payment(ALICE, "req-1", 5)
    state = ledger(
        *node_entries(ACME_NODE, BOLT_NODE),
        deposit(ALICE, 100),
        inference("req-1", ACME_NODE, BOLT_NODE),
        fee(ALICE, ACME_NODE, 3, authorization=allowed),
    )
    error = refuses(state, fee(ALICE, BOLT_NODE, 3, authorization=allowed), "fees exceed")
    assert (error.evidence["allowed"], error.evidence["spent"]) == (5, 6)
    state.apply(fee(ALICE, BOLT_NODE, 2, authorization=allowed))  # 3 + 2: within the 5
    assert state.account(A).balance == 95


def test_a_replayed_fee_is_refused() -> None:
    once = fee(ALICE, ACME_NODE, 3, at=1)
    state = ledger(
        node_entry(ACME_NODE, ACME), deposit(ALICE, 100), inference("req-1", ACME_NODE), once
    )
    refuses(state, once, "pays, once, a node")
    # Even right after the request is logged again, the payment has paid all it allows.
    state.apply(inference("req-1", ACME_NODE))
    refuses(state, once, "fees exceed")
    assert (state.account(A).balance, state.reputation_of(ACME_NODE.key_id)) == (97, 1)


def test_a_fee_overdraft_is_refused_and_names_the_entry_index() -> None:
    state = ledger(
        node_entry(ACME_NODE, ACME),
        deposit(ALICE, 10),
        inference("req-1", ACME_NODE),
        fee(ALICE, ACME_NODE, 4, at=1),
        inference("req-2", ACME_NODE),
    )
    error = refuses(state, fee(ALICE, ACME_NODE, 7, at=2, request="req-2"), "fee exceeds")
    assert (error.index, error.evidence["index"], error.evidence["type"]) == (6, 6, "fee")
    assert error.evidence["balance"] == 6
    assert isinstance(error, FormatError)
    with pytest.raises(LedgerError) as info:
        state.apply(fee(ALICE, ACME_NODE, 7, at=2, request="req-2"), 41)
    assert info.value.index == 41


@pytest.mark.parametrize(
    "between",
    [
        pytest.param(inference("req-2", ACME_NODE), id="another-request"),
        pytest.param(deposit(BOB, 0, at=1), id="a-deposit"),
        pytest.param(node_entry(BOLT_NODE, BOLT), id="a-node-entry"),
        pytest.param(beacon(0, at=1), id="a-beacon"),
    ],
)
def test_a_fee_comes_right_after_the_inference_it_pays_for(between: Entry) -> None:
    state = ledger(node_entry(ACME_NODE, ACME), deposit(ALICE, 10))
    paid = fee(ALICE, ACME_NODE, 1, at=1)
    refuses(state, paid, "follows, at once, the inference entry")  # before its inference
    state.apply(inference("req-1", ACME_NODE))
    state.apply(between)  # anything in between ends the inference's fees
    error = refuses(state, paid, "follows, at once, the inference entry")
    assert error.evidence["inference"] == "req-1"
    state.apply(inference("req-1", ACME_NODE))  # the request logged again: its fees may follow
    state.apply(paid)
    assert state.account(ACME_NODE.key_id).balance == 1


def test_a_fee_pays_only_a_node_whose_receipt_the_inference_holds() -> None:
    # ACME_NODE_2 is named in the verdict, but its receipt is not in the entry.
    logged = dataclasses.replace(
        inference("req-1", ACME_NODE, ACME_NODE_2, dissenting=(BOLT_NODE,)),
        receipts=inference("req-1", ACME_NODE, dissenting=(BOLT_NODE,)).receipts,
    )
    state = ledger(*node_entries(), deposit(ALICE, 10), logged)
    # No receipt (registered, named in the verdict); the node's operator; the payer.
    for stranger in (ACME_NODE_2, ACME, ALICE):
        error = refuses(state, fee(ALICE, stranger, 1, at=1), "a node whose receipt is in")
        assert error.evidence["payee"] == stranger.key_id
    # A node that answered and was outvoted did the work too: its receipt is there.
    fold([fee(ALICE, ACME_NODE, 1, at=1), fee(ALICE, BOLT_NODE, 1, at=1)], start=state)
    assert state.totals.fees == 2


def test_a_fee_pays_each_answering_node_once_per_inference() -> None:
    state = ledger(
        *node_entries(ACME_NODE, BOLT_NODE),
        deposit(ALICE, 10),
        inference("req-1", ACME_NODE, BOLT_NODE),
        fee(ALICE, ACME_NODE, 1, at=1),
    )
    # Under another payment for the request, with room to spare: still one fee per node.
    more = payment(ALICE, "req-1", 5, at=1)
    error = refuses(state, fee(ALICE, ACME_NODE, 1, at=1, authorization=more), "pays, once")
    assert error.evidence["payee"] == ACME_NODE.key_id
    state.apply(fee(ALICE, BOLT_NODE, 1, at=1, authorization=more))
    refuses(state, fee(ALICE, BOLT_NODE, 1, at=1, authorization=more), "pays, once")
    assert [state.reputation_of(n.key_id) for n in (ACME_NODE, BOLT_NODE)] == [1, 1]


@pytest.mark.parametrize(
    "forged",
    [
        pytest.param(receipt(BOLT_NODE, "req-1", by=ACME_NODE), id="another-nodes-signature"),
        pytest.param(receipt(BOLT_NODE, "req-1", by=BOLT), id="its-operators-signature"),
        pytest.param(receipt(WATCHER, "req-1"), id="not-a-registered-node"),
    ],
)
def test_a_fee_pays_no_one_for_a_receipt_its_node_did_not_sign(forged: Envelope) -> None:
    # Whoever writes the inference entry adds a statement naming an account: no work done.
    answered = inference("req-1", ACME_NODE)
    logged = dataclasses.replace(answered, receipts=(*answered.receipts, forged))
    state = network()
    fold([deposit(ALICE, 10, at=3), logged], start=state)
    payee = Statement.from_bytes(forged.payload).predicate["node"]["id"]
    error = refuses(state, fee(ALICE, payee, 1, at=3), "a fee pays a node for a receipt it signed")
    assert error.evidence["payee"] == payee
    # The node that did answer, with its own signed receipt, is still paid.
    state.apply(fee(ALICE, ACME_NODE, 1, at=3))
    assert (state.account(A).balance, state.reputation_of(payee)) == (9, 0)


def test_a_fee_pays_no_unregistered_node_even_for_a_receipt_it_signed() -> None:
    # ACME_NODE_2 answered with its own key, but no node entry registered that key.
    state = ledger(node_entry(ACME_NODE, ACME), deposit(ALICE, 10))
    state.apply(inference("req-1", ACME_NODE, ACME_NODE_2))
    error = refuses(state, fee(ALICE, ACME_NODE_2, 1, at=1), "a node for a receipt it signed")
    assert error.evidence["payee"] == ACME_NODE_2.key_id
    assert "not a registered node" in error.evidence["reason"]
    state.apply(fee(ALICE, ACME_NODE, 1, at=1))  # its registered peer is paid
    # Once its node entry registers the key, its next answer is paid like any other.
    fold([node_entry(ACME_NODE_2, ACME), inference("req-2", ACME_NODE_2)], start=state)
    state.apply(fee(ALICE, ACME_NODE_2, 1, at=2, request="req-2"))
    assert [state.account(n.key_id).balance for n in (ACME_NODE, ACME_NODE_2)] == [1, 1]
    assert state.reputation_of(ACME_NODE_2.key_id) == 1


# -- challenges and verdicts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("winner", "watcher_balance", "burned"),
    [("challenger", 100, 0), ("none", 100, 0), ("defendant", 90, 10), ("neither", 90, 10)],
)
def test_a_verdict_returns_the_bond_unless_the_challenger_lost(
    winner: Any, watcher_balance: int, burned: int
) -> None:
    # Rules that slash nothing, so the bond is the only money the verdict moves.
    state = network(watcher=100, rules=dataclasses.replace(RULES, slash_bp=0))
    state.apply(challenge("d", ACME_NODE, WATCHER, bond=10, at=5))
    assert state.account(W).balance == 90
    opened = OpenDispute("req-1", ACME_NODE.key_id, W, 10, t(5))
    assert dict(state.open_disputes) == {"d": opened}
    assert state.to_json()["disputes"]["d"]["bond"] == 10
    decide(state, verdict("d", winner, at=6))
    assert state.account(W).balance == watcher_balance
    assert state.totals.burned == burned
    assert dict(state.open_disputes) == {}


def test_disputes_open_once_close_once_and_a_bond_needs_the_balance() -> None:
    state = network(watcher=10)
    refuses(state, challenge("d", ACME_NODE, WATCHER, bond=11, at=5), "bond exceeds")
    refuses(state, verdict("d", "defendant", at=5), "no such dispute")
    state.apply(challenge("d", ACME_NODE, WATCHER, bond=1, at=5))
    refuses(state, challenge("d", BOLT_NODE, WATCHER, bond=1, at=5), "already opened")
    decide(state, verdict("d", "none", at=6))
    refuses(state, verdict("d", "none", at=7), "already decided")
    refuses(state, challenge("d", BOLT_NODE, WATCHER, bond=1, at=8), "already opened")


def test_a_challenge_reopening_the_same_claim_is_refused() -> None:
    state = network()
    claimed = {"y": Digest.of(b"the right output")}
    state.apply(challenge("d-1", ACME_NODE, WATCHER, bond=10, at=5, outputs=claimed))
    decide(state, verdict("d-1", "none", at=6))
    # Another dispute id, the same receipt and the same claimed outputs: the same claim.
    again = challenge("d-2", ACME_NODE, WATCHER, bond=10, at=7, outputs=claimed)
    refuses(state, again, "already disputed with this claim")
    # Another claim about the same receipt is a new dispute.
    state.apply(challenge("d-3", ACME_NODE, WATCHER, bond=10, at=7, outputs={}))


def test_a_replayed_challenge_request_is_refused() -> None:
    state = network()
    first = challenge("d-1", ACME_NODE, WATCHER, bond=10, at=5)
    state.apply(first)
    decide(state, verdict("d-1", "none", at=6))
    # A new dispute (and claim) carrying the bond request the watcher signed for the first.
    replay = dataclasses.replace(
        challenge("d-2", ACME_NODE, WATCHER, bond=10, at=7, outputs={}),
        authorization=first.authorization,
    )
    refuses(state, replay, "already used")


# -- settlement: exactly the rule's entries, right after the verdict -----------------------------


def slash_of(slashable: int, rules: Rules = RULES) -> int:
    """floor(slashable × slash_bp / 10000), in integers."""
    return slashable * rules.slash_bp // 10_000


def test_a_challenger_win_slashes_the_defendants_operator_and_rewards_the_challenger() -> None:
    rules = Rules(admin=ADMIN.key_id, unstake_delay=100, slash_bp=3333, reward_bp=2500)
    state = ledger(
        node_entry(ACME_NODE, ACME),
        deposit(ACME, 1001, at=1),
        deposit(WATCHER, 100, at=1),
        stake(ACME, 1001, at=2),
        unstake(ACME, 1, at=3),  # still unbonding, so still slashable
        challenge("d", ACME_NODE, WATCHER, bond=10, at=5),
        rules=rules,
    )
    amount = slash_of(1001, rules)  # 333
    reward = amount * rules.reward_bp // 10_000  # 83
    assert decide(state, verdict("d", "challenger", at=6)) == (
        SlashEntry(ACME.key_id, amount, amount - reward, "d", t(6)),
        RewardEntry(W, reward, "challenge", t(6), dispute="d"),
        ReputationEntry(W, 1, "dispute-won", t(6), dispute="d"),
        ReputationEntry(ACME_NODE.key_id, -100, "dispute-lost", t(6), dispute="d"),
    )
    operator = state.account(ACME.key_id)
    assert (operator.stake + operator.unbonding_total, operator.slashes) == (1001 - 333, 1)
    assert state.account(W).balance == 100 + reward  # the bond came back, plus the reward
    assert (state.totals.burned, state.totals.rewards, dict(state.held)) == (250, 83, {})


def test_a_defendant_win_slashes_the_challengers_own_stake_and_burns_all_of_it() -> None:
    state = network(watcher=100)
    fold([stake(WATCHER, 51, at=3), challenge("d", ACME_NODE, WATCHER, bond=10, at=5)], start=state)
    assert decide(state, verdict("d", "defendant", at=6)) == (
        SlashEntry(W, 25, 25, "d", t(6)),
        ReputationEntry(ACME_NODE.key_id, 1, "dispute-won", t(6), dispute="d"),
        ReputationEntry(W, -100, "dispute-lost", t(6), dispute="d"),
    )
    assert (state.stake_of(W), state.account(W).balance) == (26, 39)  # 100 - 51 - 10 bond
    assert state.totals.burned == 25 + 10  # the slash and the forfeit bond


def test_neither_slashes_both_sides_and_none_settles_nothing() -> None:
    state = network()
    state.apply(challenge("d", ACME_NODE, BOLT_NODE.key_id, node=BOLT_NODE, at=5))
    assert decide(state, verdict("d", "neither", at=6)) == (
        SlashEntry(ACME.key_id, 500, 500, "d", t(6)),
        SlashEntry(BOLT.key_id, 500, 500, "d", t(6)),
        ReputationEntry(ACME_NODE.key_id, -100, "dispute-lost", t(6), dispute="d"),
        ReputationEntry(BOLT_NODE.key_id, -100, "dispute-lost", t(6), dispute="d"),
    )
    other = {"y": Digest.of(b"another claim")}
    state.apply(challenge("e", ACME_NODE, BOLT_NODE.key_id, node=BOLT_NODE, at=7, outputs=other))
    assert decide(state, verdict("e", "none", at=8)) == ()


def test_a_losing_challenger_node_is_slashed_through_its_operator() -> None:
    state = network()
    state.apply(challenge("d", ACME_NODE, BOLT_NODE.key_id, node=BOLT_NODE, at=5))
    settled = decide(state, verdict("d", "defendant", at=6))
    assert settled[0] == SlashEntry(BOLT.key_id, 500, 500, "d", t(6))
    assert state.reputation_of(BOLT_NODE.key_id) == -100
    assert (state.stake_of(BOLT.key_id), state.stake_of(BOLT_NODE.key_id)) == (500, 0)


def test_two_losing_nodes_of_one_operator_are_slashed_once() -> None:
    state = network()
    state.apply(challenge("d", ACME_NODE, ACME_NODE_2.key_id, node=ACME_NODE_2, at=5))
    settled = decide(state, verdict("d", "neither", at=6))
    assert [e for e in settled if isinstance(e, SlashEntry)] == [
        SlashEntry(ACME.key_id, 500, 500, "d", t(6))
    ]
    assert state.reputation_of(ACME_NODE.key_id) == state.reputation_of(ACME_NODE_2.key_id) == -100


def test_a_slash_takes_stake_then_the_newest_unbonding_burns_part_and_holds_the_rest() -> None:
    rules = Rules(admin=ADMIN.key_id, unstake_delay=100, slash_bp=9000)
    state = ledger(
        node_entry(ACME_NODE, ACME),
        deposit(ACME, 22),
        deposit(WATCHER, 10),
        stake(ACME, 22),
        unstake(ACME, 5, at=1),  # released at t(101)
        unstake(ACME, 7, at=2),  # released at t(102), newer: slashed first
        challenge("d", ACME_NODE, WATCHER, bond=1, at=3),
        verdict("d", "challenger", at=4),
        rules=rules,
    )
    slash, reward = state.expected[0], state.expected[1]
    assert slash == SlashEntry(ACME.key_id, 19, 10, "d", t(4))  # floor(22 × 0.9), 9 held
    state.apply(slash)
    account = state.account(ACME.key_id)
    assert account.stake == 0
    assert [(u.amount, u.available_at) for u in account.unbonding] == [(3, t(101))]
    assert (account.slashes, account.slashed) == (1, 19)
    assert dict(state.held) == {"d": 9}
    assert (state.totals.burned, state.totals.slashed, state.totals.staked) == (10, 19, 3)
    state.apply(reward)
    assert (dict(state.held), state.account(W).balance) == ({}, 10 + 9)
    fold(state.expected, start=state)
    # What the slash left of the unbonding is still released on time.
    state.apply(deposit(BOB, 0, at=101))
    assert state.account(ACME.key_id).balance == 3


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(SlashEntry(ACME.key_id, 1, 1, "d", t(9)), id="slash"),
        pytest.param(RewardEntry(W, 1, "challenge", t(9), dispute="d"), id="reward"),
        pytest.param(RewardEntry(W, 1, "bootstrap", t(9)), id="reward-minted"),
        pytest.param(ReputationEntry(W, 5, "manual", t(9)), id="reputation"),
        pytest.param(ReputationEntry(ACME_NODE.key_id, -100, "x", t(9), dispute="d"), id="rep-d"),
    ],
)
def test_a_slash_reward_or_reputation_without_a_verdict_is_refused(entry: Entry) -> None:
    state = network()
    state.apply(challenge("d", ACME_NODE, WATCHER, bond=10, at=5))  # open, not decided
    refuses(state, entry, "must follow from a logged verdict")


def test_a_second_slash_for_one_dispute_is_refused() -> None:
    state = network()
    state.apply(challenge("d", ACME_NODE, WATCHER, bond=10, at=5))
    settled = decide(state, verdict("d", "challenger", at=6))
    for entry in settled:
        refuses(state, entry, "must follow from a logged verdict")
    assert state.account(ACME.key_id).slashes == 1


def _settling() -> tuple[LedgerState, tuple[Any, ...]]:
    """A network right after a challenger-won verdict, and the settlement it expects."""
    state = network()
    state.apply(challenge("d", ACME_NODE, WATCHER, bond=10, at=5))
    state.apply(verdict("d", "challenger", at=6))
    return state, state.expected


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param(lambda s: dataclasses.replace(s[0], amount=501), id="more-slashed"),
        pytest.param(lambda s: dataclasses.replace(s[0], amount=499, burned=249), id="less"),
        pytest.param(lambda s: dataclasses.replace(s[0], burned=500), id="nothing-held"),
        pytest.param(lambda s: dataclasses.replace(s[0], account=BOLT.key_id), id="other-account"),
        pytest.param(
            lambda s: dataclasses.replace(s[0], account=ACME_NODE.key_id), id="node-not-operator"
        ),
        pytest.param(lambda s: dataclasses.replace(s[0], at=t(7)), id="other-time"),
        pytest.param(lambda s: s[1], id="reward-first"),
        pytest.param(lambda s: s[3], id="reputation-first"),
        pytest.param(lambda s: deposit(BOB, 1, at=6), id="a-deposit-in-between"),
        pytest.param(lambda s: inference("r-9", BOLT_NODE), id="an-inference-in-between"),
        pytest.param(lambda s: state_entry(LedgerState(), 6), id="a-state-in-between"),
    ],
)
def test_a_settlement_other_than_the_rules_is_refused(wrong: Any) -> None:
    state, expected = _settling()
    refuses(state, wrong(expected), "exactly as the rule gives")
    fold(expected, start=state)  # the rule's own settlement still goes through
    assert state.expected == ()


def test_an_interrupted_settlement_must_still_finish_in_order() -> None:
    state, expected = _settling()
    state.apply(expected[0])
    refuses(state, expected[2], "exactly as the rule gives")
    refuses(state, expected[0], "exactly as the rule gives")
    fold(expected[1:], start=state)


# -- operators and nodes -------------------------------------------------------------------------


def test_a_node_entry_binds_the_node_to_its_operator_and_opens_both_accounts() -> None:
    state = ledger(node_entry(ACME_NODE, ACME), model("x", None))
    assert state.operator_of(ACME_NODE.key_id) == ACME.key_id
    assert state.to_json()["operators"] == {ACME_NODE.key_id: ACME.key_id}
    assert set(state.accounts()) == {ACME_NODE.key_id, ACME.key_id}
    assert state.at == t(0)  # node and model entries have no time
    assert state.operator_of(BOLT_NODE.key_id) is None


def test_a_node_rebinding_to_another_operator_is_refused() -> None:
    state = ledger(node_entry(ACME_NODE, ACME))
    error = refuses(state, node_entry(ACME_NODE, BOLT), "stays bound to its first operator")
    assert (error.evidence["operator"], error.evidence["got"]) == (ACME.key_id, BOLT.key_id)
    state.apply(node_entry(ACME_NODE, ACME, at=60))  # re-registering with its operator is fine


def test_a_node_entry_whose_descriptor_or_binding_does_not_verify_is_refused() -> None:
    state = ledger()
    genuine = node_entry(ACME_NODE, ACME).descriptor
    payload = genuine.payload.replace(b"127.0.0.1:9001", b"127.0.0.1:9002")
    forged = NodeEntry(Envelope(genuine.payload_type, payload, genuine.signatures))
    refuses(state, forged, "does not verify")
    # Signed by the node, with a binding its operator gave another node.
    borrowed = descriptor(ACME_NODE, ACME, operator_binding=binding(ACME, ACME_NODE_2))
    refuses(state, NodeEntry(borrowed.sign(ACME_NODE)), "does not verify")


def test_a_node_is_bonded_when_its_operator_has_the_minimum_stake() -> None:
    state = network(stake_each=100)
    assert state.bonded(ACME_NODE.key_id)
    assert state.bonded(ACME_NODE_2.key_id)  # both nodes answer with their operator's stake
    state.apply(unstake(ACME, 1, at=5))
    assert not state.bonded(ACME_NODE.key_id)  # 99 < min_stake 100
    assert state.bonded(BOLT_NODE.key_id)
    assert not state.bonded(ACME.key_id)  # an operator is not a node
    assert not state.bonded(ALICE.key_id)


# -- names ---------------------------------------------------------------------------------------


def test_a_namespace_is_claimed_once() -> None:
    state = ledger(namespace("acme", ACME))
    assert state.namespace_owner("acme") == ACME.key_id
    refuses(state, namespace("acme", BOLT, at=1), "already claimed")
    refuses(state, namespace("acme", ACME, at=1), "already claimed")
    assert state.to_json()["namespaces"] == {"acme": ACME.key_id}


def test_a_signed_model_uses_only_a_namespace_its_publisher_owns() -> None:
    state = ledger(namespace("acme", ACME))
    state.apply(model("acme/iris", ACME))
    refuses(state, model("acme/iris", BOLT, version="2.0.0"), "namespace its publisher owns")
    refuses(state, model("bolt/iris", BOLT), "namespace its publisher owns")  # unclaimed
    refuses(state, model("acme", BOLT), "namespace its publisher owns")  # a bare name is one
    # An unsigned model owns no name: it is logged anywhere and reachable by digest only.
    state.apply(model("acme/iris", None, version="9.9.9"))


def test_a_model_naming_the_owners_key_id_over_another_key_cannot_use_the_namespace() -> None:
    state = ledger(namespace("acme", ACME))
    # BOLT's key, under ACME's key id: no such entry can be built...
    with pytest.raises(FormatError, match="publisher key id is not its key's"):
        dataclasses.replace(model("acme/iris", BOLT), publisher_key_id=ACME.key_id)
    # ...nor parsed from bytes written by hand, so the fold refuses them unchanged.
    logged = model("acme/iris", BOLT).to_json()
    logged["publisher"] = logged["publisher"] | {"key_id": ACME.key_id}
    forged = canonicalize(logged)
    with pytest.raises(FormatError, match="publisher key id is not its key's"):
        parse_entry(forged)
    error = refuses(state, forged, "does not parse")
    assert "publisher key id is not its key's" in error.evidence["reason"]
    with pytest.raises(LedgerError, match="does not parse"):
        fold([forged], start=ledger(namespace("acme", ACME)))


# -- state entries -------------------------------------------------------------------------------


def test_a_state_entry_commits_to_the_bond_map_and_a_wrong_root_is_refused() -> None:
    state = network()
    stale = StateEntry(RULES, BondMap.of({}).root(), 0, t(5))
    error = refuses(state, stale, "bond map is not the ledger's")
    assert error.evidence["calculated"] == state.bond_map().root()
    bonds = state.bond_map()
    refuses(state, StateEntry(RULES, bonds.root(), bonds.size + 1, t(5)), "bond map")
    assert bonds == BondMap.of({ACME.key_id: 1000, BOLT.key_id: 1000})
    rules = dataclasses.replace(RULES, min_stake=5000)
    state.apply(state_entry(state, 5, rules=rules))
    assert (state.rules, state.latest_state, state.state_at(state.size - 1)) == (
        rules,
        state.size - 1,
        t(5),
    )
    assert not state.bonded(ACME_NODE.key_id)  # the new rules are in force from here on


def test_an_inference_cites_only_a_logged_state_entry() -> None:
    state = network()
    state.apply(inference("r-1", ACME_NODE, state=0))
    refuses(state, inference("r-2", ACME_NODE, state=1), "cites no state entry")


# -- the beacon and the draws --------------------------------------------------------------------


def test_beacon_epochs_begin_in_order_from_zero() -> None:
    state = ledger()
    refuses(state, beacon(1, reveal=None), "follow one another")
    state.apply(beacon(0))
    refuses(state, beacon(0, at=1), "follow one another")
    refuses(state, beacon(2, at=1), "follow one another")
    state.apply(beacon(1, at=1))
    assert (state.epoch, state.epoch_key(0), state.epoch_key(1)) == (1, None, None)
    # Epoch e reveals epoch e - 2's key: epoch 1's key stays secret while epoch 2 runs.
    state.apply(beacon(2, at=2))
    assert (state.epoch, state.epoch_key(0), state.epoch_key(1)) == (2, epoch_key(0), None)


def test_the_first_two_epochs_reveal_nothing() -> None:
    refuses(ledger(), beacon(0, reveal=epoch_key(0)), "nothing to reveal")
    refuses(ledger(beacon(0)), beacon(1, at=1, reveal=epoch_key(0)), "nothing to reveal")


def test_a_reveal_that_does_not_match_its_epochs_commitment_is_refused() -> None:
    state = ledger(beacon(0), beacon(1, at=1))
    refuses(state, beacon(2, at=2, reveal=epoch_key(7)), "not the one its epoch committed to")
    refuses(state, beacon(2, at=2, reveal=epoch_key(1)), "not the one its epoch committed to")
    # An epoch whose key was lost is left unrevealed, if nothing was drawn from it.
    state.apply(beacon(2, at=2, reveal=None))
    assert state.epoch_key(0) is None
    # Nothing can draw from it afterwards: it has ended.
    refuses(state, inference("r-1", ACME_NODE, draw=drawn("r-1", 0)), "has ended")


def test_an_epoch_that_drew_requests_must_reveal_its_key() -> None:
    state = ledger(beacon(0), inference("r-1", ACME_NODE, draw=drawn("r-1", 0)), beacon(1, at=1))
    # Withholding the key would leave a secret the coordinator picked unchecked forever.
    refuses(state, beacon(2, at=2, reveal=None), "must reveal its key")
    state.apply(beacon(2, at=2))
    assert state.unchecked_draws == 0


def test_each_epoch_knows_the_log_index_of_the_entry_that_began_it() -> None:
    state = ledger(beacon(0), inference("r-1", ACME_NODE, draw=drawn("r-1", 0)), beacon(1, at=1))
    first, second = state.epoch_index(0), state.epoch_index(1)
    assert first is not None
    assert second == first + 2
    assert state.epoch_index(2) is None


def test_a_draw_that_does_not_follow_from_the_epoch_key_is_refused_at_the_reveal() -> None:
    state = ledger(beacon(0))
    made_up = Draw(0, bytes(32))
    state.apply(inference("r-1", ACME_NODE, draw=drawn("r-1", 0)))
    state.apply(inference("r-2", ACME_NODE, draw=made_up))  # unchecked while the key is secret
    state.apply(beacon(1, at=1))  # epoch 0's key is still secret: a job may still run
    assert state.unchecked_draws == 2
    error = refuses(state, beacon(2, at=2), "does not follow from its epoch's key")
    assert (error.evidence["inference"], error.evidence["inference_index"]) == ("r-2", 3)


def test_draws_that_follow_from_the_key_pass_the_reveal() -> None:
    state = ledger(beacon(0), inference("r-1", ACME_NODE, draw=drawn("r-1", 0)), beacon(1, at=1))
    # In flight at the rotation: logged in epoch 1, drawn from epoch 0, whose key is secret.
    state.apply(inference("r-2", ACME_NODE, draw=drawn("r-2", 0)))
    assert state.unchecked_draws == 2
    state.apply(beacon(2, at=2))
    assert state.unchecked_draws == 0
    # Epoch 0 has ended: nothing draws from it once its key is public.
    refuses(state, inference("r-3", ACME_NODE, draw=drawn("r-3", 0)), "has ended")
    # Another request's secret is not this request's.
    stolen = Draw(2, drawn("r-1", 0).secret)
    state.apply(inference("r-4", ACME_NODE, draw=stolen))
    state.apply(beacon(3, at=3))
    refuses(state, beacon(4, at=4), "does not follow")


def test_an_inference_drawing_from_an_epoch_not_begun_is_refused() -> None:
    refuses(ledger(), inference("r-1", ACME_NODE, draw=drawn("r-1", 0)), "epoch not begun")
    state = ledger(beacon(0))
    refuses(state, inference("r-1", ACME_NODE, draw=drawn("r-1", 1)), "epoch not begun")


def test_an_inference_cannot_draw_from_an_epoch_revealed_before_the_previous_one() -> None:
    state = ledger(beacon(0), beacon(1, at=1), beacon(2, at=2))
    # Epoch 2 runs, epoch 1 may still finish in-flight requests; epoch 0's key is public.
    refuses(state, inference("r-1", ACME_NODE, draw=drawn("r-1", 0)), "epoch")


def test_an_inference_draws_from_the_latest_epoch_or_the_one_before() -> None:
    state = ledger(beacon(0), beacon(1, at=1), beacon(2, at=2))
    state.apply(inference("r-2", ACME_NODE, draw=drawn("r-2", 2)))  # the epoch running
    # The one before, for a request in flight at the rotation (its key is still secret).
    state.apply(inference("r-1", ACME_NODE, draw=drawn("r-1", 1)))
    error = refuses(state, inference("r-0", ACME_NODE, draw=drawn("r-0", 0)), "has ended")
    assert (error.evidence["epoch"], error.evidence["latest"]) == (0, 2)
    refuses(state, inference("r-3", ACME_NODE, draw=drawn("r-3", 3)), "epoch not begun")
    # The next beacon moves the window (and reveals epoch 1, checking r-1).
    state.apply(beacon(3, at=3))
    refuses(state, inference("r-4", ACME_NODE, draw=drawn("r-4", 1)), "has ended")
    fold(
        [
            inference("r-5", ACME_NODE, draw=drawn("r-5", 2)),
            inference("r-6", ACME_NODE, draw=drawn("r-6", 3)),
        ],
        start=state,
    )
    assert state.unchecked_draws == 3  # r-2, r-5 (epoch 2) and r-6 (epoch 3), until revealed


# -- authority over challenges: both parties sign into a dispute ---------------------------------


def test_an_account_that_signed_no_challenge_is_never_slashed_as_its_challenger() -> None:
    state = network()
    fold([deposit(ALICE, 1000, at=3), stake(ALICE, 1000, at=3)], start=state)
    try:
        state.apply(challenge("d", ACME_NODE, ALICE.key_id, bond=0, at=5))  # unsigned
        decide(state, verdict("d", "defendant", at=6))
    except LedgerError:
        pass  # refusing the unsigned challenge is one way to keep the rule
    assert state.stake_of(A) == 1000


def _without_statement(entry: ChallengeEntry, party: str) -> ChallengeEntry:
    """``entry`` with ``party``'s (``defendant`` or ``challenger``) own statement left out."""
    members = {k: v for k, v in getattr(entry, party).items() if k != "statement"}
    return dataclasses.replace(entry, **{party: members})


def test_both_parties_sign_into_a_dispute() -> None:
    state = network()
    # The defendant's own receipt, and the challenger's signed request (bond 0 too)...
    state.apply(challenge("d-1", ACME_NODE, WATCHER, at=5))
    # ...or, for a node challenging in its own name, its own receipt for the inference.
    state.apply(challenge("d-2", ACME_NODE, BOLT_NODE.key_id, node=BOLT_NODE, at=5))
    assert dict(state.open_disputes) == {
        "d-1": OpenDispute("req-1", ACME_NODE.key_id, W, 0, t(5)),
        "d-2": OpenDispute("req-1", ACME_NODE.key_id, BOLT_NODE.key_id, 0, t(5), BOLT_NODE.key_id),
    }


def test_a_challenge_without_the_defendants_statement_is_refused() -> None:
    state = network()
    entry = challenge("d", ACME_NODE, WATCHER, bond=10, at=5)
    error = refuses(state, _without_statement(entry, "defendant"), "its own signed statement")
    assert error.evidence["node"] == ACME_NODE.key_id


@pytest.mark.parametrize(
    "forger",
    [
        pytest.param(BOLT_NODE, id="another-node"),
        pytest.param(ACME, id="the-nodes-operator"),
        pytest.param(WATCHER, id="the-challenger"),
    ],
)
def test_a_defendant_statement_signed_by_another_key_is_refused(forger: SigningKey) -> None:
    state = network()
    forged = receipt(ACME_NODE, "req-1", by=forger)
    entry = challenge("d", ACME_NODE, WATCHER, bond=10, at=5, statement=forged)
    error = refuses(state, entry, "not signed by its node")
    assert error.evidence["node"] == ACME_NODE.key_id


def test_a_defendant_statement_about_another_inference_is_refused() -> None:
    state = network()
    other = receipt(ACME_NODE, "req-2")  # the node's own, about another request
    entry = challenge("d", ACME_NODE, WATCHER, bond=10, at=5, statement=other)
    refuses(state, entry, "about another inference")
    state.apply(challenge("d", ACME_NODE, WATCHER, bond=10, at=5, inference="req-2"))


def test_a_defendant_statement_that_is_not_the_challenged_receipt_is_refused() -> None:
    state = network()
    # Both are the node's own receipts for this request; the challenge names the other one.
    other = receipt(ACME_NODE, "req-1", outputs={"y": Digest.of(b"another answer")})
    entry = challenge("d", ACME_NODE, WATCHER, bond=10, at=5, disputed=receipt_digest(other))
    refuses(state, entry, "not the challenged receipt")


def test_a_challenge_against_an_unregistered_node_is_refused() -> None:
    state = ledger(node_entry(BOLT_NODE, BOLT), deposit(WATCHER, 100, at=1))
    entry = challenge("d", ACME_NODE, WATCHER, bond=10, at=5)
    error = refuses(state, entry, "the node is registered")
    assert error.evidence["node"] == ACME_NODE.key_id
    # The fold knows a node's key from its node entry, and from nothing else.
    state.apply(node_entry(ACME_NODE, ACME, at=2))
    state.apply(entry)


def test_a_node_challenger_signs_with_its_own_statement_about_the_inference() -> None:
    state = network()
    entry = challenge("d", ACME_NODE, BOLT_NODE.key_id, node=BOLT_NODE, at=5)
    error = refuses(state, _without_statement(entry, "challenger"), "its own signed statement")
    assert error.evidence["node"] == BOLT_NODE.key_id
    for statement, match in (
        (receipt(BOLT_NODE, "req-1", by=WATCHER), "not signed by its node"),
        (receipt(BOLT_NODE, "req-2"), "about another inference"),
    ):
        swapped = entry.challenger | {"statement": statement.to_json()}
        refuses(state, dataclasses.replace(entry, challenger=swapped), match)
    # A node no node entry registered cannot challenge in its own name.
    refuses(state, challenge("d", ACME_NODE, ALICE.key_id, node=ALICE, at=5), "registered")
    state.apply(entry)


def test_an_account_challenger_signs_its_challenge_even_at_bond_0() -> None:
    state = network()
    unsigned = challenge("d", ACME_NODE, W, at=5)  # an account id: no signed request
    assert (unsigned.bond, unsigned.authorization) == (0, None)
    error = refuses(state, unsigned, "a challenger signs its challenge")
    assert error.evidence["challenger"] == W
    # A node's genuine statement does not sign for another account, nor does naming a node.
    node_party = {"node": BOLT_NODE.key_id, "statement": receipt(BOLT_NODE).to_json()}
    for borrowed in (node_party, {"node": BOLT_NODE.key_id}):
        lent = dataclasses.replace(unsigned, challenger=unsigned.challenger | borrowed)
        refuses(state, lent, "a challenger signs its challenge")
    state.apply(challenge("d", ACME_NODE, WATCHER, at=5))  # its signed request for bond 0
    assert state.open_disputes["d"].bond == 0


def test_a_node_named_as_the_challenger_without_its_statement_is_never_slashed() -> None:
    # The challenger account's signed request bonds the challenge; it does not sign for a node.
    state = network()
    signed = challenge("d", ACME_NODE, WATCHER, bond=10, at=5)
    named = dataclasses.replace(signed, challenger=signed.challenger | {"node": BOLT_NODE.key_id})
    error = refuses(state, named, "its own signed statement")
    assert error.evidence["node"] == BOLT_NODE.key_id
    for statement, match in (
        (receipt(BOLT_NODE, "req-1", by=WATCHER), "not signed by its node"),
        (receipt(BOLT_NODE, "req-2"), "about another inference"),
    ):
        swapped = named.challenger | {"statement": statement.to_json()}
        refuses(state, dataclasses.replace(named, challenger=swapped), match)
    # The account's own challenge, naming no node, settles on the account alone.
    state.apply(signed)
    decide(state, verdict("d", "defendant", at=6))
    assert (state.stake_of(BOLT.key_id), state.reputation_of(BOLT_NODE.key_id)) == (1000, 0)


@pytest.mark.parametrize("bonded", [True, False], ids=["with-a-watchers-bond", "in-its-name"])
def test_a_nodes_logged_receipt_does_not_make_it_a_challenger(bonded: bool) -> None:
    state = network()
    answered = inference("req-1", ACME_NODE, BOLT_NODE)  # BOLT_NODE agreed with ACME_NODE
    state.apply(answered)
    logged = answered.receipts[1]  # BOLT_NODE's own receipt, from the log: y = OUTPUT
    assert Statement.from_bytes(logged.payload).predicate["node"]["id"] == BOLT_NODE.key_id
    # Bonded by a watcher's signed request, or, unbonded, in the node's own name.
    challenger: SigningKey | str = WATCHER if bonded else BOLT_NODE.key_id
    entry = challenge("d", ACME_NODE, challenger, bond=10 if bonded else 0)
    lent = {"node": BOLT_NODE.key_id, "statement": logged.to_json()}  # claiming another y
    try:
        state.apply(dataclasses.replace(entry, challenger=entry.challenger | lent))
        decide(state, verdict("d", "defendant", at=6))
    except LedgerError:
        pass  # refusing the challenge is one way to keep the rule
    assert (state.stake_of(BOLT.key_id), state.reputation_of(BOLT_NODE.key_id)) == (1000, 0)


# -- bytes, copies, ranges -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'{"type": "bonus", "account": "a"}',
        b"not json",
        b'{"type": "deposit", "account": "a", "amount": -1, "memo": "", "at": "x"}',
    ],
)
def test_bytes_that_are_not_a_ledger_entry_are_ledger_errors(data: bytes) -> None:
    state = ledger(deposit(ALICE, 1))
    error = refuses(state, data, "does not parse")
    assert error.index == 2


def test_the_fold_accepts_logged_bytes_and_parsed_entries_alike() -> None:
    entries: list[Entry] = [
        state_entry(LedgerState()),
        node_entry(ACME_NODE, ACME),
        node_entry(BOLT_NODE, BOLT),
        deposit(ALICE, 9),
        stake(ALICE, 4, at=1),
        beacon(0, at=2),
        inference("r-1", ACME_NODE, draw=drawn("r-1", 0)),
        fee(ALICE, ACME_NODE, 2, at=2, request="r-1"),
        challenge("d", ACME_NODE, ALICE, bond=1, at=3, inference="r-1"),
        challenge("e", ACME_NODE, BOLT_NODE.key_id, node=BOLT_NODE, at=3, inference="r-1"),
    ]
    assert fold(e.to_bytes() for e in entries).digest() == fold(entries).digest()


def test_totals_that_would_leave_the_json_integer_range_are_refused() -> None:
    state = ledger(deposit(ALICE, 2**53 - 1))
    refuses(state, deposit(BOB, 1, at=1), "integer range")


def test_a_copy_is_independent() -> None:
    state = ledger(deposit(ALICE, 10), stake(ALICE, 5), unstake(ALICE, 5))
    trial = state.copy()
    assert trial.digest() == state.digest()
    trial.apply(deposit(ALICE, 1, at=100))
    assert (state.account(A).balance, state.account(A).unbonding_total) == (5, 5)
    assert trial.account(A).balance == 11
    snapshot = state.account(A)
    snapshot.balance = 1000
    assert state.account(A).balance == 5
