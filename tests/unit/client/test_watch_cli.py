"""``veriml watch`` as a user runs it: JSON lines, exit codes, the pinned log key.

The coordinator here serves only a static log under ``/log/`` (what the watcher reads first):
entries it has nothing to re-execute for, so the CLI's own behaviour is what is tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from _servers import serve
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.keys import generate_key
from veriml.ledger.entries import InferenceEntry
from veriml.tlog.checkpoint import Checkpoint, sign_checkpoint
from veriml.tlog.merkle import leaf_hash, root_from_leaf_hashes
from veriml.tlog.note import NoteSigner
from veriml.tlog.tiles import build_tiles
from veriml.verify.policy import Verdict

ORIGIN = "watch-cli.test/log"
SIGNER = NoteSigner(ORIGIN, generate_key())


def entries() -> list[bytes]:
    rejected = InferenceEntry(
        request_id="r1",
        request_digest=Digest.of(b"request"),
        model=Digest.of(b"model"),
        policy="quorum:2/2",
        receipts=(Envelope.sign(b"{}", [generate_key()]),),
        verdict=Verdict("quorum:2/2", "rejected", ()),
    )
    return [b'{"type":"model","name":"m"}', rejected.to_bytes(), b'{"type":"node"}']


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("log")
    logged = entries()
    for path, data in build_tiles(logged).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    root = root_from_leaf_hashes([leaf_hash(e) for e in logged])
    (folder / "checkpoint").write_bytes(
        sign_checkpoint(Checkpoint(ORIGIN, len(logged), root), [SIGNER])
    )
    app = FastAPI()
    app.mount("/log", StaticFiles(directory=folder))
    with serve(app) as url:
        yield url


def watch(url: str, vkey: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VERIML_HOME": str(home)}
    for name in ("VERIML_URL", "VERIML_LOG_VKEY", "VERIML_WATCH_KEY"):
        env.pop(name, None)
    command = [sys.executable, "-m", "veriml", "watch", "--coordinator", url, "--log-vkey", vkey]
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=120)


def test_once_prints_json_lines_and_a_summary_and_exits_0_without_mismatches(
    coordinator: str, tmp_path: Path
) -> None:
    state = tmp_path / "watch.json"
    done = watch(
        coordinator,
        SIGNER.vkey,
        "--once",
        "--sample",
        "1",
        "--json",
        "--state",
        str(state),
        home=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "not disputed" in done.stderr  # no --key: said once, up front
    (checked, summary) = [json.loads(line) for line in done.stdout.splitlines()]
    assert (checked["index"], checked["id"], checked["result"]) == (1, "r1", "skipped")
    assert summary["summary"]["position"] == 3
    assert summary["summary"]["skipped"] == 1
    assert json.loads(state.read_text())["position"] == 3


def test_a_log_signed_by_another_key_is_refused(coordinator: str, tmp_path: Path) -> None:
    other = NoteSigner(ORIGIN, generate_key()).vkey
    done = watch(coordinator, other, "--once", "--sample", "1", home=tmp_path)
    assert done.returncode == 1
    assert "error:" in done.stderr
    assert done.stdout == ""


def test_a_sample_rate_outside_zero_to_one_is_a_usage_error(
    coordinator: str, tmp_path: Path
) -> None:
    done = watch(coordinator, SIGNER.vkey, "--once", "--sample", "1.5", home=tmp_path)
    assert done.returncode == 2


def test_without_json_one_line_per_check_and_the_summary(coordinator: str, tmp_path: Path) -> None:
    done = watch(coordinator, SIGNER.vkey, "--once", "--sample", "1", home=tmp_path)
    assert done.returncode == 0, done.stderr
    check, summary = done.stdout.splitlines()
    assert check == "entry 1 inference r1: skipped (verdict rejected: nothing to check)"
    assert summary.startswith("watched 3 log entries: 1 inferences sampled, 0 checked")
