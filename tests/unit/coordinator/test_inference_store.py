"""InferenceStore: concurrent answers are proved and stored together, each exactly once."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from veriml.coordinator import db
from veriml.coordinator.inference_store import InferenceStore, StoredInference
from veriml.core.digest import Digest
from veriml.core.errors import Conflict
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


def build_for(request_id: str) -> Any:
    def build(index: int, proof: Sequence[bytes], checkpoint: bytes) -> StoredInference:
        return StoredInference(
            inference_id=request_id,
            model=Digest.of(b"m"),
            policy="none",
            request_digest=Digest.of(request_id.encode()),
            log_index=index,
            response={
                "id": request_id,
                "log": {
                    "index": index,
                    "inclusion_proof": [base64.b64encode(h).decode() for h in proof],
                    "checkpoint": checkpoint.decode(),
                },
            },
        )

    return build


def test_concurrent_answers_share_transactions_and_each_proof_verifies(
    store: tuple[InferenceStore, Log, sa.Engine],
) -> None:
    inferences, log, engine = store
    commits: list[int] = []
    event.listen(engine, "commit", lambda conn: commits.append(1))

    async def answer(i: int) -> StoredInference:
        index = await log.add_async(entry(i))
        return await inferences.commit(index, build_for(f"r{i}"))

    async def main() -> list[StoredInference]:
        return list(await asyncio.gather(*(answer(i) for i in range(40))))

    stored = asyncio.run(main())
    verifier = NoteVerifier.from_vkey(log.vkey)
    for i, row in enumerate(stored):
        proof = row.response["log"]
        checkpoint, _ = open_checkpoint(proof["checkpoint"].encode(), verifier)
        hashes = [base64.b64decode(h) for h in proof["inclusion_proof"]]
        verify_inclusion(
            leaf_hash(entry(i)), row.log_index, checkpoint.size, hashes, checkpoint.root_hash
        )
        assert inferences.get(f"r{i}") == (Digest.of(f"r{i}".encode()), dict(row.response))
    assert len(commits) < 40


def test_a_stored_id_is_a_conflict_for_that_answer_only(
    store: tuple[InferenceStore, Log, sa.Engine],
) -> None:
    inferences, log, _ = store

    async def main() -> list[Any]:
        first = await inferences.commit(log.add(entry(0)), build_for("same"))
        again = [
            inferences.commit(log.add(entry(1)), build_for("same")),
            inferences.commit(log.add(entry(2)), build_for("other")),
        ]
        return [first, *await asyncio.gather(*again, return_exceptions=True)]

    first, duplicate, other = asyncio.run(main())
    assert isinstance(duplicate, Conflict)
    assert isinstance(other, StoredInference)
    assert inferences.get("same") == (Digest.of(b"same"), dict(first.response))
    assert inferences.get("missing") is None
