from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from veriml.core import load_private_key, load_public_key


def veriml(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veriml", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def test_key_new_writes_a_private_key_0600_and_a_public_key(tmp_path: Path) -> None:
    out = tmp_path / "node.key"
    done = veriml("key", "new", "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert load_private_key(out).key_id == info["key_id"]
    assert load_public_key(Path(f"{out}.pub")).key_id == info["key_id"]
    assert "PRIVATE" not in done.stdout + done.stderr


def test_ec_key_with_passphrase_from_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "publisher.key"
    done = veriml(
        "key",
        "new",
        "--type",
        "ec",
        "--out",
        str(out),
        "--passphrase-env",
        "PW",
        env={"PW": "s3cret"},
    )
    assert done.returncode == 0, done.stderr
    assert load_private_key(out, passphrase=b"s3cret").kind == "ec"
    assert "s3cret" not in done.stdout + done.stderr


def test_errors_are_one_line_without_traceback_and_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "k"
    out.write_text("existing")
    done = veriml("key", "new", "--out", str(out))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "overwrite" in lines[0]
    assert out.read_text() == "existing"


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    out = tmp_path / "k"
    out.write_text("existing")
    done = veriml("--verbose", "key", "new", "--out", str(out))
    assert done.returncode != 0
    assert "Traceback" in done.stderr


def test_unknown_key_type_is_a_usage_error(tmp_path: Path) -> None:
    done = veriml("key", "new", "--type", "rsa", "--out", str(tmp_path / "k"))
    assert done.returncode == 2
    assert not (tmp_path / "k").exists()
