"""InferenceStore: concurrent answers are reserved, proved and stored together, each exactly
once, and a row a crash left pending converges with the log without a second entry."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from veriml.coordinator.db import tables as db
from veriml.coordinator.db.inferences import (
    CLAIM_TIMEOUT,
    InferenceStore,
    PendingInference,
    StoredInference,
)
from veriml.core.digest import Digest
from veriml.core.errors import ConflictError, NotFoundError
from veriml.core.keys import generate_key
from veriml.tlog import leaf_hash, open_checkpoint, verify_inclusion
from veriml.tlog.log import Log, LogOptions
from veriml.tlog.note import NoteSigner, NoteVerifier

SIGNER = NoteSigner("veriml.test/store", generate_key("ed25519"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[InferenceStore, Log, sa.Engine]]:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = db.open_engine(url)
    log = Log.open(url, SIGNER, options=LogOptions(batch_interval=0))
    try:
        yield InferenceStore(engine, log), log, engine
    finally:
        log.close()
        engine.dispose()


def entry(i: int) -> bytes:
    return b'{"type":"inference","n":%d}' % i


def pending(request_id: str, i: int) -> PendingInference:
    return PendingInference(
        inference_id=request_id,
        model=Digest.of(b"m"),
        policy="none",
        request_digest=Digest.of(request_id.encode()),
        entry=entry(i),
        answer={"id": request_id, "outputs": {"y": i}},
    )


def check_proof(log: Log, row: StoredInference | dict[str, Any], i: int) -> None:
    response = row.response if isinstance(row, StoredInference) else row
    proof = response["log"]
    checkpoint, _ = open_checkpoint(proof["checkpoint"].encode(), NoteVerifier.from_vkey(log.vkey))
    hashes = [base64.b64decode(h) for h in proof["inclusion_proof"]]
    verify_inclusion(
        leaf_hash(entry(i)), proof["index"], checkpoint.size, hashes, checkpoint.root_hash
    )


async def answer(inferences: InferenceStore, log: Log, request_id: str, i: int) -> StoredInference:
    held = await inferences.reserve(pending(request_id, i))
    return await inferences.commit(await log.add_async(held.entry), held)


def test_concurrent_answers_share_transactions_and_each_proof_verifies(
    store: tuple[InferenceStore, Log, sa.Engine],
) -> None:
    inferences, log, engine = store
    commits: list[int] = []
    event.listen(engine, "commit", lambda conn: commits.append(1))

    async def main() -> list[StoredInference]:
        return list(await asyncio.gather(*(answer(inferences, log, f"r{i}", i) for i in range(40))))

    stored = asyncio.run(main())
    for i, row in enumerate(stored):
        check_proof(log, row, i)
        assert row.response["outputs"] == {"y": i}
        assert inferences.get(f"r{i}") == (Digest.of(f"r{i}".encode()), dict(row.response))
    assert len(commits) < 2 * 40


def test_a_reserved_id_is_a_conflict_for_that_answer_only(
    store: tuple[InferenceStore, Log, sa.Engine],
) -> None:
    inferences, log, _ = store

    async def main() -> list[Any]:
        first = await answer(inferences, log, "same", 0)
        again = [
            inferences.reserve(pending("same", 1)),
            inferences.reserve(pending("other", 2)),
        ]
        return [first, *await asyncio.gather(*again, return_exceptions=True)]

    first, duplicate, other = asyncio.run(main())
    assert isinstance(duplicate, ConflictError)
    assert isinstance(other, PendingInference)
    assert inferences.get("same") == (Digest.of(b"same"), dict(first.response))
    assert inferences.get("missing") is None
    assert inferences.recover("missing") is None


def test_a_pending_row_whose_entry_is_logged_is_completed_without_a_second_entry(
    store: tuple[InferenceStore, Log, sa.Engine],
) -> None:
    inferences, log, _ = store
    held = asyncio.run(inferences.reserve(pending("crashed", 7)))
    log.add(held.entry)  # ... and the coordinator dies before commit
    size = log.size
    assert inferences.get("crashed") is None
    recovered = inferences.recover("crashed")
    assert recovered is not None
    assert recovered[1]["outputs"] == {"y": 7}
    check_proof(log, recovered[1], 7)
    assert log.size == size
    assert inferences.get("crashed") == recovered
    assert inferences.recover("crashed") == recovered


def test_a_pending_row_not_logged_is_left_to_its_owner_until_its_claim_expires(
    store: tuple[InferenceStore, Log, sa.Engine],
) -> None:
    inferences, log, _ = store
    asyncio.run(inferences.reserve(pending("unlogged", 3)))
    size = log.size
    with pytest.raises(NotFoundError):
        inferences.recover("unlogged")
    assert inferences.recover_all() == 0
    assert log.size == size
    later = time.time() + CLAIM_TIMEOUT + 1
    assert inferences.recover_all(now=later) == 1
    assert log.size == size + 1
    recovered = inferences.get("unlogged")
    assert recovered is not None
    check_proof(log, recovered[1], 3)
    assert inferences.recover_all(now=later + CLAIM_TIMEOUT + 1) == 0
    assert log.size == size + 1


def test_recover_all_completes_every_logged_pending_row(
    store: tuple[InferenceStore, Log, sa.Engine],
) -> None:
    inferences, log, _ = store

    async def reserve_all() -> list[PendingInference]:
        return list(
            await asyncio.gather(*(inferences.reserve(pending(f"p{i}", i)) for i in range(5)))
        )

    for held in asyncio.run(reserve_all()):
        log.add(held.entry)
    assert inferences.recover_all() == 5
    for i in range(5):
        found = inferences.get(f"p{i}")
        assert found is not None
        check_proof(log, found[1], i)
