"""``veriml log audit`` reports, per node, how many of its ``spot:P`` jobs were checked: the
fraction is auditable from the log because every verdict reveals its draw secret, drawn from
an epoch key the log committed to before the request and reveals after it
(docs/verification.md, "Spot checks" and "Randomness")."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from _ledger import ALICE, beacon, deposit, drawn, state_entry
from veriml.cli.log_client import LedgerFold
from veriml.core.digest import Digest
from veriml.core.errors import VerificationError
from veriml.core.keys import generate_key
from veriml.core.tensors import tensor_digest
from veriml.ledger.entries import InferenceEntry, parse_entry
from veriml.ledger.state import LedgerState
from veriml.models.examples import build_mlp, write_example_folder
from veriml.runtime import runner_for
from veriml.tlog.checkpoint import Checkpoint, sign_checkpoint
from veriml.tlog.merkle import leaf_hash, root_from_leaf_hashes
from veriml.tlog.note import NoteSigner
from veriml.tlog.tiles import build_tiles
from veriml.verify.policy import Policy, SpotReveal, decide, spot_checked, spot_commitment

POLICY = "spot:0.5"
JOBS = 24
X = np.ones((1, 4), np.float32)


def _spot_entries(folder: Path, jobs: int) -> tuple[str, list[bytes], int]:
    """A log of ``jobs`` spot:0.5 inferences by one primary node (a second node checks the
    drawn ones), as a coordinator writes it: the rules' ``state`` entry and epoch 0's
    ``beacon`` first, each request's draw secret from epoch 0's key, then the beacons of the
    epochs after it, which reveal that key. The primary's id, the entries, and how many jobs
    were drawn."""
    runner = runner_for(folder)
    primary, checker = generate_key(), generate_key()
    policy = Policy.parse(POLICY)
    entries = [state_entry(LedgerState()).to_bytes(), beacon(0).to_bytes()]
    checked_jobs = 0
    for _ in range(jobs):
        request_id = str(uuid.uuid4())
        draw = drawn(request_id, 0)
        first = runner.run(
            {"x": X}, key=primary, policy=POLICY, request_id=request_id,
            spot=spot_commitment(draw.secret),
        )  # fmt: skip
        checked = spot_checked(policy, draw.secret)
        runs = [first]
        if checked:
            runs.append(runner.run({"x": X}, key=checker, policy=POLICY, request_id=request_id))
        answers = [
            (r.predicate.node_id, f"op-{i}", {n: tensor_digest(a) for n, a in r.outputs.items()})
            for i, r in enumerate(runs)
        ]
        verdict = decide(policy, answers, spot=SpotReveal(checked), draw=draw)
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
        checked_jobs += checked
    # Later epochs begin; by the second, epoch 0's key is revealed and every draw is checked.
    entries += [beacon(1).to_bytes(), beacon(2).to_bytes()]
    return primary.key_id, entries, checked_jobs


@pytest.fixture(scope="module")
def spot_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[bytes], int]:
    tmp = tmp_path_factory.mktemp("spot")
    folder = write_example_folder(tmp / "m", build_mlp((4, 8, 3), seed=3), name="m")
    return _spot_entries(folder, JOBS)


def test_the_fold_counts_checked_spot_jobs_per_primary_node(
    spot_log: tuple[str, list[bytes], int],
) -> None:
    primary, entries, drawn = spot_log
    fold = LedgerFold(required=True)
    for index, entry in enumerate(entries):
        fold(index, entry)
    assert fold.spot == {primary: [JOBS, drawn]}
    assert fold.state is not None
    assert fold.state.unchecked_draws == 0  # a later beacon revealed the key of every draw
    # Every accepted job credits its agreeing nodes: the primary always agrees here.
    assert fold.state.account(primary).jobs == JOBS


def test_a_refused_entry_names_its_index(spot_log: tuple[str, list[bytes], int]) -> None:
    _, entries, _ = spot_log
    fold = LedgerFold(required=False)
    fold(0, entries[0])
    # A deposit the rules' admin did not sign: nobody had the right to mint it.
    with pytest.raises(VerificationError) as caught:
        fold(1, deposit(ALICE, 5, by=ALICE).to_bytes())
    assert caught.value.check == "ledger"
    assert caught.value.evidence["index"] == 1


@pytest.mark.parametrize("lie", ["decision flipped", "another secret"])
def test_a_spot_decision_the_logged_draw_does_not_support_fails_the_audit(
    spot_log: tuple[str, list[bytes], int], lie: str
) -> None:
    """A coordinator that logs a drawn check as unchecked (or reveals a secret the node never
    committed to) cannot shift the checked fraction the audit reports: the entry fails it."""
    _, entries, _ = spot_log
    index = 2  # the first inference, after the state entry and epoch 0's beacon
    logged = parse_entry(entries[index])
    assert isinstance(logged, InferenceEntry)
    verdict, spot = logged.verdict, logged.verdict.spot
    assert spot is not None
    if lie == "decision flipped":
        verdict = dataclasses.replace(verdict, spot=SpotReveal(not spot.checked))
    else:
        verdict = dataclasses.replace(verdict, draw=drawn(logged.request_id, 0, key=bytes(32)))
    forged = dataclasses.replace(logged, verdict=verdict).to_bytes()
    fold = LedgerFold(required=True)
    for i, entry in enumerate(entries[:index]):
        fold(i, entry)
    with pytest.raises(VerificationError) as caught:
        fold(index, forged)
    assert (caught.value.check, caught.value.evidence["index"]) == ("ledger", index)
    assert fold.spot == {}  # nothing counted from the refused entry
    fold(index, entries[index])  # the state was left as it was: the true entry still folds


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
    assert f"spot checks of node {primary}: {drawn} of {JOBS} job(s)" in human.stdout
    report = subprocess.run(
        [*args, "--json"], capture_output=True, text=True, timeout=120, env=clean
    )
    spot = json.loads(report.stdout)["ledger"]["spot"]
    assert spot == {primary: {"jobs": JOBS, "checked": drawn}}
    assert Digest.from_text(json.loads(report.stdout)["ledger"]["digest"])
