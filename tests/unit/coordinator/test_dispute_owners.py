"""A killed coordinator's disputes are taken over at once, not after their leases: its
liveness lock (a file lock beside SQLite, a session lock on PostgreSQL) goes with the process,
so another replica, or the restarted coordinator, proves it dead. A live owner's disputes, and
those of an owner whose liveness cannot be told, wait for their leases as before."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from _ledger import receipt
from veriml.coordinator.db import tables as db
from veriml.coordinator.db.disputes import DisputeRecord, DisputeStore, PartyRecord
from veriml.coordinator.disputes.parties import Claim
from veriml.core.digest import Digest
from veriml.core.keys import generate_key

OWNER = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = [{tests!r}, {here!r}]
    from veriml.coordinator.db import tables as db
    from veriml.coordinator.db.disputes import DisputeStore
    from test_dispute_owners import record

    store = DisputeStore(db.open_engine({url!r}), owner="killed", lease=3600)
    store.insert(record("d-killed"))
    print("owns", flush=True)
    time.sleep(600)
    """
)


def record(dispute: str = "d-1") -> DisputeRecord:
    node = generate_key()
    outputs = {"y": Digest.of(dispute.encode())}
    return DisputeRecord(
        id=dispute,
        inference="req-1",
        defendant=PartyRecord(Claim(node.key_id, outputs, None, node.key_id)),
        challenger=PartyRecord(Claim("sha256:" + "2" * 64, {"y": Digest.of(b"z")}, None)),
        claim=Digest.of(dispute.encode()),
        receipt=receipt(node, "req-1"),
        model=Digest.of(b"model"),
        mode="bitwise",
        policy="none",
        inputs={"x": Digest.of(b"x")},
    )


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    opened = db.open_engine(url)
    yield opened
    opened.dispose()


def owner_process(url: str) -> subprocess.Popen[str]:
    """A coordinator stand-in that opens one dispute and keeps running."""
    code = OWNER.format(
        tests=str(Path(__file__).parents[2]), here=str(Path(__file__).parent), url=url
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "owns":
        proc.kill()
        raise AssertionError(line + proc.stdout.read())
    return proc


def test_a_killed_owner_s_disputes_are_taken_over_at_once_and_once(
    url: str, engine: Engine
) -> None:
    proc = owner_process(url)
    try:
        replica = DisputeStore(engine, owner="replica", lease=60)
        assert replica.claim_due() == []  # alive, and its lease runs for an hour
        proc.kill()  # SIGKILL: nothing given up
        proc.wait(30)
        other = DisputeStore(engine, owner="other", lease=60)
        (taken,) = replica.claim_due()
        assert taken.id == "d-killed"
        assert other.claim_due() == []  # claimed once
        with engine.connect() as conn:
            owner = conn.execute(sa.select(db.disputes.c.owner)).scalar_one()
        assert owner == "replica@live"  # it holds its own liveness lock
    finally:
        proc.kill()
        proc.wait(30)
        if proc.stdout:
            proc.stdout.close()


def test_a_live_owner_keeps_its_disputes_until_its_lease_runs_out(engine: Engine) -> None:
    first = DisputeStore(engine, owner="first", lease=3600)
    first.insert(record())
    second = DisputeStore(engine, owner="second", lease=60)
    assert second.claim_due() == []
    assert [r.id for r in second.claim_due(now=10**12)] == ["d-1"]


def test_an_owner_whose_liveness_cannot_be_told_waits_for_its_lease(engine: Engine) -> None:
    """A row written by a process that held no liveness lock (an older version)."""
    row = record().to_row(owner="older-version", lease_until=10**11)
    with engine.begin() as conn:
        conn.execute(sa.insert(db.disputes).values(**row))
    store = DisputeStore(engine, owner="new", lease=60)
    assert store.claim_due() == []
    assert [r.id for r in store.claim_due(now=10**12)] == ["d-1"]
