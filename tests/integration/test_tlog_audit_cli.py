"""``veriml log prove | verify-proof | audit`` and ``veriml witness new`` over a static tile tree,
through the root app as a user calls it (options and environment variables)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from veriml.cli.app import app
from veriml.core.errors import LogInconsistencyError, RootMismatchError, SignatureError
from veriml.tlog.cosignature import CosignatureVerifier

GO_VKEY = "example.com/log+9d2609c6+AbHE3xwXzOkKA81MBX/HTU4u4k3f4qjJxf2NCkWh8ILz"


@pytest.fixture
def tree(vectors_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(vectors_dir / "go-tlog-tiles", tmp_path / "tree"))


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, BaseException | None]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.exception


def test_prove_then_verify_proof_offline(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.tlog-proof"
    code, _, exc = run("log", "prove", tree.as_uri(), "123", "--out", str(out), "--vkey", GO_VKEY)
    assert (code, exc) == (0, None)
    entry = tmp_path / "entry"
    entry.write_bytes(b"entry 123")
    code, stdout, exc = run(
        "log", "verify-proof", str(out), "--entry", str(entry), "--json",
        env={"VERIML_LOG_VKEY": GO_VKEY},
    )  # fmt: skip
    assert (code, exc) == (0, None)
    assert json.loads(stdout)["index"] == 123
    entry.write_bytes(b"entry 124")
    code, _, exc = run("log", "verify-proof", str(out), "--vkey", GO_VKEY, "--entry", str(entry))
    assert isinstance(exc, RootMismatchError)
    assert exc.exit_code == 1


def test_verify_proof_takes_the_vkey_from_a_file(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.tlog-proof"
    run("log", "prove", str(tree), "7", "--out", str(out))
    vkey_file = tmp_path / "log.vkey"
    vkey_file.write_text(GO_VKEY + "\n")
    code, stdout, exc = run("log", "verify-proof", str(out), "--vkey", str(vkey_file))
    assert (code, exc) == (0, None)
    assert "OK" in stdout


def test_verify_proof_with_a_quorum_nobody_met_fails(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.tlog-proof"
    run("log", "prove", str(tree), "7", "--out", str(out))
    code, w_vkey, _ = run(
        "witness", "new", "--name", "w.example/1", "--key-out", str(tmp_path / "w")
    )
    assert code == 0
    CosignatureVerifier.from_vkey(w_vkey.strip())
    assert (tmp_path / "w").stat().st_mode & 0o777 == 0o600
    _, _, exc = run(
        "log", "verify-proof", str(out), "--vkey", GO_VKEY, "--witness", w_vkey.strip(),
        "--quorum", "1",
    )  # fmt: skip
    assert isinstance(exc, SignatureError)


def test_audit_reports_and_remembers(tree: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    code, stdout, exc = run(
        "log", "audit", str(tree), "--vkey", GO_VKEY, "--state", str(state), "--json"
    )
    assert (code, exc) == (0, None)
    report = json.loads(stdout)
    assert (report["size"], report["entries"], report["tiles"]) == (1000, 1000, 5)
    assert json.loads(state.read_text())["size"] == 1000
    # The state claims a bigger tree than the log now shows: a rollback.
    doc = json.loads(state.read_text())
    doc["size"] = 2000
    state.write_text(json.dumps(doc))
    _, _, exc = run("log", "audit", str(tree), "--vkey", GO_VKEY, "--state", str(state))
    assert isinstance(exc, LogInconsistencyError)
    assert exc.exit_code == 1


def test_audit_with_the_wrong_key_fails(tree: Path) -> None:
    other = "example.com/log+00000000+AbHE3xwXzOkKA81MBX/HTU4u4k3f4qjJxf2NCkWh8ILz"
    _, _, exc = run("log", "audit", str(tree), "--vkey", other)
    assert exc is not None
    assert exc.exit_code == 2  # a vkey whose id does not match its key is bad input


def test_witness_serve_without_a_name_is_a_usage_error(tmp_path: Path) -> None:
    from veriml.core.keys import generate_key

    generate_key().save(tmp_path / "k")
    code, _, _ = run("witness", "serve", "--key", str(tmp_path / "k"), "--log", GO_VKEY)
    assert code == 2
