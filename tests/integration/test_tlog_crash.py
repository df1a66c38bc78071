"""Crash safety with real processes: SIGKILL ``veriml log serve`` while writers append, restart
it, and check that nothing acknowledged was lost and no two signed checkpoints disagree."""

from __future__ import annotations

import base64
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from _servers import free_port, start_process
from veriml.tlog.checkpoint import open_checkpoint
from veriml.tlog.log import Log
from veriml.tlog.merkle import leaf_hash, root_from_leaf_hashes, verify_consistency
from veriml.tlog.note import NoteVerifier

ORIGIN = "example.com/crash-test"
VERIML = [sys.executable, "-m", "veriml"]


def new_log_key(key: Path) -> str:
    """``veriml log new`` writing the private key to ``key``; return the log's verifier key."""
    made = subprocess.run(
        [*VERIML, "log", "new", "--origin", ORIGIN, "--key-out", str(key)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return made.stdout.strip()


@dataclass(frozen=True)
class Server:
    """One ``veriml log serve`` subprocess on loopback."""

    url: str
    proc: subprocess.Popen[str]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def start_server() -> Iterator[Callable[[str, Path, Path], Server]]:
    """Start ``veriml log serve --db DB --key KEY`` logging to a file; always stopped after."""
    with contextlib.ExitStack() as stack:

        def start(db: str, key: Path, log_file: Path) -> Server:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            args = [*VERIML, "log", "serve", "--db", db, "--key", str(key), "--port", str(port)]
            args += ["--batch-size", "32", "--batch-interval", "0.005"]
            ready = start_process(args, url_to_poll=f"{url}/checkpoint", output=log_file)
            return Server(url, stack.enter_context(ready))

        yield start


@pytest.mark.slow
def test_sigkill_while_appending_loses_nothing_acknowledged(
    tmp_path: Path, start_server: Callable[[str, Path, Path], Server]
) -> None:
    key = tmp_path / "log.key"
    vkey = new_log_key(key)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    db = f"sqlite:///{tmp_path}/log.db"
    first = start_server(db, key, tmp_path / "server.log")
    url = first.url

    acked: dict[bytes, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        with httpx.Client(timeout=10) as http:
            for i in range(10_000):
                if stop.is_set():
                    return
                body = b'{"type":"crash","writer":%d,"n":%d}' % (n, i)
                try:
                    response = http.post(f"{url}/add", content=body)
                except httpx.HTTPError:
                    return  # the server died under us: this entry was never acknowledged
                if response.status_code != 200:
                    return
                with lock:
                    acked[body] = response.json()["index"]

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.kill()  # SIGKILL mid-stream: no shutdown hooks run
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(acked) >= 300, "writers made too little progress before the kill"

    url = start_server(db, key, tmp_path / "server.log").url
    # The restarted log keeps appending after what survived.
    after = httpx.post(f"{url}/add", content=b'{"type":"after-restart"}', timeout=30)
    assert after.status_code == 200

    verifier = NoteVerifier.from_vkey(vkey)
    latest, _ = open_checkpoint(
        httpx.get(f"{url}/checkpoint", timeout=10).content, verifier, origin=ORIGIN
    )
    assert after.json()["index"] == latest.size - 1

    reader = Log.open_readonly(db)
    try:
        entries = reader.entries(0, latest.size)
        notes = reader.storage.checkpoints()
    finally:
        reader.close()
    # 1. Every acknowledged entry is at its acknowledged index.
    for body, index in acked.items():
        assert entries[index] == body
    # 2. The tree recomputed from the entries is the one the latest checkpoint signs.
    leaves = [leaf_hash(e) for e in entries]
    assert root_from_leaf_hashes(leaves) == latest.root_hash
    # 3. Every checkpoint ever signed verifies and is consistent with the latest (proofs
    #    fetched from the restarted server).
    assert notes[-1][0] == latest.size
    for size, note in notes:
        checkpoint, _ = open_checkpoint(note, verifier, origin=ORIGIN)
        if size == 0:
            continue
        body = httpx.get(
            f"{url}/proof/consistency", params={"old": size, "new": latest.size}, timeout=10
        ).json()
        proof = [base64.b64decode(h) for h in body["proof"]]
        verify_consistency(size, latest.size, proof, checkpoint.root_hash, latest.root_hash)
    # 4. An independent auditor replaying the served log agrees, and records what it saw.
    state = tmp_path / "audit.json"
    audit = subprocess.run(
        [*VERIML, "log", "audit", url, "--vkey", vkey, "--state", str(state), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert audit.returncode == 0, audit.stderr
    assert state.exists()


@pytest.mark.slow
def test_two_replicas_on_one_database_serve_one_log(
    tmp_path: Path, start_server: Callable[[str, Path, Path], Server]
) -> None:
    key = tmp_path / "log.key"
    vkey = new_log_key(key)
    db = f"sqlite:///{tmp_path}/log.db"
    servers = [start_server(db, key, tmp_path / f"replica{n}.log") for n in range(2)]
    acked: dict[bytes, int] = {}
    lock = threading.Lock()

    def writer(n: int) -> None:
        url = servers[n % 2].url
        with httpx.Client(timeout=30) as http:
            for i in range(75):
                body = b'{"type":"replica","writer":%d,"n":%d}' % (n, i)
                index = http.post(f"{url}/add", content=body).json()["index"]
                with lock:
                    acked[body] = index

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(acked) == 300
    assert sorted(acked.values()) == list(range(300))  # no index given out twice

    verifier = NoteVerifier.from_vkey(vkey)
    seen = [httpx.get(f"{s.url}/checkpoint", timeout=10).content for s in servers]
    assert seen[0] == seen[1]  # both replicas serve the same, latest checkpoint
    latest, _ = open_checkpoint(seen[0], verifier, origin=ORIGIN)
    assert latest.size == 300
    reader = Log.open_readonly(db)
    try:
        entries = reader.entries(0, 300)
    finally:
        reader.close()
    assert all(entries[index] == body for body, index in acked.items())
    assert root_from_leaf_hashes([leaf_hash(e) for e in entries]) == latest.root_hash
