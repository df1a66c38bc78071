"""The soak's accounting (benchmarks/soak.py), without a network: which errors a retry with the
same request id is meant to resolve, how a restarted process's memory drift is measured, and
that the soak section merges into the report without touching the others."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.soak import _drift, _merge, _retriable

from veriml.core.errors import ConflictError, NodeUnavailableError, StorageError, VerificationError


def test_only_errors_a_same_id_retry_resolves_are_retriable() -> None:
    assert _retriable(NodeUnavailableError("coordinator unreachable"))
    assert _retriable(StorageError("another replica is answering this Idempotency-Key; retry"))
    assert _retriable(ConflictError("a request with this Idempotency-Key is running"))
    assert not _retriable(ConflictError("this Idempotency-Key was used for another request"))
    assert not _retriable(VerificationError("receipt signature does not verify"))


def test_drift_is_measured_within_the_last_process_after_its_warm_up() -> None:
    # pid 1 grew and was replaced by pid 2: only pid 2's growth after its warm-up counts.
    series = [(0.0, 1, 100.0), (30.0, 1, 180.0), (40.0, 2, 90.0), (60.0, 2, 120.0)]
    series += [(90.0, 2, 125.0)]
    assert _drift(series, warmup=20.0) == (125.0, 5.0)


def test_the_soak_section_is_merged_and_the_others_kept(tmp_path: Path) -> None:
    machine = {"platform": "test", "cpus": 2, "python": "3.11"}
    before = {"started": "then", "quick": False, "machine": machine, "benchmarks": {"tlog": {}}}
    before["benchmarks"]["tlog"] = {"appends_per_s_ratio": 2.0}
    (tmp_path / "latest.json").write_text(json.dumps(before))
    _merge({"errors": 0, "lost": 0, "goals_max": {"errors": 0, "lost": 0}}, tmp_path)
    after = json.loads((tmp_path / "latest.json").read_text())
    assert after["benchmarks"]["tlog"] == {"appends_per_s_ratio": 2.0}
    assert after["benchmarks"]["soak"]["lost"] == 0
    assert "## soak" in (tmp_path / "latest.md").read_text()
