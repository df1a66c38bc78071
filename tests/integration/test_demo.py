from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_network_demo_publishes_infers_verifies_and_catches_every_tampering(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "veriml", "demo", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo complete" in done.stdout
    assert "ACCEPTED" not in done.stdout
    # Four tamperings of a saved quorum answer, each rejected at the check that catches it: a
    # swapped node registration no longer matches the inclusion proof the answer cites for it.
    for check, tampering in (
        ("output-digest", "one output value changed by 1 ulp"),
        ("inclusion", "verdict claims fewer agreeing nodes"),
        ("inclusion", "log inclusion proof altered"),
        ("evidence", "node registration swapped"),
    ):
        assert f"rejected at {check}  {tampering}" in done.stdout, done.stdout
    assert done.stdout.count("✓ rejected at") == 4
    # The cheater act: the wrong-output node's dissent is disputed, bisected to one operator,
    # decided by the referee, and slashed in the log; the ledger folded from the log matches.
    assert "challenger wins (reason referee)" in done.stdout, done.stdout
    work = tmp_path / "demo-network"
    # The slash takes the stake of node-3's operator (LocalNetwork's op-3).
    assert "slash      node-3's operator:" in done.stdout, done.stdout
    assert "the cheater was slashed; no honest node was" in done.stdout
    assert "entries folded: the coordinator's ledger" in done.stdout
    # The network is gone (network.json removed) and the saved answers verify offline.
    assert not (work / "net" / "network.json").exists()
    vkey = next(line.split()[-1] for line in done.stdout.splitlines() if "log key" in line)
    for answer in ("answer-none.json", "answer-quorum-3-2.json"):
        checked = subprocess.run(
            [sys.executable, "-m", "veriml", "verify", str(work / answer), "--log-vkey", vkey],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert checked.returncode == 0, checked.stderr
        assert "inference OK" in checked.stdout


def test_local_demo_runs_end_to_end_and_catches_every_tampering(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "veriml", "demo", "--local", "--home", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo complete" in done.stdout
    assert "ACCEPTED" not in done.stdout
    assert done.stdout.count("rejected at") >= 3
    assert (tmp_path / "demo" / "result.json").is_file()
    # Step 6: the receipt is in the log and its offline proof verifies with the log key alone.
    assert "verified offline" in done.stdout
    assert done.stdout.count("✓ rejected") == 2
    vkey = next(w for w in done.stdout.split() if w.startswith("demo.veriml.local/log+"))
    proof = tmp_path / "demo" / "receipt.tlog-proof"
    checked = subprocess.run(
        [sys.executable, "-m", "veriml", "log", "verify-proof", str(proof), "--vkey", vkey],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stderr
    assert "entry 0" in checked.stdout
