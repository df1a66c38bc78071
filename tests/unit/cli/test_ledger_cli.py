"""``veriml ledger ...`` and ``veriml log audit``'s ledger fold, against a stand-in coordinator.

The stand-in reads each move as the coordinator does (veriml.coordinator.ledger.service): the
body is the account's signed ledger request (docs/ledger.md, "Authority"), a deposit must be
signed by the rules' admin, and the entry that carries the request is folded by the real
ledger, so these tests pin the wire format; the full network is in
tests/integration/test_ledger_cli.py. Exit codes: 2 usage, 1 failed check, 3 unreachable.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from _ledger import ALICE, BOB, deposit, stake, state_entry, unstake
from _servers import serve
from veriml.core.dsse import Envelope
from veriml.core.errors import Error
from veriml.core.keys import SigningKey, generate_key
from veriml.core.timestamps import format_time
from veriml.ledger import Rules
from veriml.ledger.entries import DepositEntry, Entry, StakeEntry, StateEntry, UnstakeEntry
from veriml.ledger.state import LedgerState, fold
from veriml.protocol.accounts import LedgerRequest
from veriml.tlog.checkpoint import Checkpoint, sign_checkpoint
from veriml.tlog.merkle import leaf_hash, root_from_leaf_hashes
from veriml.tlog.note import NoteSigner
from veriml.tlog.tiles import build_tiles


def veriml(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VERIML_")}
    return subprocess.run(
        [sys.executable, "-m", "veriml", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Coordinator:
    """Just the ledger routes: signed requests checked, entries folded, state served. Without
    a ``state``, the ledger starts as the coordinator's does: a ``state`` entry logging rules
    whose admin is ``admin``."""

    def __init__(self, admin: SigningKey, state: LedgerState | None = None) -> None:
        self.admin = admin
        if state is None:
            state = LedgerState()
            bonds = state.bond_map()
            rules = Rules(admin=admin.key_id)
            state.apply(StateEntry(rules, bonds.root(), bonds.size, format_time(_now())))
        self.state = state
        self.requests: list[tuple[str, str, LedgerRequest]] = []
        self.lie: dict[str, Any] | None = None
        self.app = FastAPI()
        self.app.post("/v1/ledger/{action}")(self.move)
        self.app.get("/v1/ledger/state")(self.get_state)

    async def move(self, action: str, request: Request) -> JSONResponse:
        try:
            envelope = Envelope.from_json(json.loads(await request.body()))
            signed = LedgerRequest.open(envelope, op=action)
        except Error as exc:
            return JSONResponse({"title": exc.message}, status_code=403)
        self.requests.append((action, signed.account, signed))
        now = _now()
        entry: Entry
        if action == "deposit":
            if signed.account != self.admin.key_id:
                return JSONResponse(
                    {"title": "deposits must be signed by the ledger's admin key"}, status_code=403
                )
            account = str(signed.to)
            entry = DepositEntry(
                account, signed.amount, format_time(now), signed.memo or "", envelope
            )
        elif action == "stake":
            account = signed.account
            entry = StakeEntry(account, signed.amount, format_time(now), envelope)
        else:
            account = signed.account
            rules = self.state.rules
            assert rules is not None
            available = format_time(now + dt.timedelta(seconds=rules.unstake_delay))
            entry = UnstakeEntry(account, signed.amount, format_time(now), available, envelope)
        self.state.apply(entry)
        return JSONResponse(
            {
                "log_index": self.state.size - 1,
                "account": account,
                "state": self.state.account(account).to_json(),
            }
        )

    async def get_state(self, size: int | None = None) -> JSONResponse:
        if self.lie is not None:
            return JSONResponse(self.lie)
        return JSONResponse(self.state.to_json())


@pytest.fixture
def admin(tmp_path: Path) -> tuple[SigningKey, Path]:
    return _key_file(tmp_path / "admin.key")


def _key_file(path: Path) -> tuple[SigningKey, Path]:
    key = generate_key()
    path.write_bytes(key.to_pem())
    return key, path


@pytest.fixture
def coordinator(admin: tuple[SigningKey, Path]) -> Iterator[tuple[Coordinator, str]]:
    fake = Coordinator(admin[0])
    with serve(fake.app) as url:
        yield fake, url


def test_deposit_stake_unstake_and_state(
    coordinator: tuple[Coordinator, str], admin: tuple[SigningKey, Path], tmp_path: Path
) -> None:
    fake, url = coordinator
    account, account_file = _key_file(tmp_path / "node.key")
    env = {"VERIML_URL": url}
    done = veriml("ledger", "deposit", account.key_id, "100", "--key", str(admin[1]), env=env)
    assert done.returncode == 0, done.stderr
    # Entry 0 is the state entry that logs the rules (their admin is the admin key).
    assert f"deposited 100: log entry 1; account {account.key_id} balance 100" in done.stdout
    done = veriml("ledger", "stake", "60", "--key", str(account_file), "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"]["stake"] == 60
    # The account key also comes from the environment, as request signing keys do.
    done = veriml("ledger", "unstake", "10", env=env | {"VERIML_CLIENT_KEY": str(account_file)})
    assert done.returncode == 0, done.stderr
    assert [(a, s) for a, s, _ in fake.requests] == [
        ("deposit", admin[0].key_id),
        ("stake", account.key_id),
        ("unstake", account.key_id),
    ]
    shown = veriml("ledger", "state", "--coordinator", url, "--json")
    assert json.loads(shown.stdout) == fake.state.to_json()
    table = veriml("ledger", "state", env=env)
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if account.key_id[:12] in line)
    assert [cell.strip() for cell in row.split("│")[2:6]] == ["40", "50", "10", "0"]


def test_a_deposit_signed_by_another_key_is_refused_exit_1(
    coordinator: tuple[Coordinator, str], tmp_path: Path
) -> None:
    fake, url = coordinator
    _, other = _key_file(tmp_path / "other.key")
    done = veriml("ledger", "deposit", "someone", "5", "--key", str(other), "-c", url)
    assert done.returncode == 1
    assert "signed by the ledger's admin key" in done.stderr
    assert done.stderr.count("\n") == 1
    assert fake.state.size == 1  # nothing minted: only the rules' state entry is logged


@pytest.mark.parametrize(
    "args",
    [
        ("ledger", "stake", "0", "--key", "k"),
        ("ledger", "stake", "-3", "--key", "k"),
        ("ledger", "unstake", "ten", "--key", "k"),
        ("ledger", "stake", "5"),
        ("ledger", "deposit", "acct", "5"),
        ("ledger", "state", "--size", "-1"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    done = veriml(*args, env={"VERIML_URL": "http://127.0.0.1:1"})
    assert done.returncode == 2, done.stderr


def test_an_unreadable_key_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "bad.key").write_text("not a key")
    done = veriml("ledger", "stake", "5", "--key", str(tmp_path / "bad.key"), "-c", "http://x")
    assert done.returncode == 2
    assert "error:" in done.stderr


def test_an_unreachable_coordinator_exits_3(tmp_path: Path) -> None:
    done = veriml("ledger", "state", "--coordinator", "http://127.0.0.1:1")
    assert done.returncode == 3  # could not reach the service (docs/sdk.md, "Exit codes")
    assert "unreachable" in done.stderr


# -- veriml log audit: the ledger fold --------------------------------------------------------

SIGNER = NoteSigner("test.veriml.local/ledger-log", generate_key())


def _publish(folder: Path, entries: list[bytes]) -> str:
    if folder.exists():
        shutil.rmtree(folder)
    for path, data in build_tiles(entries).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    root = root_from_leaf_hashes([leaf_hash(e) for e in entries])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoint").write_bytes(
        sign_checkpoint(Checkpoint(SIGNER.name, len(entries), root), [SIGNER])
    )
    return str(folder)


A, B = ALICE.key_id, BOB.key_id
LEDGER = [
    state_entry(LedgerState()).to_bytes(),  # the rules, with the test ledger's admin
    deposit(ALICE, 100).to_bytes(),
    deposit(BOB, 7, memo="grant").to_bytes(),
    stake(ALICE, 60, at=1).to_bytes(),
    unstake(ALICE, 20, at=1).to_bytes(),
]
"""A veriml log's ledger: the rules, two deposits the admin signed, alice's own stake and
unstake (tests/_ledger.py builds every entry with its signed request)."""


def _audit(log: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return veriml("log", "audit", log, "--vkey", SIGNER.vkey, *extra)


def test_audit_folds_the_ledger_and_prints_its_digest(tmp_path: Path) -> None:
    log = _publish(tmp_path / "log", LEDGER)
    done = _audit(log, "--json")
    assert done.returncode == 0, done.stderr
    ledger = json.loads(done.stdout)["ledger"]
    assert ledger["digest"] == fold(LEDGER).digest().to_text()
    assert (ledger["accounts"], ledger["open_disputes"], ledger["coordinator"]) == (2, 0, None)
    human = _audit(log)
    assert f"state {fold(LEDGER).digest().to_text()}" in human.stdout


def test_audit_matches_the_coordinators_state_at_the_audited_size(tmp_path: Path) -> None:
    log = _publish(tmp_path / "log", LEDGER)
    fake = Coordinator(generate_key(), fold(LEDGER))
    with serve(fake.app) as url:
        done = _audit(log, "--coordinator", url)
        assert done.returncode == 0, done.stderr
        assert f"equal to {url}'s" in done.stdout
        # A coordinator whose view differs fails the audit, naming the first account.
        lie = fake.state.to_json()
        lie["accounts"][B]["balance"] = 8
        fake.lie = lie
        done = veriml(
            "log", "audit", log, "--vkey", SIGNER.vkey, env={"VERIML_URL": url}
        )  # fmt: skip
    assert done.returncode == 1
    assert "ledger:" in done.stderr
    assert f"account={B}" in done.stderr
    assert "members=balance" in done.stderr
    # One line (the progress bar, transient, may leave an empty one behind).
    assert len([line for line in done.stderr.splitlines() if line.strip()]) == 1


def test_an_entry_the_ledger_refuses_fails_the_audit_and_keeps_the_state(tmp_path: Path) -> None:
    state = tmp_path / "audit.json"
    log = _publish(tmp_path / "log", LEDGER[:3])
    assert _audit(log, "--state", str(state)).returncode == 0
    before = state.read_bytes()
    overdraw = stake(BOB, 8, at=1).to_bytes()  # bob signed it, but holds 7
    log = _publish(tmp_path / "log", [*LEDGER[:3], overdraw])
    done = _audit(log, "--state", str(state))
    assert done.returncode == 1
    assert "ledger:" in done.stderr
    assert "index=3" in done.stderr
    assert state.read_bytes() == before


def test_a_log_that_is_not_a_veriml_log_has_no_ledger_unless_asked(tmp_path: Path) -> None:
    log = _publish(tmp_path / "log", [b"entry 0", b"entry 1"])
    done = _audit(log)
    assert done.returncode == 0, done.stderr
    assert "no ledger" in done.stdout
    assert json.loads(_audit(log, "--json").stdout)["ledger"] is None
    assert _audit(log, "--ledger").returncode == 1
    # Once a veriml log, every entry must fold: a foreign entry later on fails the audit.
    mixed = _publish(tmp_path / "mixed", [*LEDGER, b"entry 5"])
    done = _audit(mixed)
    assert done.returncode == 1
    assert f"index={len(LEDGER)}" in done.stderr


def test_no_ledger_with_a_coordinator_is_a_usage_error(tmp_path: Path) -> None:
    log = _publish(tmp_path / "log", LEDGER)
    assert _audit(log, "--no-ledger", "--coordinator", "http://127.0.0.1:1").returncode == 2
    assert json.loads(_audit(log, "--no-ledger", "--json").stdout)["ledger"] is None


# -- the SDK methods behind the commands ------------------------------------------------------


def test_sdk_ledger_moves_check_amounts_and_keys_before_sending(
    coordinator: tuple[Coordinator, str], admin: tuple[SigningKey, Path]
) -> None:
    from veriml.client import Client
    from veriml.core.errors import FormatError, KeyFileError

    fake, url = coordinator
    with Client(url, verify=False) as unsigned:
        with pytest.raises(KeyFileError):
            unsigned.stake(5)
        for bad in (0, -1, True, 2.5, 1 << 63):
            with pytest.raises(FormatError):
                unsigned.deposit("acct", bad, admin[0])  # type: ignore[arg-type]
        with pytest.raises(FormatError):
            unsigned.deposit("", 5, admin[0])
        with pytest.raises(FormatError):
            unsigned.ledger_state(-1)
    assert fake.requests == []


def test_the_async_client_moves_the_same_funds(
    coordinator: tuple[Coordinator, str], admin: tuple[SigningKey, Path]
) -> None:
    import asyncio

    from veriml.client import AsyncClient

    fake, url = coordinator
    node = generate_key()

    async def moves() -> dict[str, Any]:
        async with AsyncClient(url, verify=False, key=node) as client:
            await client.deposit(node.key_id, 30, admin[0], memo="seed")
            await client.stake(20)
            await client.unstake(5)
            return await client.ledger_state()

    state = asyncio.run(moves())
    assert state["accounts"][node.key_id]["stake"] == 15
    action, signer, deposited = fake.requests[0]
    assert (action, signer) == ("deposit", admin[0].key_id)
    assert (deposited.to, deposited.amount, deposited.memo) == (node.key_id, 30, "seed")
    assert [(a, s, r.amount) for a, s, r in fake.requests[1:]] == [
        ("stake", node.key_id, 20),
        ("unstake", node.key_id, 5),
    ]
