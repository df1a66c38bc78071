"""``veriml log audit`` reports, per node, how many of its ``spot:P`` jobs were checked: the
fraction is auditable from the log because every verdict reveals its secret
(docs/verification.md, "Spot checks")."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from veriml.cli.log_client import LedgerFold
from veriml.core.digest import Digest
from veriml.core.errors import VerificationError
from veriml.core.keys import generate_key
from veriml.core.tensors import tensor_digest
from veriml.ledger.entries import InferenceEntry, StakeEntry
from veriml.models.examples import build_mlp, write_example_folder
from veriml.runtime import runner_for
from veriml.tlog.checkpoint import Checkpoint, sign_checkpoint
from veriml.tlog.merkle import leaf_hash, root_from_leaf_hashes
from veriml.tlog.note import NoteSigner
from veriml.tlog.tiles import build_tiles
from veriml.verify.policy import Policy, SpotReveal, decide, spot_checked, spot_commitment

POLICY = "spot:0.5"
X = np.ones((1, 4), np.float32)


def _spot_entries(folder: Path, jobs: int) -> tuple[str, list[bytes], int]:
    """``jobs`` spot:0.5 inferences by one primary node (a second node checks the drawn ones);
    the primary's id, the entries, and how many were drawn."""
    runner = runner_for(folder)
    primary, checker = generate_key(), generate_key()
    policy = Policy.parse(POLICY)
    entries, drawn = [], 0
    for _ in range(jobs):
        secret = secrets.token_bytes(32)
        request_id = str(uuid.uuid4())
        first = runner.run(
            {"x": X}, key=primary, policy=POLICY, request_id=request_id,
            spot=spot_commitment(secret),
        )  # fmt: skip
        checked = spot_checked(policy, secret, first.receipt)
        runs = [first]
        if checked:
            runs.append(runner.run({"x": X}, key=checker, policy=POLICY, request_id=request_id))
        answers = [
            (r.predicate.node_id, f"op-{i}", {n: tensor_digest(a) for n, a in r.outputs.items()})
            for i, r in enumerate(runs)
        ]
        verdict = decide(policy, answers, spot=SpotReveal(secret, checked))
        entries.append(
            InferenceEntry(
                request_id=request_id,
                request_digest=first.predicate.request_digest,
                model=first.predicate.model_digest,
                policy=POLICY,
                receipts=tuple(r.receipt for r in runs),
                verdict=verdict,
            ).to_bytes()
        )
        drawn += checked
    return primary.key_id, entries, drawn


@pytest.fixture(scope="module")
def spot_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[bytes], int]:
    tmp = tmp_path_factory.mktemp("spot")
    folder = write_example_folder(tmp / "m", build_mlp((4, 8, 3), seed=3), name="m")
    return _spot_entries(folder, 24)


def test_the_fold_counts_checked_spot_jobs_per_primary_node(
    spot_log: tuple[str, list[bytes], int],
) -> None:
    primary, entries, drawn = spot_log
    fold = LedgerFold(required=True)
    for index, entry in enumerate(entries):
        fold(index, entry)
    assert fold.spot == {primary: [len(entries), drawn]}
    assert fold.state is not None
    # Every accepted job credits its agreeing nodes: the primary always agrees here.
    assert fold.state.account(primary).jobs == len(entries)


def test_a_refused_entry_names_its_index(spot_log: tuple[str, list[bytes], int]) -> None:
    primary, entries, _ = spot_log
    fold = LedgerFold(required=False)
    fold(0, entries[0])
    with pytest.raises(VerificationError) as caught:
        fold(1, StakeEntry(primary, 5, "2026-11-26T10:00:00.000000Z").to_bytes())
    assert caught.value.check == "ledger"
    assert caught.value.evidence["index"] == 1


def test_audit_prints_the_checked_fraction_per_node(
    spot_log: tuple[str, list[bytes], int], tmp_path: Path
) -> None:
    primary, entries, drawn = spot_log
    signer = NoteSigner("test.veriml.local/spot-log", generate_key())
    folder = tmp_path / "log"
    for path, data in build_tiles(entries).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    root = root_from_leaf_hashes([leaf_hash(e) for e in entries])
    cp = Checkpoint(signer.name, len(entries), root)
    (folder / "checkpoint").write_bytes(sign_checkpoint(cp, [signer]))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VERIML_")}
    args = [sys.executable, "-m", "veriml", "log", "audit", str(folder), "--vkey", signer.vkey]
    human = subprocess.run(args, capture_output=True, text=True, timeout=120, env=clean)
    assert human.returncode == 0, human.stderr
    assert f"spot checks of node {primary}: {drawn} of {len(entries)} job(s)" in human.stdout
    report = subprocess.run(
        [*args, "--json"], capture_output=True, text=True, timeout=120, env=clean
    )
    spot = json.loads(report.stdout)["ledger"]["spot"]
    assert spot == {primary: {"jobs": len(entries), "checked": drawn}}
    assert Digest.from_text(json.loads(report.stdout)["ledger"]["digest"])
