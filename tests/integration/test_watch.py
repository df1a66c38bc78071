"""A watcher catches a cheating node end to end, as real processes.

A local network of two nodes, node 0 started with ``--byzantine wrong-output`` (one ulp added to
its first output; its trace agrees with what it answered). Inferences under policy ``none``
are accepted on one node's word. ``veriml watch --once --sample 1`` then re-executes every one of
them, finds each answer of node 0 wrong, disputes it with its own trace (bonding each challenge
from its funded account, as the rules require), and wins at the referee; the log then holds a
verdict for the watcher and a slash of node 0's operator for every such answer, and nothing
against the honest node. Under ``none,tolerance`` the same ulp is within the model's
output bounds: a match, not a dispute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _logread import logged_entries
from veriml.client import Client, LocalNetwork
from veriml.core.keys import generate_key, load_private_key
from veriml.ledger.entries import DisputeVerdictEntry, SlashEntry, parse_entry
from veriml.models.examples import build_mlp, write_example_folder

pytestmark = pytest.mark.slow

MAX_REQUESTS = 32


@dataclass(frozen=True)
class Watched:
    network: LocalNetwork
    home: Path
    key: Path
    key_id: str
    answered_by: dict[str, str]  # inference id -> node id
    tolerance: set[str]  # the inferences asked under none,tolerance
    cheater: str
    cheater_operator: str  # the account a conviction of the cheater slashes

    def expected(self, inference: str) -> str:
        """A cheater's answer is a mismatch bitwise; one ulp is within tolerance bounds."""
        cheated = self.answered_by[inference] == self.cheater
        return "mismatch" if cheated and inference not in self.tolerance else "match"


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    home = tmp_path_factory.mktemp("watched")
    folder = write_example_folder(home / "mlp", build_mlp((4, 8, 3), seed=5), name="mlp")
    generate_key("ec").save(home / "publisher.key")
    watcher_key = generate_key("ed25519")
    watcher_key.save(home / "watcher.key")
    with LocalNetwork(home / "net", nodes=2, port=0, byzantine={0: "wrong-output"}) as net:
        cheater = net.nodes[0].node_id
        assert cheater is not None
        answered_by: dict[str, str] = {}
        tolerance: set[str] = set()
        admin = load_private_key(net.home / "coordinator" / "coordinator.key", kind="ed25519")
        with Client(net.url, log_vkey=net.log_vkey) as client:
            client.deposit(watcher_key.key_id, 1000, admin)  # the watcher's challenge bonds
            client.publish(folder, home / "publisher.key")
            rng = np.random.default_rng(0)
            # Until the cheater has answered under both modes and the honest node once (the
            # scheduler picks), within a bound; all before any dispute lowers its reputation.
            for i in range(MAX_REQUESTS):
                x = rng.standard_normal((1, 4)).astype(np.float32)
                policy = "none,tolerance" if i % 2 else "none"
                result = client.infer("mlp", {"x": x}, policy=policy, public=True)
                answered_by[result.id] = result.verdict.agreeing[0]
                if i % 2:
                    tolerance.add(result.id)
                cheats = {i in tolerance for i, n in answered_by.items() if n == cheater}
                if cheats == {True, False} and len(set(answered_by.values())) == 2:
                    break
            else:
                pytest.fail("the scheduler never gave the cheater both kinds of request")
        yield Watched(
            net,
            home,
            home / "watcher.key",
            watcher_key.key_id,
            answered_by,
            tolerance,
            cheater,
            net.operator_id(net.nodes[0]),
        )


def run_cli(watched: Watched, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VERIML_HOME": str(watched.home / "watcher-home")}
    env.pop("VERIML_URL", None)
    command = [
        sys.executable,
        "-m",
        "veriml",
        *args,
        "--coordinator",
        watched.network.url,
        "--log-vkey",
        watched.network.log_vkey,
    ]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def log_entries(watched: Watched) -> list[Any]:
    raw = logged_entries(watched.network.url, watched.network.log_vkey)
    entries = []
    for data in raw:
        if json.loads(data)["type"] in ("verdict", "slash"):
            entries.append(parse_entry(data))
    return entries


def test_watch_once_catches_the_cheater_wins_every_dispute_and_slashes_only_it(
    watched: Watched,
) -> None:
    state = watched.home / "watch.json"
    done = run_cli(
        watched,
        "watch",
        "--once",
        "--sample",
        "1",
        "--key",
        str(watched.key),
        "--state",
        str(state),
        "--json",
    )
    assert done.returncode == 1, done.stderr  # a mismatch was found
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    checks, summary = lines[:-1], lines[-1]["summary"]
    by_id = {c["id"]: c for c in checks}
    assert set(by_id) == set(watched.answered_by)
    for inference, node in watched.answered_by.items():
        checked = by_id[inference]
        assert checked["node"] == node
        assert checked["result"] == watched.expected(inference), json.dumps(checked)
        if checked["result"] == "mismatch":
            assert checked["winner"] == "challenger", json.dumps(checked)
        else:
            assert checked["dispute"] is None
    cheats = sum(watched.expected(i) == "mismatch" for i in watched.answered_by)
    assert summary["mismatched"] == cheats
    assert summary["disputes"] == {"opened": cheats, "won": cheats, "lost": 0}

    entries = log_entries(watched)
    verdicts = [e for e in entries if isinstance(e, DisputeVerdictEntry)]
    slashes = [e for e in entries if isinstance(e, SlashEntry)]
    disputes = {c["dispute"] for c in checks if c["dispute"]}
    assert {v.dispute for v in verdicts} >= disputes
    assert all(v.winner == "challenger" for v in verdicts if v.dispute in disputes)
    assert {s.dispute for s in slashes if s.account == watched.cheater_operator} >= disputes
    assert all(s.account == watched.cheater_operator for s in slashes)

    # The state remembers the position: a second run finds nothing new to check.
    again = run_cli(watched, "watch", "--once", "--sample", "1", "--state", str(state), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["summary"]["checked"] == 0


def test_challenge_of_an_honest_answer_matches_and_opens_nothing(watched: Watched) -> None:
    honest = next(i for i, n in watched.answered_by.items() if n != watched.cheater)
    done = run_cli(watched, "challenge", honest, "--key", str(watched.key), "--json")
    assert done.returncode == 0, done.stderr
    checked = json.loads(done.stdout)
    assert checked["result"] == "match"
    assert checked["dispute"] is None


def test_in_tolerance_mode_one_ulp_is_within_bounds_and_not_disputed(watched: Watched) -> None:
    cheated = next(i for i in watched.tolerance if watched.answered_by[i] == watched.cheater)
    done = run_cli(watched, "challenge", cheated, "--key", str(watched.key), "--json")
    assert done.returncode == 0, done.stderr
    checked = json.loads(done.stdout)
    assert (checked["result"], checked["mode"], checked["dispute"]) == ("match", "tolerance", None)
