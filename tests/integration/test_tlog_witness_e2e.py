"""End to end, as an operator and a user run it: ``veriml log serve`` and ``veriml witness serve``
as real processes; entries added; a proof made with ``log prove`` verifies offline with
``log verify-proof --witness ... --quorum 1``; ``log audit`` passes and remembers what it saw;
the witness keeps its memory across a restart."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from _servers import free_port, start_process
from veriml.tlog.cosignature import CosignatureVerifier

ORIGIN = "example.com/e2e"
WITNESS = "witness.example/e2e"
VERIML = [sys.executable, "-m", "veriml"]

pytestmark = pytest.mark.slow


def veriml(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*VERIML, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == code, (done.stdout, done.stderr)
    return done


@contextlib.contextmanager
def witness_server(key: Path, log_vkey: str, state: Path, port: int) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    probe = f"{url}/{hashlib.sha256(ORIGIN.encode()).hexdigest()}/checkpoint"
    args = [*VERIML, "witness", "serve", "--key", str(key), "--log", log_vkey]
    args += ["--state", str(state), "--port", str(port)]
    # Before any cosignature the monitoring endpoint answers 404; after, 200. Either means up.
    with start_process(args, url_to_poll=probe, ready_status=404 if not state.exists() else 200):
        yield url


def add(url: str, folder: Path, start: int, count: int) -> list[Path]:
    files = []
    for i in range(start, start + count):
        f = folder / f"entry{i}.json"
        f.write_bytes(b'{"type":"e2e","n":%d}' % i)
        files.append(f)
    done = veriml("log", "add", url, *map(str, files), "--json")
    assert [r["index"] for r in json.loads(done.stdout)] == list(range(start, start + count))
    return files


def wait_for_size(url: str, size: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = httpx.get(f"{url}/checkpoint", timeout=5).text.split("\n")
        if int(lines[1]) >= size and WITNESS in httpx.get(f"{url}/checkpoint").text:
            return
        time.sleep(0.1)
    raise AssertionError(f"checkpoint did not reach size {size}")


def test_log_and_witness_processes_produce_offline_verifiable_proofs(tmp_path: Path) -> None:
    log_key, w_key = tmp_path / "log.key", tmp_path / "witness.key"
    log_vkey = veriml("log", "new", "--origin", ORIGIN, "--key-out", str(log_key)).stdout.strip()
    w_vkey = veriml("witness", "new", "--name", WITNESS, "--key-out", str(w_key)).stdout.strip()
    assert CosignatureVerifier.from_vkey(w_vkey).name == WITNESS
    assert w_key.stat().st_mode & 0o777 == 0o600
    w_state, w_port = tmp_path / "witness.db", free_port()
    log_port = free_port()
    log_url = f"http://127.0.0.1:{log_port}"
    state = tmp_path / "audit.json"

    with witness_server(w_key, log_vkey, w_state, w_port) as w_url:
        log_args = [
            *VERIML, "log", "serve", "--db", f"sqlite:///{tmp_path}/log.db", "--key", str(log_key),
            "--witness", f"{w_vkey}={w_url}", "--quorum", "1", "--port", str(log_port),
            "--batch-interval", "0.01",
        ]  # fmt: skip
        with start_process(log_args, url_to_poll=f"{log_url}/checkpoint"):
            files = add(log_url, tmp_path, 0, 5)
            wait_for_size(log_url, 5)

            proof = tmp_path / "entry3.tlog-proof"
            veriml("log", "prove", log_url, "3", "--out", str(proof), "--vkey", log_vkey)
            # Offline from here on: the proof file, the keys, the entry.
            ok = veriml(
                "log", "verify-proof", str(proof), "--vkey", log_vkey, "--witness", w_vkey,
                "--quorum", "1", "--entry", str(files[3]), "--json",
            )  # fmt: skip
            assert json.loads(ok.stdout)["index"] == 3
            wrong_entry = veriml(
                "log", "verify-proof", str(proof), "--vkey", log_vkey, "--entry", str(files[2]),
                code=1,
            )  # fmt: skip
            assert wrong_entry.stderr.count("\n") == 1
            veriml(
                "log", "verify-proof", str(proof), "--vkey", log_vkey, "--witness", w_vkey,
                "--witness", veriml("witness", "new", "--name", "w.example/other", "--key-out",
                                    str(tmp_path / "other.key")).stdout.strip(),
                "--quorum", "2", code=1,
            )  # fmt: skip

            first = json.loads(
                veriml(
                    "log", "audit", log_url, "--vkey", log_vkey, "--state", str(state),
                    "--witness", w_vkey, "--quorum", "1", "--json",
                ).stdout
            )  # fmt: skip
            assert (first["size"], first["previous_size"]) == (5, None)

    # Both restart; the witness's memory of size 5 survives and the log goes on from there.
    with witness_server(w_key, log_vkey, w_state, w_port) as w_url:
        with start_process(log_args, url_to_poll=f"{log_url}/checkpoint"):
            add(log_url, tmp_path, 5, 4)
            wait_for_size(log_url, 9)
            second = veriml("log", "audit", log_url, "--vkey", log_vkey, "--state", str(state))
            assert "consistent with the previously audited size 5" in second.stdout
        seen = httpx.get(f"{w_url}/{hashlib.sha256(ORIGIN.encode()).hexdigest()}/checkpoint")
        assert seen.text.split("\n")[1] == "9"
