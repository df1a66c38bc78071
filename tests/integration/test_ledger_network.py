"""The ledger through the CLI on a real local network: deposit, stake and unstake move a node's
funds, ``veriml ledger state`` shows them, and ``veriml log audit --coordinator`` folds the
served log itself (model, node, inference and ledger entries) and finds the coordinator's state
equal at the audited size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from veriml.client import Client, LocalNetwork
from veriml.core.keys import generate_key, load_private_key
from veriml.models.examples import build_mlp, write_example_folder

pytestmark = pytest.mark.slow


def veriml(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VERIML_")}
    return subprocess.run(
        [sys.executable, "-m", "veriml", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**clean, **env},
    )


def test_deposit_stake_unstake_show_and_audit(tmp_path: Path) -> None:
    home = tmp_path / "net"
    with LocalNetwork(home, nodes=1, port=0) as net:
        env = {"VERIML_URL": net.url, "VERIML_HOME": str(home)}
        node_key = net.node_key_path(net.nodes[0])
        node = load_private_key(node_key).key_id
        admin = home / "coordinator" / "coordinator.key"

        # Inferences first, so the fold has jobs to credit.
        folder = write_example_folder(tmp_path / "mlp", build_mlp((4, 8, 3), seed=2), name="mlp")
        generate_key("ec").save(tmp_path / "pub.key")
        with Client(net.url, log_vkey=net.log_vkey) as client:
            client.publish(folder, tmp_path / "pub.key")
            x = {"x": np.ones((1, 4), np.float32)}
            client.infer("mlp", x)
            # The SDK re-derives what the newer policies claim (every answer verified).
            tolerant = client.infer("mlp", x, policy="none,tolerance")
            assert tolerant.mode == "tolerance"
            assert tolerant.verified[-2:] == ("tolerance", "verdict")
            optimistic = client.infer("mlp", x, policy="optimistic:10m")
            assert optimistic.final_after is not None
            assert "optimistic" in optimistic.verified

        done = veriml("ledger", "deposit", node, "100", "--key", str(admin), env=env)
        assert done.returncode == 0, done.stderr
        done = veriml("ledger", "stake", "60", "--key", str(node_key), env=env)
        assert done.returncode == 0, done.stderr
        assert "stake 60" in done.stdout
        done = veriml("ledger", "unstake", "10", "--key", str(node_key), "--json", env=env)
        assert done.returncode == 0, done.stderr
        moved = json.loads(done.stdout)

        # A node key is not the admin key: its deposit is refused.
        refused = veriml("ledger", "deposit", node, "5", "--key", str(node_key), env=env)
        assert refused.returncode == 1

        state = json.loads(veriml("ledger", "state", "--json", env=env).stdout)
        account = state["accounts"][node]
        assert (account["balance"], account["stake"], account["jobs"]) == (40, 50, 3)
        assert [u["amount"] for u in account["unbonding"]] == [10]
        assert moved["state"] == account
        shown = veriml("ledger", "state", env=env).stdout
        assert node[:16] in shown

        audit = veriml(
            "log", "audit", f"{net.url}/log", "--vkey", net.log_vkey, "--json", env=env
        )  # fmt: skip
        assert audit.returncode == 0, audit.stderr
        report = json.loads(audit.stdout)
        assert report["ledger"]["coordinator"] == "matches"
        # The digest printed is the fold of the audited entries: the state served at that size.
        at_size = veriml("ledger", "state", "--size", str(report["size"]), "--json", env=env)
        served = json.loads(at_size.stdout)
        assert served["size"] == report["size"]
        assert report["ledger"]["digest"] == _digest(served)


def _digest(state: dict[str, object]) -> str:
    from veriml.core.canonical import canonical_digest

    return canonical_digest(state).to_text()
