"""The logged bytes of every entry type, pinned (docs/ledger.md, "Entries").

Every entry type is built with fixed values (Ed25519 signatures are deterministic, keys and times
are derived from names) and its ``to_bytes()`` compared with the bytes recorded in
``entry_encodings.json``; its ``to_json()`` is those bytes' JSON, and parsing them gives the entry
back. The malformed forms each type refuses are pinned too, with the exact message: an entry's
code may be rewritten, but not a byte of the log nor a word of what it refuses.

The recorded file was written by :func:`record` from the entry code it pins; write it again only
when the log format changes on purpose:
``PYTHONPATH=src:tests python tests/unit/ledger/test_entry_encodings.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from _ledger import (
    ACME,
    ACME_NODE,
    ACME_NODE_2,
    ADMIN,
    ALICE,
    WATCHER,
    beacon,
    challenge,
    deposit,
    descriptor,
    drawn,
    fee,
    inference,
    model,
    namespace,
    stake,
    t,
    unstake,
)
from veriml.core.digest import Digest
from veriml.core.errors import FormatError
from veriml.ledger import (
    BondMap,
    ChallengeEntry,
    DepositEntry,
    DisputeVerdictEntry,
    Entry,
    FeeEntry,
    NodeEntry,
    ReputationEntry,
    RewardEntry,
    Rules,
    SlashEntry,
    StakeEntry,
    StateEntry,
    UnstakeEntry,
    parse_entry,
)
from veriml.protocol.accounts import LedgerRequest

RECORDED = Path(__file__).with_name("entry_encodings.json")
E = TypeVar("E", DepositEntry, StakeEntry, UnstakeEntry, FeeEntry, ChallengeEntry)


_SIGNERS = {key.key_id: key for key in (ADMIN, ALICE, WATCHER)}


def _fixed(entry: E) -> E:
    """``entry`` with its signed request's random nonce replaced by a fixed one."""
    if entry.authorization is None:
        return entry
    request = LedgerRequest.open(entry.authorization)
    again = dataclasses.replace(request, nonce="00" * 16).sign(_SIGNERS[request.account])
    return dataclasses.replace(entry, authorization=again)


def _entries() -> dict[str, Entry]:
    """One or more entries of every type, optional members present and absent."""
    node = descriptor(ACME_NODE, ACME, nonce="00" * 16).sign(ACME_NODE)
    bonds = BondMap.of({ACME.key_id: 1000, ALICE.key_id: 60})
    return {
        "model-signed": model("acme/iris", ACME),
        "model-unsigned": model("iris", None),
        "node": NodeEntry(node),
        "inference": inference("r-1", ACME_NODE),
        "inference-state-extra": inference(
            "r-2", ACME_NODE, outcome="rejected", state=7, extra={"client": "sha256:c"}
        ),
        "inference-drawn": inference(
            "r-3", ACME_NODE, ACME_NODE_2, draw=drawn("r-3", 4), extra={"kind": "chat"}
        ),
        "deposit": _fixed(deposit(ALICE, 100, memo="faucet", at=1)),
        "deposit-no-memo": _fixed(deposit(ALICE, 0, at=2)),
        "stake": _fixed(stake(ALICE, 40, at=3)),
        "unstake": _fixed(unstake(ALICE, 10, at=4)),
        "fee": _fixed(fee(ALICE, ACME_NODE, 5, at=5)),
        "challenge-bonded": _fixed(challenge("d-1", ACME_NODE, WATCHER, bond=10, at=6)),
        "challenge-node": challenge("d-2", ACME_NODE, ACME_NODE_2.key_id, node=ACME_NODE_2, at=7),
        "challenge-unsigned": challenge("d-3", ACME_NODE, WATCHER.key_id, at=8),
        "verdict": DisputeVerdictEntry("d-1", "challenger", "timeout", t(9)),
        "verdict-referee": DisputeVerdictEntry(
            "d-2",
            "defendant",
            "referee",
            t(10),
            node_index=3,
            op_type="MatMul",
            inputs={"x": Digest.of(b"x"), "w": Digest.of(b"w")},
            claims={"defendant": Digest.of(b"d"), "challenger": Digest.of(b"c")},
            referee={"y": Digest.of(b"d")},
            rounds=4,
            messages=9,
        ),
        "slash": SlashEntry(ACME.key_id, 500, 250, "d-1", t(11)),
        "reward": RewardEntry(WATCHER.key_id, 250, "dispute", t(12), dispute="d-1"),
        "reward-minted": RewardEntry(WATCHER.key_id, 3, "bounty", t(13)),
        "reputation": ReputationEntry(ACME.key_id, -1, "lost", t(14), dispute="d-1"),
        "reputation-plain": ReputationEntry(ACME.key_id, 2, "answered", t(15)),
        "state": StateEntry(
            Rules(admin=ADMIN.key_id, unstake_delay=100.0), bonds.root(), bonds.size, t(16)
        ),
        "beacon": beacon(0, at=17),
        "beacon-reveal": beacon(3, at=18),
        "namespace": namespace("acme", ACME, at=19),
    }


def _set(name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        obj[name] = value

    return change


def _drop(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda obj: obj.pop(name)


def _inner(outer: str, name: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(obj: dict[str, Any]) -> None:
        obj[outer][name] = value

    return change


def _drop_inner(outer: str, name: str) -> Callable[[dict[str, Any]], None]:
    return lambda obj: obj[outer].pop(name)


# (case, the recorded entry it changes, the change): each is refused with a FormatError.
_MALFORMED: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
    ("model-no-publisher-member", "model-signed", _drop("publisher")),
    ("model-signed-says-unsigned", "model-signed", _set("unsigned", True)),
    ("model-unsigned-false", "model-unsigned", _set("unsigned", False)),
    ("model-unsigned-unsaid", "model-unsigned", _drop("unsigned")),
    ("model-half-signed", "model-signed", _set("signature", None)),
    ("model-wrong-key-id", "model-signed", _inner("publisher", "key_id", "sha256:00")),
    ("model-bad-digest", "model-signed", _set("digest", "md5:00")),
    ("node-no-descriptor", "node", _drop("descriptor")),
    ("node-descriptor-text", "node", _set("descriptor", "x")),
    ("inference-unknown", "inference", _set("extra", 1)),
    ("inference-null-state", "inference", _set("state", None)),
    ("inference-state-negative", "inference", _set("state", -1)),
    ("inference-state-bool", "inference", _set("state", True)),
    ("inference-no-request-id", "inference", _drop_inner("request", "id")),
    ("inference-no-verdict", "inference", _drop("verdict")),
    ("deposit-missing-memo", "deposit", _drop("memo")),
    ("deposit-unknown", "deposit", _set("note", "x")),
    ("deposit-amount-float", "deposit", _set("amount", 100.0)),
    ("deposit-amount-bool", "deposit", _set("amount", True)),
    ("deposit-amount-text", "deposit", _set("amount", "100")),
    ("deposit-amount-negative", "deposit", _set("amount", -1)),
    ("deposit-amount-too-big", "deposit", _set("amount", 1 << 53)),
    ("deposit-other-amount", "deposit", _set("amount", 101)),
    ("deposit-other-memo", "deposit", _set("memo", "other")),
    ("deposit-memo-long", "deposit", _set("memo", "m" * 257)),
    ("deposit-memo-number", "deposit", _set("memo", 1)),
    ("deposit-account-empty", "deposit", _set("account", "")),
    ("deposit-account-long", "deposit", _set("account", "a" * 257)),
    ("deposit-time-spelling", "deposit", _set("at", "2026-11-26T10:00:01Z")),
    ("deposit-time-text", "deposit", _set("at", "yesterday")),
    ("deposit-authorization-text", "deposit", _set("authorization", "x")),
    ("deposit-no-authorization", "deposit", _drop("authorization")),
    ("stake-other-account", "stake", _set("account", WATCHER.key_id)),
    ("stake-null-authorization", "stake", _set("authorization", None)),
    ("unstake-before-at", "unstake", _set("available_at", t(0))),
    ("unstake-missing-available", "unstake", _drop("available_at")),
    ("unstake-unknown", "unstake", _set("delay", 1)),
    ("fee-other-request", "fee", _set("inference", "r-9")),
    ("fee-payee-number", "fee", _set("payee", 5)),
    ("fee-missing-payer", "fee", _drop("payer")),
    ("challenge-mode", "challenge-bonded", _set("mode", "close-enough")),
    ("challenge-deadline-zero", "challenge-bonded", _set("deadline_seconds", 0)),
    ("challenge-deadline-text", "challenge-bonded", _set("deadline_seconds", "60")),
    ("challenge-deadline-huge", "challenge-bonded", _set("deadline_seconds", 10**9 + 1)),
    ("challenge-deadline-bool", "challenge-bonded", _set("deadline_seconds", True)),
    ("challenge-other-bond", "challenge-bonded", _set("bond", 11)),
    ("challenge-bond-unsigned", "challenge-unsigned", _set("bond", 1)),
    ("challenge-null-authorization", "challenge-unsigned", _set("authorization", None)),
    ("challenge-defendant-text", "challenge-bonded", _set("defendant", "x")),
    ("challenge-defendant-no-trace", "challenge-bonded", _drop_inner("defendant", "trace")),
    ("challenge-defendant-unknown", "challenge-bonded", _inner("defendant", "extra", 1)),
    ("challenge-defendant-receipt", "challenge-bonded", _inner("defendant", "receipt", 1)),
    ("challenge-trace-members", "challenge-bonded", _inner("defendant", "trace", {"root": 1})),
    (
        "challenge-trace-size",
        "challenge-bonded",
        _inner("defendant", "trace", {"root": "sha256:" + "ab" * 32, "size": -1}),
    ),
    ("challenge-statement-text", "challenge-bonded", _inner("defendant", "statement", "x")),
    ("challenge-outputs-text", "challenge-bonded", _inner("challenger", "outputs", "x")),
    ("challenge-outputs-name", "challenge-bonded", _inner("challenger", "outputs", {"": "x"})),
    ("challenge-challenger-node", "challenge-node", _inner("challenger", "node", "")),
    ("challenge-unknown", "challenge-bonded", _set("extra", 1)),
    ("verdict-winner", "verdict", _set("winner", "both")),
    ("verdict-reason", "verdict", _set("reason", "luck")),
    ("verdict-missing-rounds", "verdict", _drop("rounds")),
    ("verdict-rounds-negative", "verdict", _set("rounds", -1)),
    ("verdict-node-index-text", "verdict", _set("node_index", "3")),
    ("verdict-op-type-empty", "verdict", _set("op_type", "")),
    ("verdict-claims-name", "verdict-referee", _inner("claims", "referee", "sha256:" + "0" * 64)),
    ("verdict-inputs-text", "verdict", _set("inputs", "x")),
    ("verdict-referee-digest", "verdict", _set("referee", {"y": 1})),
    ("verdict-dispute-number", "verdict", _set("dispute", 1)),
    ("slash-burns-more", "slash", _set("burned", 501)),
    ("slash-unknown", "slash", _set("reason", "x")),
    ("slash-dispute-empty", "slash", _set("dispute", "")),
    ("reward-null-dispute", "reward-minted", _set("dispute", None)),
    ("reward-negative", "reward", _set("amount", -1)),
    ("reward-reason-empty", "reward", _set("reason", "")),
    ("reputation-delta-too-low", "reputation", _set("delta", -(1 << 53))),
    ("reputation-delta-float", "reputation", _set("delta", 1.5)),
    ("reputation-null-dispute", "reputation-plain", _set("dispute", None)),
    ("state-bonds-members", "state", _inner("bonds", "extra", 1)),
    ("state-bonds-text", "state", _set("bonds", "x")),
    ("state-bonds-root", "state", _inner("bonds", "root", "x")),
    ("state-bonds-size", "state", _inner("bonds", "size", -1)),
    ("state-rules-text", "state", _set("rules", "x")),
    ("state-missing-at", "state", _drop("at")),
    ("beacon-reveal-upper", "beacon-reveal", lambda o: o.update(reveal=o["reveal"].upper())),
    ("beacon-reveal-short", "beacon-reveal", _set("reveal", "ab")),
    ("beacon-reveal-not-hex", "beacon-reveal", _set("reveal", "zz" * 32)),
    ("beacon-reveal-null", "beacon", _set("reveal", None)),
    ("beacon-epoch-negative", "beacon", _set("epoch", -1)),
    ("beacon-commitment-number", "beacon", _set("commitment", 1)),
    ("namespace-owner", "namespace", _set("owner", "sha256:00")),
    ("namespace-slash", "namespace", _set("namespace", "acme/x")),
    ("namespace-spaces", "namespace", _set("namespace", " acme")),
    ("namespace-owner-key-empty", "namespace", _set("owner_key", "")),
    ("namespace-missing-owner", "namespace", _drop("owner")),
]


def _refusal(recorded: dict[str, Any], name: str, base: str, change: Any) -> str:
    obj = copy.deepcopy(json.loads(recorded[base]))
    change(obj)
    with pytest.raises(FormatError) as refused:
        parse_entry(json.dumps(obj).encode())
    return f"{type(refused.value).__name__}: {refused.value}"


def record() -> None:
    """Write :data:`RECORDED` from the entry code as it is."""
    encodings = {name: entry.to_bytes().decode() for name, entry in _entries().items()}
    refusals = {name: _refusal(encodings, name, base, change) for name, base, change in _MALFORMED}
    text = json.dumps({"entries": encodings, "refusals": refusals}, indent=1, sort_keys=True)
    RECORDED.write_text(text + "\n")


def _recorded() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(RECORDED.read_text())
    return loaded


def test_every_entry_type_is_pinned() -> None:
    kinds = {json.loads(data)["type"] for data in _recorded()["entries"].values()}
    assert kinds == {
        "model",
        "node",
        "inference",
        "deposit",
        "stake",
        "unstake",
        "fee",
        "challenge",
        "verdict",
        "slash",
        "reward",
        "reputation",
        "state",
        "beacon",
        "namespace",
    }


@pytest.mark.parametrize("name", sorted(_entries()))
def test_an_entry_writes_exactly_its_recorded_bytes_and_json(name: str) -> None:
    entry = _entries()[name]
    recorded = _recorded()["entries"][name].encode()
    assert entry.to_bytes() == recorded
    assert entry.to_json() == json.loads(recorded)
    assert type(entry).from_json(entry.to_json()) == entry
    assert parse_entry(recorded) == entry


@pytest.mark.parametrize("case", _MALFORMED, ids=lambda case: case[0])
def test_a_malformed_entry_is_refused_with_its_recorded_message(case: Any) -> None:
    name, base, change = case
    recorded = _recorded()
    assert _refusal(recorded["entries"], name, base, change) == recorded["refusals"][name]


if __name__ == "__main__":
    record()
