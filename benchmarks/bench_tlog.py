"""Transparency log storage: integration throughput and inclusion proofs from storage.

* ``sqlite_integration_ratio``: 1 KiB entries through the batching sequencer into SQLite (WAL,
  synchronous=FULL, every batch one transaction with its tiles and a signed checkpoint),
  divided by 10,000 entries/s, the figure Tessera's POSIX back end reports on NVMe (its README).
  Goal ≥ 2 (20,000 entries/s).
* ``postgres_integration_ratio``: the same into PostgreSQL (127.0.0.1), against the same
  10,000/s, if a server is reachable.
* ``inclusion_proof_ratio``: 1 ms ÷ the mean time to produce an inclusion proof of a random
  entry from stored tiles, at 10^6 entries (10^5 with ``--quick``). Goal ≥ 1.
* ``inclusion_verify_ratio``: 100 µs ÷ the mean time to verify one. Goal ≥ 1.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from veriml.core.keys import generate_key
from veriml.tlog.log import Log, LogOptions
from veriml.tlog.merkle import leaf_hash, verify_inclusion
from veriml.tlog.note import NoteSigner

TESSERA_POSIX = 10_000.0
PROOF_GOAL_S = 1e-3
VERIFY_GOAL_S = 100e-6
POSTGRES_URL = os.environ.get(
    "VERIML_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _throughput(url: str, count: int) -> float:
    signer = NoteSigner("bench.example/log", generate_key())
    rng = random.Random(1)
    entries = [rng.randbytes(1024) for _ in range(count)]
    opts = LogOptions(batch_size=4096, batch_interval=0.01)
    with Log.open(url, signer, options=opts) as log:
        log.add_many(entries[:1024])  # warm up: schema, connections, caches
        t0 = time.perf_counter()
        log.add_many(entries[1024:])
        elapsed = time.perf_counter() - t0
    return (count - 1024) / elapsed


def _postgres_schema() -> tuple[str, Any] | None:
    import sqlalchemy as sa

    schema = f"veriml_bench_{uuid.uuid4().hex[:8]}"
    try:
        engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception:  # no server: the PostgreSQL figure is left out
        return None
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}", (engine, schema)


def _drop_schema(handle: Any) -> None:
    import sqlalchemy as sa

    engine, schema = handle
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def _proofs(url: str, size: int, samples: int) -> tuple[float, float]:
    """Mean seconds to produce and to verify an inclusion proof in a tree of ``size``."""
    signer = NoteSigner("bench.example/proofs", generate_key())
    opts = LogOptions(batch_size=8192, batch_interval=0.0)
    with Log.open(url, signer, options=opts) as log:
        step = 50_000
        for start in range(0, size, step):
            log.add_many([b"%d" % i for i in range(start, min(size, start + step))])
        root = log.storage.state().root_hash
        rng = random.Random(7)
        indexes = [rng.randrange(size) for _ in range(samples)]
        log.inclusion_proof(0, size)
        t0 = time.perf_counter()
        proofs = [log.inclusion_proof(i, size) for i in indexes]
        produce = (time.perf_counter() - t0) / samples
    leaves = [leaf_hash(b"%d" % i) for i in indexes]
    t0 = time.perf_counter()
    for index, leaf, proof in zip(indexes, leaves, proofs, strict=True):
        verify_inclusion(leaf, index, size, proof, root)
    verify = (time.perf_counter() - t0) / samples
    return produce, verify


def run(quick: bool) -> dict[str, object]:
    count = 20_000 if quick else 100_000
    size = 100_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_rate = _throughput(f"sqlite:///{Path(tmp) / 'through.db'}", count)
        produce, verify = _proofs(f"sqlite:///{Path(tmp) / 'proofs.db'}", size, 2000)
    result: dict[str, object] = {
        "description": __doc__.strip().splitlines()[0]
        + " Baseline: Tessera POSIX, ~10,000 entries/s (reported on NVMe).",
        "sqlite_entries_per_s": round(sqlite_rate),
        "sqlite_integration_ratio": sqlite_rate / TESSERA_POSIX,
        "proof_tree_size": size,
        "inclusion_proof_us": produce * 1e6,
        "inclusion_proof_ratio": PROOF_GOAL_S / produce,
        "inclusion_verify_us": verify * 1e6,
        "inclusion_verify_ratio": VERIFY_GOAL_S / verify,
        "goals": {
            "sqlite_integration_ratio": 2.0,
            "inclusion_proof_ratio": 1.0,
            "inclusion_verify_ratio": 1.0,
        },
    }
    pg = _postgres_schema()
    if pg is not None:
        url, handle = pg
        try:
            pg_rate = _throughput(url, count)
        finally:
            _drop_schema(handle)
        result["postgres_entries_per_s"] = round(pg_rate)
        result["postgres_integration_ratio"] = pg_rate / TESSERA_POSIX
    return result
