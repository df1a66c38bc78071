"""Where the SDK finds its coordinator and pins the log key: explicit, environment, network.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from veriml.client import (
    NetworkFile,
    pin_log_key,
    read_network_file,
    resolve_url,
    write_network_file,
)
from veriml.core.errors import NotFound, VerificationError
from veriml.core.keys import generate_key
from veriml.tlog import NoteSigner

VKEY = NoteSigner("a.example/log", generate_key()).vkey
OTHER = NoteSigner("b.example/log", generate_key()).vkey


def test_network_file_round_trips_and_is_absent_before_written(tmp_path: Path) -> None:
    assert read_network_file(tmp_path) is None
    network = NetworkFile("http://127.0.0.1:8700", VKEY, ({"id": "n", "url": "u", "pid": 1},))
    write_network_file(tmp_path, network)
    assert read_network_file(tmp_path) == network
    assert [p.name for p in tmp_path.iterdir()] == ["network.json"]  # no temporary left


def test_url_precedence_is_argument_then_environment_then_network_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VERIML_URL", raising=False)
    with pytest.raises(NotFound):
        resolve_url(None, tmp_path)
    write_network_file(tmp_path, NetworkFile("http://file:1/", VKEY))
    assert resolve_url(None, tmp_path) == "http://file:1"
    monkeypatch.setenv("VERIML_URL", "http://env:2")
    assert resolve_url(None, tmp_path) == "http://env:2"
    assert resolve_url("http://arg:3", tmp_path) == "http://arg:3"


def test_log_key_precedence_and_refusal_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VERIML_LOG_VKEY", raising=False)
    with pytest.raises(VerificationError) as caught:
        pin_log_key(None, tmp_path)
    assert caught.value.check == "log-key"
    write_network_file(tmp_path, NetworkFile("http://x", VKEY))
    assert pin_log_key(None, tmp_path).name == "a.example/log"
    monkeypatch.setenv("VERIML_LOG_VKEY", OTHER)
    assert pin_log_key(None, tmp_path).name == "b.example/log"
    assert pin_log_key(VKEY, tmp_path).name == "a.example/log"
    with pytest.raises(VerificationError):
        pin_log_key("not a key", tmp_path)
