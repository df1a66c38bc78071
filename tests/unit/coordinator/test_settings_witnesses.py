"""A coordinator's witnesses: ``VKEY=URL`` settings (``VERIML_WITNESSES``,
``VERIML_WITNESS_QUORUM``), and a log that publishes only checkpoints they cosigned, even when
the witness comes up after the coordinator."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from _coordinator import running_coordinator
from _servers import free_port, serve
from veriml.coordinator.keys import load_or_create_keys
from veriml.coordinator.settings import DEFAULT_LOG_ORIGIN, Settings
from veriml.core.errors import FormatError
from veriml.core.keys import generate_key
from veriml.tlog.client import verify_checkpoint_note
from veriml.tlog.cosignature import CosignatureSigner, CosignatureVerifier
from veriml.tlog.note import NoteVerifier
from veriml.tlog.witness import create_witness_app

W1 = CosignatureSigner("w.example/w1", generate_key())
W2 = CosignatureSigner("w.example/w2", generate_key())


def test_witnesses_come_from_the_environment_comma_or_space_separated(tmp_path: Path) -> None:
    env = {
        "VERIML_WITNESSES": f"{W1.vkey}=http://127.0.0.1:1,\n {W2.vkey}=https://w2.example/a",
    }
    settings = Settings.from_env(env, home=tmp_path)
    assert [(k.vkey, url) for k, url in settings.witness_endpoints()] == [
        (W1.vkey, "http://127.0.0.1:1"),
        (W2.vkey, "https://w2.example/a"),
    ]
    assert settings.required_cosignatures == 2  # default: every witness
    quorum = Settings.from_env(env | {"VERIML_WITNESS_QUORUM": "1"}, home=tmp_path)
    assert quorum.required_cosignatures == 1
    # An explicit argument (the CLI's --witness) wins over the variable.
    only = Settings.from_env(env, home=tmp_path, witnesses=(f"{W2.vkey}=http://h:2",))
    assert [k.name for k, _ in only.witness_endpoints()] == ["w.example/w2"]
    none = Settings(home=tmp_path)
    assert (none.witnesses, none.required_cosignatures) == ((), 0)


@pytest.mark.parametrize(
    ("witnesses", "quorum"),
    [
        ((W1.vkey,), None),  # no URL
        ((f"{W1.vkey}=ftp://h",), None),  # not HTTP
        (("w.example/w1+00000000+AAAA=http://h",), None),  # not a cosignature key
        ((f"{W1.vkey}=http://h",), 2),  # more than there are
        ((f"{W1.vkey}=http://h",), -1),
    ],
)
def test_a_bad_witness_setting_is_refused_before_anything_starts(
    tmp_path: Path, witnesses: tuple[str, ...], quorum: int | None
) -> None:
    with pytest.raises(FormatError):
        Settings(home=tmp_path, witnesses=witnesses, witness_quorum=quorum)


def _published(url: str, log_vkey: str, witness: CosignatureVerifier, size: int) -> int:
    """Wait until the coordinator publishes a checkpoint of at least ``size`` cosigned by
    ``witness``; its size."""
    deadline = time.monotonic() + 20
    while True:
        note = httpx.get(url + "/log/checkpoint", timeout=5).content
        signed = verify_checkpoint_note(note, NoteVerifier.from_vkey(log_vkey))
        if signed.checkpoint.size >= size:
            verify_checkpoint_note(
                note, NoteVerifier.from_vkey(log_vkey), witnesses=[witness], quorum=1
            )
            return signed.checkpoint.size
        assert time.monotonic() < deadline, f"published size {signed.checkpoint.size}"
        time.sleep(0.05)


def test_a_coordinator_publishes_only_cosigned_checkpoints_even_if_the_witness_starts_late(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    keys = load_or_create_keys(home / "coordinator", origin=DEFAULT_LOG_ORIGIN)
    log_vkey = keys.log.vkey
    port = free_port()
    witness = f"{W1.vkey}=http://127.0.0.1:{port}"
    app = create_witness_app(tmp_path / "w.db", W1, [NoteVerifier.from_vkey(log_vkey)])
    with running_coordinator(home, witnesses=(witness,)) as (url, coordinator):
        # The coordinator logged its rules and beacon at start; the witness is not up yet, so
        # only the empty tree is published.
        assert coordinator.state.coordinator.log.size > 0
        assert b"\n0\n" in httpx.get(url + "/log/checkpoint").content
        with serve(app, port=port):
            # No new entry: the log offers the checkpoint again and the witness cosigns it.
            size = _published(url, log_vkey, CosignatureVerifier.from_vkey(W1.vkey), 1)
        assert size == coordinator.state.coordinator.log.size
