"""Crash safety with real processes: SIGKILL ``veriml log serve`` while writers append, restart
it, and check that nothing acknowledged was lost and no two signed checkpoints disagree."""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from veriml.tlog.checkpoint import open_checkpoint
from veriml.tlog.log import Log
from veriml.tlog.merkle import leaf_hash, root_from_leaf_hashes, verify_consistency
from veriml.tlog.note import NoteVerifier

ORIGIN = "example.com/crash-test"
VERIML = [sys.executable, "-m", "veriml"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """One ``veriml log serve`` subprocess on loopback; always stopped by the test."""

    def __init__(self, db: str, key: Path, log_file: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._out = log_file.open("ab")
        self.proc = subprocess.Popen(
            [
                *VERIML,
                "log",
                "serve",
                "--db",
                db,
                "--key",
                str(key),
                "--port",
                str(self.port),
                "--batch-size",
                "32",
                "--batch-interval",
                "0.005",
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {log_file.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/checkpoint", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError("server did not start within 60 s")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._out.close()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


@pytest.mark.slow
def test_sigkill_while_appending_loses_nothing_acknowledged(
    tmp_path: Path, servers: list[Server]
) -> None:
    key = tmp_path / "log.key"
    made = subprocess.run(
        [*VERIML, "log", "new", "--origin", ORIGIN, "--key-out", str(key)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    vkey = made.stdout.strip()
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    db = f"sqlite:///{tmp_path}/log.db"
    servers.append(Server(db, key, tmp_path / "server.log"))
    url = servers[0].url

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
    servers[0].kill()  # SIGKILL mid-stream: no shutdown hooks run
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(acked) >= 300, "writers made too little progress before the kill"

    servers.append(Server(db, key, tmp_path / "server.log"))
    url = servers[1].url
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
def test_two_replicas_on_one_database_serve_one_log(tmp_path: Path, servers: list[Server]) -> None:
    key = tmp_path / "log.key"
    vkey = subprocess.run(
        [*VERIML, "log", "new", "--origin", ORIGIN, "--key-out", str(key)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    db = f"sqlite:///{tmp_path}/log.db"
    servers.extend(Server(db, key, tmp_path / f"replica{n}.log") for n in range(2))
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
