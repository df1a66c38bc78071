"""Where the SDK finds its coordinator and pins the log key: explicit, environment, network.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from veriml.client import (
    Client,
    NetworkFile,
    pin_log_key,
    read_network_file,
    resolve_url,
    write_network_file,
)
from veriml.client._config import pin_witnesses
from veriml.core.errors import FormatError, NotFoundError, VerificationError
from veriml.core.keys import generate_key
from veriml.tlog import NoteSigner
from veriml.tlog.cosignature import CosignatureSigner

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
    with pytest.raises(NotFoundError):
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


WITNESS = CosignatureSigner("w.example/w1", generate_key()).vkey
OTHER_WITNESS = CosignatureSigner("w.example/w2", generate_key()).vkey


def test_network_file_names_its_witnesses_and_reads_files_written_before_them(
    tmp_path: Path,
) -> None:
    network = NetworkFile("http://x", VKEY, (), (WITNESS,), 1)
    write_network_file(tmp_path, network)
    assert read_network_file(tmp_path) == network
    body = json.loads((tmp_path / "network.json").read_text())
    assert (body["witnesses"], body["witness_quorum"]) == ([WITNESS], 1)
    (tmp_path / "network.json").write_text(json.dumps({"url": "http://x", "log_vkey": VKEY}))
    old = read_network_file(tmp_path)
    assert old is not None
    assert (old.witnesses, old.witness_quorum) == ((), 0)
    for bad in ({"witnesses": "w"}, {"witnesses": [WITNESS], "witness_quorum": 2}):
        (tmp_path / "network.json").write_text(
            json.dumps({"url": "http://x", "log_vkey": VKEY, **bad})
        )
        with pytest.raises(FormatError):
            read_network_file(tmp_path)


def test_a_log_key_from_network_json_brings_its_witnesses_unless_the_caller_names_some(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VERIML_LOG_VKEY", raising=False)
    write_network_file(tmp_path, NetworkFile("http://x", VKEY, (), (WITNESS,), 1))
    witnesses, quorum = pin_witnesses(None, (), 0, tmp_path)
    assert ([w.vkey for w in witnesses], quorum) == ([WITNESS], 1)
    # The caller's own witnesses win, with the caller's quorum.
    witnesses, quorum = pin_witnesses(None, (OTHER_WITNESS,), 0, tmp_path)
    assert ([w.vkey for w in witnesses], quorum) == ([OTHER_WITNESS], 0)
    # A key pinned elsewhere says nothing about the local network's witnesses.
    assert pin_witnesses(VKEY, (), 0, tmp_path) == ((), 0)
    monkeypatch.setenv("VERIML_LOG_VKEY", VKEY)
    assert pin_witnesses(None, (), 0, tmp_path) == ((), 0)


def test_a_default_client_of_a_witnessed_network_requires_its_witness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VERIML_LOG_VKEY", raising=False)
    monkeypatch.delenv("VERIML_URL", raising=False)
    write_network_file(tmp_path, NetworkFile("http://x", VKEY, (), (WITNESS,), 1))
    with Client(home=tmp_path) as client:
        assert [w.vkey for w in client.witnesses] == [WITNESS]
        assert client.quorum == 1
    with Client(home=tmp_path, log_vkey=VKEY) as client:
        assert (client.witnesses, client.quorum) == ((), 0)
