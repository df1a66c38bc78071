"""Log entries, every type: any bytes parse or are a FormatError, and a parsed entry is a
fixed point of ``to_bytes``/``parse_entry`` (its bytes are a function of its value)."""

from __future__ import annotations

import json
from typing import Any

from _fuzzing import attempt, dumps, fuzz_settings, mutated_bytes, mutated_json, raw_json_bytes
from hypothesis import given
from hypothesis import strategies as st

from _ledger import (
    ACME,
    ACME_NODE,
    ADMIN,
    ALICE,
    BOLT_NODE,
    WATCHER,
    beacon,
    challenge,
    deposit,
    fee,
    inference,
    model,
    namespace,
    network,
    node_entry,
    settlement,
    stake,
    state_entry,
    unstake,
    verdict,
)
from veriml.core.errors import FormatError
from veriml.ledger.entries import Entry, parse_entry


def _entries() -> list[Entry]:
    state = network()
    state.apply(inference("req-1", ACME_NODE, BOLT_NODE))
    state.apply(challenge("d1", ACME_NODE, WATCHER, bond=10, at=5))
    decided = verdict("d1", "challenger", at=6)
    return [
        model("acme/iris", ACME),
        model("iris", None),
        namespace("acme", ACME),
        node_entry(ACME_NODE, ACME),
        inference("req-1", ACME_NODE, BOLT_NODE, extra={"client": ALICE.key_id, "kind": "chat"}),
        deposit(ALICE, 100, at=1, memo="top-up"),
        stake(ACME, 60, at=2),
        unstake(ACME, 10, at=3),
        fee(ALICE, ACME_NODE, 5, at=4),
        challenge("d1", ACME_NODE, WATCHER, bond=10, at=5),
        challenge("d2", ACME_NODE, BOLT_NODE.key_id, node=BOLT_NODE, at=5),
        decided,
        *settlement(state, decided),
        state_entry(state, at=7),
        beacon(0),
        beacon(3, at=8),
    ]


ENTRIES = _entries()
KINDS = sorted({type(e).__name__ for e in ENTRIES})
SIGNERS = [ACME, ACME_NODE, ADMIN, ALICE, BOLT_NODE, WATCHER]
inputs = st.one_of(
    mutated_json([json.loads(e.to_bytes()) for e in ENTRIES], signers=SIGNERS).map(
        lambda t: dumps(t[0])
    ),
    mutated_json([json.loads(e.to_bytes()) for e in ENTRIES], signers=SIGNERS).map(
        lambda t: dumps(t[0], ascii_only=False)
    ),
    mutated_bytes([e.to_bytes() for e in ENTRIES]),
    raw_json_bytes(),
)


def test_every_entry_type_is_fuzzed_and_round_trips() -> None:
    assert len(KINDS) == 15, KINDS
    for entry in ENTRIES:
        assert parse_entry(entry.to_bytes()) == entry


@fuzz_settings()
@given(inputs)
def test_a_log_entry_parses_to_a_fixed_point_or_is_a_format_error(data: bytes) -> None:
    entry, _ = attempt(lambda: parse_entry(data), allowed=(FormatError,), size=len(data))
    if entry is None:
        return
    again: Any
    again, _ = attempt(entry.to_bytes, allowed=(FormatError,), size=len(data))
    if again is not None:
        assert parse_entry(again) == entry
        assert parse_entry(again).to_bytes() == again
