"""The coordinator's randomness beacon (coordinator/nodes/beacon.py): epochs committed in the log
before they are used, each key revealed two epochs later, draws that follow from the keys, a
restart that continues the logged epoch."""

from __future__ import annotations

import time
from pathlib import Path

from _coordinator import running_coordinator
from veriml.ledger.entries import BeaconEntry, parse_entry
from veriml.protocol.draw import beacon_commitment, draw_secret


def _beacons(app: object) -> list[BeaconEntry]:
    log = app.state.coordinator.log  # type: ignore[attr-defined]
    entries = [parse_entry(e) for e in log.entries(0, log.size)]
    return [e for e in entries if isinstance(e, BeaconEntry)]


def _wait_for_epochs(app: object, count: int, timeout: float = 30.0) -> list[BeaconEntry]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        beacons = _beacons(app)
        if len(beacons) >= count:
            return beacons[:count]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} epochs began")


def test_each_epoch_is_committed_before_use_and_revealed_two_epochs_later(
    tmp_path: Path,
) -> None:
    with running_coordinator(tmp_path / "home", beacon_interval=0.2) as (_, app):
        beacons = _wait_for_epochs(app, 4)
        first = app.state.coordinator.beacon.current()
    draw = first.draw("request-1")
    assert draw == first.draw("request-1")  # one draw per request and epoch
    assert draw.secret == draw_secret(first.key, "request-1")
    assert [b.epoch for b in beacons] == [0, 1, 2, 3]
    # Whatever epoch runs now, its key was committed in its own beacon entry.
    assert _committed(first.number, first.key, beacons) or first.number >= len(beacons)
    # Epochs 0 and 1 reveal nothing; epoch e reveals epoch e - 2's key.
    assert [b.reveal is None for b in beacons] == [True, True, False, False]
    for beacon in beacons[2:]:
        committed = beacons[beacon.epoch - 2].commitment
        assert beacon.reveal is not None
        assert beacon_commitment(beacon.reveal) == committed
    assert beacons[2].reveal is not None
    assert beacons[0].commitment == beacon_commitment(beacons[2].reveal)


def _committed(number: int, key: bytes, beacons: list[BeaconEntry]) -> bool:
    return number < len(beacons) and beacons[number].commitment == beacon_commitment(key)


def test_a_restarted_coordinator_continues_the_logged_epoch(tmp_path: Path) -> None:
    with running_coordinator(tmp_path / "home", beacon_interval=600) as (_, app):
        before = app.state.coordinator.beacon.current()
    with running_coordinator(tmp_path / "home", beacon_interval=600) as (_, app):
        after = app.state.coordinator.beacon.current()
        assert len(_beacons(app)) == 1
    assert after == before
