"""Open disputes in the database (docs/verification.md, "Persistence"): a row round-trips
everything a restart needs, one replica drives each dispute at a time (leases), a stopped one
hands its disputes over at once, and one claim is open once, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from _ledger import receipt
from veriml.coordinator.db import tables as db
from veriml.coordinator.db.disputes import DisputeRecord, DisputeStore, PartyRecord, answered_at
from veriml.coordinator.disputes.parties import Claim
from veriml.coordinator.nodes.scheduler import Candidate
from veriml.core.digest import Digest
from veriml.core.errors import ConflictError
from veriml.core.keys import generate_key
from veriml.core.receipt import TraceCommitment

NODE = generate_key()
TRACE = TraceCommitment(Digest.of(b"root"), 7)


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgres":
        url = str(request.getfixturevalue("postgres_url"))
    else:
        url = f"sqlite:///{tmp_path / 'state.db'}"
    opened = db.open_engine(url)
    yield opened
    opened.dispose()


def record(dispute: str = "d-1", *, claim: bytes = b"claim") -> DisputeRecord:
    node = Candidate(
        node_id=NODE.key_id,
        operator="sha256:" + "1" * 64,
        endpoint="http://node.test:8701",
        public_key=NODE.public.to_pem().decode(),
        log_index=3,
        last_seen=0.0,
    )
    outputs = {"y": Digest.of(b"y")}
    return DisputeRecord(
        id=dispute,
        inference="req-1",
        defendant=PartyRecord(Claim(NODE.key_id, outputs, TRACE, NODE.key_id), node),
        challenger=PartyRecord(Claim("sha256:" + "2" * 64, {"y": Digest.of(b"z")}, TRACE)),
        claim=Digest.of(claim),
        receipt=receipt(NODE, "req-1"),
        model=Digest.of(b"model"),
        mode="bitwise",
        policy="none",
        inputs={"x": Digest.of(b"x")},
        move={"index": 6},
    )


def test_a_stored_dispute_comes_back_whole_to_the_replica_that_takes_it_over(
    engine: Engine,
) -> None:
    first = DisputeStore(engine, owner="first", lease=60)
    first.insert(record())
    reveals = [(6, Digest.of(b"d"), Digest.of(b"c"))]
    first.update("d-1", opened=12, reveals=reveals, move={"index": 3}, rounds=1, messages=2)
    second = DisputeStore(engine, owner="second", lease=60)
    assert second.claim_due() == []  # the first replica still drives it
    first.release()  # it stops: the next start takes over at once
    (back,) = second.claim_due()
    assert second.claim_due() == []  # taken once
    assert (back.opened, back.reveals, back.move, back.rounds) == (12, reveals, {"index": 3}, 1)
    assert back.defendant.node is not None
    assert back.defendant.node.endpoint == "http://node.test:8701"
    assert back.defendant.claim == record().defendant.claim
    assert back.challenger.node is None  # a remote challenger
    assert back.challenger.claim.trace == TRACE
    assert back.receipt == record().receipt
    assert (back.claim, back.inputs) == (record().claim, record().inputs)
    first.update("d-1", move={"index": 1})  # no longer its dispute: nothing changes
    assert second.claim_due(now=10**12)[0].move == {"index": 3}
    second.delete("d-1")
    assert second.ids() == set()


def test_an_expired_lease_is_taken_over_and_a_live_one_is_not(engine: Engine) -> None:
    first = DisputeStore(engine, owner="first", lease=60)
    first.insert(record())
    second = DisputeStore(engine, owner="second", lease=60)
    assert [r.id for r in second.claim_due(now=10**12)] == ["d-1"]  # the first one died
    first.renew(["d-1"])  # too late: the row is the second's
    assert first.claim_due() == []


def test_one_claim_is_open_once_across_replicas(engine: Engine) -> None:
    DisputeStore(engine, owner="first", lease=60).insert(record("d-1"))
    with pytest.raises(ConflictError, match="already open"):
        DisputeStore(engine, owner="second", lease=60).insert(record("d-2"))
    DisputeStore(engine, owner="second", lease=60).insert(record("d-3", claim=b"another"))


def test_an_answer_s_recorded_time_is_read_for_its_challenge_window(engine: Engine) -> None:
    assert answered_at(engine, "no-such-answer") is None
    with engine.begin() as conn:
        conn.execute(
            db.inferences.insert().values(
                id="req-1",
                model="sha256:" + "0" * 64,
                policy="none",
                request_digest="sha256:" + "0" * 64,
                response={},
                created_at="2026-11-26T10:00:00.000000Z",
            )
        )
    assert answered_at(engine, "req-1") == "2026-11-26T10:00:00.000000Z"
