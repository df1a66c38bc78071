"""Red team: the ledger checks authority, not only arithmetic (docs/threat-model.md §6).

A coordinator holds the log key, so it can append any entry it likes; what it cannot do is make
an auditor accept one nobody had the right to write. Each attack here writes such an entry into
a running coordinator's own log, after genuine traffic (an admin deposit, a signed stake), and
``veriml log audit`` (which folds the ledger) must reject the log at that entry:

- a slash, a reward or a reputation change that no logged verdict calls for;
- money minted by a deposit the rules' admin did not sign;
- a stake or an unstake signed by another key than the account's, or not signed at all;
- a signed stake request logged a second time (a replay);
- an unstake released before the rules' delay;
- a fee with no inference to pay for.

The second slash for one dispute is in ``test_a_second_slash_for_one_settled_dispute_...``,
on a real network where a cheating node was convicted. The fold's own unit tests
(``tests/unit/ledger/test_state.py``) cover each rule entry by entry.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from _coordinator import running_coordinator
from _rogue import RogueLog
from veriml.cli.app import app as cli
from veriml.client import Client, LocalNetwork
from veriml.core.canonical import canonicalize
from veriml.core.dsse import Envelope
from veriml.core.errors import VerificationError
from veriml.core.keys import SigningKey, generate_key, load_private_key
from veriml.core.timestamps import format_time
from veriml.ledger.entries import (
    DepositEntry,
    FeeEntry,
    ReputationEntry,
    RewardEntry,
    SlashEntry,
    StakeEntry,
    UnstakeEntry,
    parse_entry,
)
from veriml.models.examples import build_mlp, write_example_folder
from veriml.protocol.accounts import LedgerRequest


@dataclass(frozen=True)
class Ledger:
    """A coordinator whose log holds a deposit to ``alice`` and ``alice``'s signed stake."""

    url: str
    app: FastAPI
    admin: SigningKey
    alice: SigningKey
    mallory: SigningKey
    stake: Envelope
    """alice's genuine, already logged, stake request."""

    @property
    def account(self) -> str:
        return self.alice.key_id

    def audit(self) -> Any:
        vkey = httpx.get(self.url + "/v1/info").json()["log_vkey"]
        return CliRunner().invoke(cli, ["log", "audit", self.url + "/log", "--vkey", vkey])

    def append(self, entry: bytes) -> int:
        """What a lying coordinator does: log ``entry`` without its ledger's check."""
        return int(self.app.state.coordinator.log.add(entry))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with running_coordinator(tmp_path / "home") as (url, app):
        admin = load_private_key(tmp_path / "home" / "coordinator" / "coordinator.key")
        alice, mallory = generate_key(), generate_key()
        with Client(url, verify=False, key=alice) as client:
            client.deposit(alice.key_id, 1_000, admin)
            client.deposit(mallory.key_id, 1_000, admin)
            client.stake(500)
        stake = next(
            e.authorization
            for e in map(
                parse_entry, app.state.coordinator.log.entries(0, app.state.coordinator.log.size)
            )
            if isinstance(e, StakeEntry)
        )
        assert stake is not None
        yield Ledger(url, app, admin, alice, mallory, stake)


def _now(offset: float = 0.0) -> str:
    return format_time(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset))


def _signed(key: SigningKey, op: str, amount: int, **members: str) -> Envelope:
    return LedgerRequest.signed(key, op, amount, **members)


def _with_member(entry: Any, **changes: Any) -> bytes:
    """``entry``'s logged bytes with members replaced: what a forger writes when the entry
    classes refuse to build it (the bytes are still canonical JSON)."""
    obj = json.loads(entry.to_bytes())
    obj.update(changes)
    return canonicalize(obj)


Attack = Callable[[Ledger], bytes]

ATTACKS: dict[str, Attack] = {
    "slash-without-verdict": lambda s: SlashEntry(
        s.account, 100, 100, "dispute-that-never-was", _now()
    ).to_bytes(),
    "reward-without-verdict": lambda s: RewardEntry(
        s.mallory.key_id, 100, "challenge-won", _now(), dispute="dispute-that-never-was"
    ).to_bytes(),
    "reputation-without-verdict": lambda s: ReputationEntry(
        s.account, 1_000, "dispute-won", _now()
    ).to_bytes(),
    "deposit-not-by-the-admin": lambda s: DepositEntry(
        s.mallory.key_id,
        10**9,
        _now(),
        "",
        _signed(s.mallory, "deposit", 10**9, to=s.mallory.key_id, memo=""),
    ).to_bytes(),
    "stake-signed-by-another-key": lambda s: _with_member(
        StakeEntry(s.mallory.key_id, 100, _now(), _signed(s.mallory, "stake", 100)),
        account=s.account,
    ),
    "stake-unsigned": lambda s: _with_member(
        StakeEntry(s.account, 100, _now(), _signed(s.alice, "stake", 100)), authorization=None
    ),
    "stake-replayed": lambda s: StakeEntry(s.account, 500, _now(), s.stake).to_bytes(),
    "unstake-signed-by-another-key": lambda s: _with_member(
        UnstakeEntry(
            s.mallory.key_id, 100, _now(), _now(86_400), _signed(s.mallory, "unstake", 100)
        ),
        account=s.account,
    ),
    "unstake-released-before-its-delay": lambda s: UnstakeEntry(
        s.account, 500, _now(), _now(), _signed(s.alice, "unstake", 500)
    ).to_bytes(),
    "fee-for-no-inference": lambda s: FeeEntry(
        s.account,
        s.mallory.key_id,
        100,
        "inference-that-never-was",
        _now(),
        _signed(s.alice, "payment", 100, request="inference-that-never-was"),
    ).to_bytes(),
}


REASONS = {  # what the auditor says: the rule each attack breaks
    "slash-without-verdict": "must follow from a logged verdict",
    "reward-without-verdict": "must follow from a logged verdict",
    "reputation-without-verdict": "must follow from a logged verdict",
    "deposit-not-by-the-admin": "signed by the ledger's admin account",
    "stake-signed-by-another-key": "authorization is for another account",
    "stake-unsigned": "authorization must be a DSSE envelope",
    "stake-replayed": "already used",
    "unstake-signed-by-another-key": "authorization is for another account",
    "unstake-released-before-its-delay": "no earlier than the rules' unstake delay",
    "fee-for-no-inference": "follows, at once, the inference entry",
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_an_entry_nobody_had_the_right_to_write_fails_the_audit(
    ledger: Ledger, attack: str
) -> None:
    clean = ledger.audit()
    assert clean.exit_code == 0, clean.output
    index = ledger.append(ATTACKS[attack](ledger))
    result = ledger.audit()
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, VerificationError)
    assert result.exception.check == "ledger"
    assert result.exception.evidence["index"] == index
    assert REASONS[attack] in result.exception.diagnostics()


# -- a second slash for one dispute, on a real network ---------------------------------------------

X = {"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)}


@pytest.mark.slow
def test_a_second_slash_for_one_settled_dispute_fails_the_audit(tmp_path: Path) -> None:
    folder = write_example_folder(tmp_path / "mlp", build_mlp((4, 16, 3), seed=3), name="mlp")
    key = tmp_path / "publisher.key"
    generate_key("ec").save(key)
    with LocalNetwork(
        tmp_path / "net", nodes=3, port=0, byzantine={2: "wrong-output"}, witnesses=0
    ) as net:
        with Client(net.url, log_vkey=net.log_vkey) as client:
            client.publish(folder, key)
            for attempt in range(12):  # the cheater must be among the drawn nodes
                answer = client.infer(
                    "mlp", X, policy="quorum:3/2", request_id=f"slash-{attempt}", verify=False
                )
                if answer.verdict.disputes:
                    break
        assert answer.verdict.disputes, "no draw put the cheater in the quorum"
        audit = ["log", "audit", net.url + "/log", "--vkey", net.log_vkey]
        clean = CliRunner().invoke(cli, audit)
        assert clean.exit_code == 0, clean.output
        with RogueLog(net) as rogue:
            slash = next(
                data
                for data in rogue.log.entries(0, rogue.log.size)
                if isinstance(parse_entry(data), SlashEntry)
            )
            index = rogue.append(slash)  # the very same slash, logged again
        result = CliRunner().invoke(cli, audit)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, VerificationError)
    assert result.exception.check == "ledger"
    assert result.exception.evidence["index"] == index
    # The verdict was settled once already: nothing it calls for is left to write.
    assert "must follow from a logged verdict" in result.exception.diagnostics()
