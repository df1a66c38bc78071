"""``veriml log new/serve/add/checkpoint`` as a user runs them, and witness cosigning of the
checkpoints a log publishes."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from _servers import free_port, serve, start_process
from veriml.core.errors import FormatError, SignatureError
from veriml.core.keys import generate_key
from veriml.tlog.checkpoint import open_checkpoint
from veriml.tlog.cosignature import CosignatureSigner, CosignatureVerifier
from veriml.tlog.log import Log, LogOptions
from veriml.tlog.merkle import leaf_hash, root_from_leaf_hashes
from veriml.tlog.note import NoteSigner, NoteVerifier, open_note
from veriml.tlog.storage import MAX_ENTRY_SIZE
from veriml.tlog.witness import WitnessClient, create_witness_app

ORIGIN = "example.com/cli-test"
VERIML = [sys.executable, "-m", "veriml"]


def veriml(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*VERIML, *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


@contextlib.contextmanager
def log_server(*args: str) -> Iterator[str]:
    """``veriml log serve ARGS`` as a subprocess on a free loopback port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [*VERIML, "log", "serve", "--port", str(port), *args]
    with start_process(command, url_to_poll=f"{url}/checkpoint"):
        yield url


@pytest.fixture(scope="module")
def log_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    key = tmp_path_factory.mktemp("key") / "log.key"
    done = veriml("log", "new", "--origin", ORIGIN, "--key-out", str(key))
    return key, done.stdout.strip()


def test_log_new_writes_a_private_key_and_prints_the_verifier_key(
    log_key: tuple[Path, str],
) -> None:
    key, vkey = log_key
    assert key.stat().st_mode & 0o777 == 0o600
    verifier = NoteVerifier.from_vkey(vkey)
    assert verifier.name == ORIGIN
    sidecar = json.loads(key.with_name(key.name + ".json").read_text())
    assert sidecar == {"origin": ORIGIN, "vkey": vkey}
    assert "PRIVATE" not in vkey


def test_log_new_refuses_to_overwrite_a_key(log_key: tuple[Path, str]) -> None:
    key, _ = log_key
    done = veriml("log", "new", "--origin", ORIGIN, "--key-out", str(key), check=False)
    assert done.returncode == 2
    assert "overwrite" in done.stderr


@pytest.mark.slow
def test_serve_add_and_checkpoint_round_trip(log_key: tuple[Path, str], tmp_path: Path) -> None:
    key, vkey = log_key
    files = []
    for i in range(3):
        f = tmp_path / f"e{i}.json"
        f.write_bytes(b'{"type":"cli","n":%d}' % i)
        files.append(f)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (MAX_ENTRY_SIZE + 1))
    with log_server("--db", f"sqlite:///{tmp_path}/log.db", "--key", str(key)) as url:
        added = veriml("log", "add", url, *map(str, files), "--json")
        assert [r["index"] for r in json.loads(added.stdout)] == [0, 1, 2]
        plain = veriml("log", "checkpoint", url)
        checkpoint, _ = open_checkpoint(
            plain.stdout.encode(), NoteVerifier.from_vkey(vkey), origin=ORIGIN
        )
        assert checkpoint.size == 3
        leaves = [leaf_hash(f.read_bytes()) for f in files]
        assert checkpoint.root_hash == root_from_leaf_hashes(leaves)
        as_json = json.loads(veriml("log", "checkpoint", url, "--json").stdout)
        assert as_json["size"] == 3
        assert as_json["root_hash"] == checkpoint.root_hash.hex()

        too_big = veriml("log", "add", url, str(big), check=False)
        assert too_big.returncode == 2
        assert too_big.stderr.count("\n") == 1  # one line, no traceback

        out = tmp_path / "static"
        published = veriml(
            "log", "publish", f"file://{out}", "--db", f"sqlite:///{tmp_path}/log.db", "--json"
        )
        assert json.loads(published.stdout)["size"] == 3
        assert (out / "checkpoint").read_bytes() == httpx.get(f"{url}/checkpoint").content
        assert (out / "tile/entries/000.p/3").read_bytes() == httpx.get(
            f"{url}/tile/entries/000.p/3"
        ).content
    unreachable = veriml("log", "checkpoint", url, check=False)
    assert unreachable.returncode == 3  # could not reach the service (docs/sdk.md)
    assert "unreachable" in unreachable.stderr


def test_a_malformed_witness_option_is_a_usage_error(
    log_key: tuple[Path, str], tmp_path: Path
) -> None:
    key, _ = log_key
    done = veriml(
        "log",
        "serve",
        "--db",
        f"sqlite:///{tmp_path}/log.db",
        "--key",
        str(key),
        "--witness",
        "no-equals-sign",
        check=False,
    )
    assert done.returncode == 2


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[tuple[str, CosignatureVerifier, NoteSigner]]:
    log_signer = NoteSigner(ORIGIN, generate_key())
    cosigner = CosignatureSigner("witness.example/w1", generate_key())
    app = create_witness_app(
        tmp_path / "witness.db", cosigner, [NoteVerifier.from_vkey(log_signer.vkey)]
    )
    with serve(app) as url:
        yield url, CosignatureVerifier.from_vkey(cosigner.vkey), log_signer


def test_published_checkpoints_carry_the_witness_cosignature(
    tmp_path: Path, witness: tuple[str, CosignatureVerifier, NoteSigner]
) -> None:
    url, cosigner, log_signer = witness
    client = WitnessClient(url, cosigner)
    opts = LogOptions(batch_interval=0.0, witnesses=(client,), quorum=1)
    with Log.open(f"sqlite:///{tmp_path}/log.db", log_signer, options=opts) as log:
        for round_ in range(3):
            log.add_many([b"w%d-%d" % (round_, i) for i in range(5)])
            deadline = time.monotonic() + 10
            while log.published_size < 5 * (round_ + 1) and time.monotonic() < deadline:
                time.sleep(0.02)
            note = open_note(log.checkpoint(), [NoteVerifier.from_vkey(log_signer.vkey), cosigner])
            assert {s.name for s in note.verified} == {ORIGIN, "witness.example/w1"}
    client.close()


def test_without_a_quorum_the_checkpoint_is_not_published(
    tmp_path: Path, witness: tuple[str, CosignatureVerifier, NoteSigner]
) -> None:
    _, cosigner, log_signer = witness
    dead = WitnessClient(f"http://127.0.0.1:{free_port()}", cosigner, timeout=1)
    opts = LogOptions(batch_interval=0.0, witnesses=(dead,), quorum=1)
    with Log.open(f"sqlite:///{tmp_path}/log.db", log_signer, options=opts) as log:
        assert log.add(b"durable even so") == 0  # acknowledged: it is integrated
        time.sleep(0.2)
        assert log.size == 1
        assert log.published_size == 0
        note = open_note(log.checkpoint(), [NoteVerifier.from_vkey(log_signer.vkey)])
        assert note.text.splitlines()[1] == "0"
        with pytest.raises(SignatureError):
            open_note(log.checkpoint(), [cosigner])
    dead.close()


def test_a_quorum_larger_than_the_witness_list_is_refused(
    tmp_path: Path,
    witness: tuple[str, CosignatureVerifier, NoteSigner],
    log_key: tuple[Path, str],
) -> None:
    url, cosigner, _ = witness
    client = WitnessClient(url, cosigner)
    with pytest.raises(FormatError, match="quorum"):
        LogOptions(witnesses=(client,), quorum=2)
    client.close()
    done = veriml(
        "log",
        "serve",
        "--db",
        f"sqlite:///{tmp_path}/log.db",
        "--key",
        str(log_key[0]),
        "--witness",
        f"{cosigner.vkey}={url}",
        "--quorum",
        "2",
        check=False,
    )
    assert done.returncode == 2
    assert "quorum" in done.stderr


def test_a_checkpoint_held_back_is_published_once_witnesses_answer_after_restart(
    tmp_path: Path, witness: tuple[str, CosignatureVerifier, NoteSigner]
) -> None:
    url, cosigner, log_signer = witness
    db = f"sqlite:///{tmp_path}/log.db"
    dead = WitnessClient(f"http://127.0.0.1:{free_port()}", cosigner, timeout=1)
    with Log.open(db, log_signer, options=LogOptions(witnesses=(dead,), quorum=1)) as log:
        log.add_many([b"a", b"b"])
        assert log.published_size == 0
    dead.close()
    live = WitnessClient(url, cosigner)
    with Log.open(db, log_signer, options=LogOptions(witnesses=(live,), quorum=1)) as log:
        deadline = time.monotonic() + 10
        while log.published_size < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert log.published_size == 2
        open_note(log.checkpoint(), [cosigner])  # cosigned by the witness
    live.close()
