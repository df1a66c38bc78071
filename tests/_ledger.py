"""Builders for ledger tests: accounts, signed entries at given times, state and beacon
entries, verdicts with their settlement (docs/ledger.md).

Every entry that moves money carries its account's signed request, so a test that means
"alice stakes 60 at t=5" writes ``stake(ALICE, 60, at=5)`` and gets an entry the fold
accepts; the refusals a test shows come from changing one thing (another signer, a replayed
request, a time before the delay). Keys are derived from names, so account ids (and every
order that sorts them) are the same on every run.

    state = ledger(deposit(ALICE, 100, at=1), stake(ALICE, 60, at=2))
    state.account(ALICE.key_id).balance   # 40

Nodes sign too. ``receipt(node, "req-1")`` is the node's own signed statement about a request;
``inference`` entries hold one per answering node, so the fees right after them can pay those
nodes, and ``challenge`` puts the defendant's receipt (and a challenging node's own) into the
dispute. The fold checks a node's signature with the key its node entry registered, so a fee
or a challenge folds only once its nodes are registered (``node_entries()``, ``node_entry``,
or ``network()``):

    state = network()
    state.apply(inference("req-1", ACME_NODE))
    state.apply(fee(ALICE, ACME_NODE, 0, at=3))
    state.apply(challenge("d", ACME_NODE, WATCHER, bond=10, at=5))
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement, Subject
from veriml.core.keys import SigningKey
from veriml.core.receipt import PREDICATE_TYPE
from veriml.core.timestamps import format_time
from veriml.ledger import (
    BeaconEntry,
    ChallengeEntry,
    DepositEntry,
    DisputeVerdictEntry,
    Entry,
    FeeEntry,
    InferenceEntry,
    LedgerEntry,
    LedgerError,
    LedgerState,
    ModelEntry,
    NamespaceEntry,
    NodeEntry,
    Rules,
    StakeEntry,
    StateEntry,
    UnstakeEntry,
    fold,
)
from veriml.protocol.accounts import LedgerRequest, OperatorBinding
from veriml.protocol.draw import Draw, beacon_commitment, draw_secret
from veriml.protocol.messages import NodeDescriptor
from veriml.protocol.policy import Verdict

__all__ = [
    "ACME",
    "ACME_NODE",
    "ACME_NODE_2",
    "ADMIN",
    "ALICE",
    "BASE",
    "BOB",
    "BOLT",
    "BOLT_NODE",
    "OUTPUT",
    "RULES",
    "TRACE",
    "WATCHER",
    "account",
    "beacon",
    "binding",
    "challenge",
    "decide",
    "deposit",
    "descriptor",
    "drawn",
    "epoch_key",
    "fee",
    "inference",
    "ledger",
    "model",
    "namespace",
    "network",
    "node_entries",
    "node_entry",
    "payment",
    "receipt",
    "receipt_digest",
    "refuses",
    "request_digest",
    "settlement",
    "stake",
    "state_entry",
    "t",
    "unstake",
    "verdict",
]

BASE = dt.datetime(2026, 11, 26, 10, tzinfo=dt.UTC)


def t(seconds: float = 0) -> str:
    """The ledger time ``seconds`` after :data:`BASE`, spelled as entries spell it."""
    return format_time(BASE + dt.timedelta(seconds=seconds))


def account(name: str) -> SigningKey:
    """An Ed25519 account key derived from ``name`` (the same key on every run)."""
    seed = hashlib.sha256(b"veriml-test-account\n" + name.encode()).digest()
    return SigningKey(ed25519.Ed25519PrivateKey.from_private_bytes(seed))


ADMIN = account("admin")
ALICE = account("alice")
BOB = account("bob")
WATCHER = account("watcher")
ACME = account("acme")  # an operator with two nodes
ACME_NODE = account("acme-node-1")
ACME_NODE_2 = account("acme-node-2")
BOLT = account("bolt")  # an operator with one node
BOLT_NODE = account("bolt-node-1")

RULES = Rules(admin=ADMIN.key_id, unstake_delay=100.0)
"""Test rules: the defaults (min_stake 100, slash and reward 50 %, bond 10, free inference)
with a 100 s unstake delay."""

OUTPUT = Digest.of(b"an output")
"""What the nodes answer (the ``y`` output of every receipt and verdict)."""
TRACE: dict[str, Any] = {"root": Digest.of(b"a trace"), "size": 3}


def _id(who: SigningKey | str) -> str:
    return who if isinstance(who, str) else who.key_id


# -- the fold ---------------------------------------------------------------------------------


def state_entry(state: LedgerState, at: float = 0, *, rules: Rules = RULES) -> StateEntry:
    """The ``state`` entry for ``state``'s current bond map (the one the fold accepts)."""
    bonds = state.bond_map()
    return StateEntry(rules, bonds.root(), bonds.size, t(at))


def ledger(*entries: Entry, rules: Rules = RULES) -> LedgerState:
    """A ledger whose first entry logs ``rules`` (an empty bond map), then ``entries``."""
    state = LedgerState()
    state.apply(state_entry(state, rules=rules))
    return fold(entries, start=state)


def refuses(state: LedgerState, entry: Entry | bytes, match: str) -> LedgerError:
    """Fold ``entry`` expecting a refusal matching ``match``: ``check`` and ``apply`` agree,
    and the state is exactly what it was (digest and size)."""
    before, size, expected = state.digest(), state.size, state.expected
    with pytest.raises(LedgerError, match=match):
        state.check(entry)
    with pytest.raises(LedgerError, match=match) as info:
        state.apply(entry)
    assert (state.digest(), state.size, state.expected) == (before, size, expected)
    return info.value


# -- money: signed requests and the entries that carry them ------------------------------------


def _signed(key: SigningKey, op: str, amount: int, at: float, **members: str) -> Envelope:
    return LedgerRequest.signed(key, op, amount, issued_at=t(at), **members)


def deposit(
    to: SigningKey | str, amount: int, at: float = 0, *, by: SigningKey = ADMIN, memo: str = ""
) -> DepositEntry:
    """``amount`` minted into ``to``, signed by ``by`` (the admin unless a test says not)."""
    account_id = _id(to)
    request = _signed(by, "deposit", amount, at, to=account_id, memo=memo)
    return DepositEntry(account_id, amount, t(at), memo, request)


def stake(who: SigningKey, amount: int, at: float = 0) -> StakeEntry:
    return StakeEntry(who.key_id, amount, t(at), _signed(who, "stake", amount, at))


def unstake(
    who: SigningKey, amount: int, at: float = 0, *, after: float = RULES.unstake_delay
) -> UnstakeEntry:
    """Unbonding released ``after`` seconds later (by default exactly the rules' delay)."""
    request = _signed(who, "unstake", amount, at)
    return UnstakeEntry(who.key_id, amount, t(at), t(at + after), request)


def payment(payer: SigningKey, request: str, allowed: int, at: float = 0) -> Envelope:
    """``payer``'s signed payment of up to ``allowed`` for the fees of ``request``."""
    return _signed(payer, "payment", allowed, at, request=request)


def fee(
    payer: SigningKey,
    payee: SigningKey | str,
    amount: int,
    at: float = 0,
    *,
    request: str = "req-1",
    authorization: Envelope | None = None,
) -> FeeEntry:
    """A fee for ``request`` under ``authorization`` (default: a payment of exactly
    ``amount``). The fold takes it right after ``request``'s inference entry (or another fee
    of it), for a registered node whose own signed receipt that entry holds."""
    signed = authorization or payment(payer, request, amount, at)
    return FeeEntry(payer.key_id, _id(payee), amount, request, t(at), signed)


# -- receipts and disputes: what the nodes signed ---------------------------------------------


def receipt(
    node: SigningKey,
    inference: str = "req-1",
    *,
    by: SigningKey | None = None,
    outputs: Mapping[str, Digest] | None = None,
) -> Envelope:
    """``node``'s receipt for request ``inference``: an in-toto Statement over its outputs
    (default ``{"y": OUTPUT}``) whose predicate names the node and the request, in a DSSE
    envelope signed by ``node`` (or by ``by``: a receipt ``node`` never signed)."""
    answered = outputs if outputs is not None else {"y": OUTPUT}
    statement = Statement(
        subjects=tuple(Subject(name, d) for name, d in sorted(answered.items())),
        predicate_type=PREDICATE_TYPE,
        predicate={
            "node": {"id": node.key_id},
            "request": {"id": inference, "digest": request_digest(inference).to_text()},
            "trace": {"root": TRACE["root"].to_text(), "size": TRACE["size"]},
        },
    )
    return Envelope.sign(statement.to_bytes(), [by or node])


def receipt_digest(statement: Envelope) -> Digest:
    """How a challenge names the receipt it disputes: the SHA-256 of its DSSE payload."""
    return Digest.of(statement.payload)


def challenge(
    dispute: str,
    defendant: SigningKey,
    challenger: SigningKey | str,
    *,
    bond: int = 0,
    at: float = 0,
    node: SigningKey | None = None,
    inference: str = "req-1",
    statement: Envelope | None = None,
    disputed: Digest | None = None,
    outputs: dict[str, Digest] | None = None,
) -> ChallengeEntry:
    """``challenger`` disputes ``defendant``'s receipt for ``inference``, claiming ``outputs``
    instead; both sides signed into it, as the fold requires.

    - The defendant's party carries ``statement``, its receipt (default: the one ``defendant``
      signed for ``inference``) and names ``disputed`` as the receipt it disputes (default:
      that statement's digest).
    - A challenger key signs its challenge request for ``bond``, bond 0 included. A challenger
      given as an account id signed nothing: no request (the fold refuses that).
    - ``node`` is the challenging node: its party names it and carries the node's own receipt
      for ``inference`` (over the claimed outputs). A node challenging in its own name is
      ``challenge(..., NODE.key_id, node=NODE)``.

    To show a refusal, change one thing: a ``statement`` by another key or about another
    request, another ``disputed`` receipt, an account id for the challenger, or a party
    without its ``"statement"`` (``dataclasses.replace``)."""
    defendant_id = defendant.key_id
    claimed = outputs if outputs is not None else {"y": Digest.of(dispute.encode())}
    signed = statement or receipt(defendant, inference)
    party: dict[str, Any] = {"account": _id(challenger), "trace": TRACE, "outputs": claimed}
    if node is not None:
        party["node"] = node.key_id
        party["statement"] = receipt(node, inference, outputs=claimed).to_json()
    authorization = None
    if isinstance(challenger, SigningKey):
        authorization = _signed(
            challenger, "challenge", bond, at, inference=inference, node=defendant_id
        )
    return ChallengeEntry(
        dispute=dispute,
        inference=inference,
        defendant={
            "node": defendant_id,
            "receipt": disputed or receipt_digest(signed),
            "trace": TRACE,
            "statement": signed.to_json(),
        },
        challenger=party,
        mode="bitwise",
        bond=bond,
        deadline_seconds=60,
        at=t(at),
        authorization=authorization,
    )


def verdict(
    dispute: str, winner: Any, at: float = 0, reason: Any = "referee"
) -> DisputeVerdictEntry:
    return DisputeVerdictEntry(dispute, winner, reason, t(at))


def settlement(state: LedgerState, decided: DisputeVerdictEntry) -> tuple[LedgerEntry, ...]:
    """The settlement the fold expects right after ``decided`` (``state`` is not changed)."""
    trial = state.copy()
    trial.apply(decided)
    return trial.expected


def decide(state: LedgerState, decided: DisputeVerdictEntry) -> tuple[LedgerEntry, ...]:
    """Fold ``decided`` and the settlement it derives; the settlement."""
    state.apply(decided)
    settled = state.expected
    fold(settled, start=state)
    assert state.expected == ()
    return settled


# -- operators and nodes ----------------------------------------------------------------------


def binding(operator: SigningKey, node: SigningKey | str, at: float = 0) -> Envelope:
    """``operator``'s signed binding of ``node``."""
    return OperatorBinding.of(operator, _id(node), issued_at=t(at)).sign(operator)


def descriptor(
    node: SigningKey, operator: SigningKey, *, at: float = 0, **overrides: Any
) -> NodeDescriptor:
    """``node``'s descriptor, bound by ``operator`` (``overrides`` replace any member)."""
    members: dict[str, Any] = {
        "public_key": node.public.to_pem().decode(),
        "operator_binding": binding(operator, node, at),
        "endpoint": "http://127.0.0.1:9001",
        "issued_at": t(at),
        "nonce": secrets.token_hex(16),
    }
    return NodeDescriptor(**(members | overrides))


def node_entry(node: SigningKey, operator: SigningKey, *, at: float = 0) -> NodeEntry:
    """A ``node`` entry: ``node``'s signed descriptor with ``operator``'s binding."""
    return NodeEntry(descriptor(node, operator, at=at).sign(node))


_OPERATORS = {ACME_NODE: ACME, ACME_NODE_2: ACME, BOLT_NODE: BOLT}


def node_entries(*nodes: SigningKey, at: float = 0) -> tuple[NodeEntry, ...]:
    """The node entries registering ``nodes`` (default: ACME_NODE, ACME_NODE_2 and BOLT_NODE)
    with their operators (ACME, ACME, BOLT), so the fold knows their keys."""
    return tuple(node_entry(n, _OPERATORS[n], at=at) for n in nodes or tuple(_OPERATORS))


def network(*, stake_each: int = 1000, watcher: int = 100, rules: Rules = RULES) -> LedgerState:
    """A small staked network: operator ACME (two nodes) and BOLT (one node), each with
    ``stake_each`` staked; WATCHER with ``watcher`` to bond challenges. Times 0-2."""
    return ledger(
        *node_entries(),
        deposit(ACME, stake_each, at=1),
        deposit(BOLT, stake_each, at=1),
        deposit(WATCHER, watcher, at=1),
        stake(ACME, stake_each, at=2),
        stake(BOLT, stake_each, at=2),
        rules=rules,
    )


# -- names, randomness, inferences ------------------------------------------------------------


def model(name: str, publisher: SigningKey | None, *, version: str = "1.0.0") -> ModelEntry:
    """A ``model`` entry signed by ``publisher``, or unsigned (``None``)."""
    return ModelEntry(
        digest=Digest.of(f"{name}@{version}".encode()),
        files_digest=Digest.of(b"files"),
        name=name,
        version=version,
        publisher_key_id=None if publisher is None else publisher.key_id,
        publisher_key=None if publisher is None else publisher.public.to_pem().decode(),
        signature=None if publisher is None else Digest.of(b"signature"),
        size=1,
        registered_at=t(0),
    )


def namespace(name: str, owner: SigningKey, at: float = 0) -> NamespaceEntry:
    return NamespaceEntry(name, owner.public.to_pem().decode(), Digest.of(name.encode()), t(at))


def epoch_key(epoch: int) -> bytes:
    """The coordinator's secret key of ``epoch`` (derived, so tests can reveal it)."""
    return hashlib.sha256(b"veriml-test-epoch\n" + str(epoch).encode()).digest()


def beacon(epoch: int, at: float = 0, *, reveal: bytes | bool | None = True) -> BeaconEntry:
    """Epoch ``epoch`` begins: its commitment, and (``reveal=True``) the key of epoch
    ``epoch - 2``; ``reveal`` may also be the bytes to reveal, or ``None``/``False`` for none."""
    previous = epoch_key(epoch - 2) if epoch > 1 else None
    revealed = previous if reveal is True else reveal or None
    return BeaconEntry(epoch, beacon_commitment(epoch_key(epoch)), t(at), revealed)


def request_digest(request_id: str) -> Digest:
    return Digest.of(b"request " + request_id.encode())


def drawn(request_id: str, epoch: int, *, key: bytes | None = None) -> Draw:
    """The draw the epoch's key gives ``request_id`` (or the one another ``key`` gives)."""
    secret = draw_secret(key or epoch_key(epoch), request_id)
    return Draw(epoch, secret)


def inference(
    request_id: str,
    *agreeing: SigningKey,
    dissenting: tuple[SigningKey, ...] = (),
    outcome: Any = "accepted",
    draw: Draw | None = None,
    state: int | None = None,
    extra: dict[str, Any] | None = None,
) -> InferenceEntry:
    """An answered request: one signed receipt per answering node (``agreeing``, then
    ``dissenting``, each once), and a verdict naming the ``agreeing`` nodes as given. The fees
    for ``request_id`` follow this entry and pay those nodes."""
    answering = dict.fromkeys((*agreeing, *dissenting))
    return InferenceEntry(
        request_id=request_id,
        request_digest=request_digest(request_id),
        model=Digest.of(b"model"),
        policy="none",
        receipts=tuple(receipt(node, request_id) for node in answering),
        verdict=Verdict(
            "none", outcome, tuple(a.key_id for a in agreeing), {"y": OUTPUT}, draw=draw
        ),
        extra=extra or {},
        state=state,
    )
