"""Operator accounts for tests that start nodes by hand (``LocalNetwork`` does this itself).

A node answers for an operator: an Ed25519 account key it is bound to
(``NodeConfig.operator_key``). Clients refuse answers from operators that are not bonded
(docs/ledger.md), and the coordinator gives their nodes no job, so a test network bonds each
operator: a deposit signed with the coordinator's admin key (its ``coordinator.key``), then a
stake signed with the operator's own key.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from veriml.client import Client
from veriml.core.keys import generate_key, load_private_key

STAKE = 1000  # above the coordinator's default min_stake (100)


def operator_key(path: Path) -> Path:
    """An Ed25519 operator key at ``path``, made once."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        generate_key("ed25519").save(path)
    return path


def bond(url: str, coordinator_home: Path, operators: Iterable[Path], amount: int = STAKE) -> None:
    """Deposit ``amount`` to each operator (signed by the admin key of the coordinator whose
    home is ``coordinator_home``) and stake it (signed by the operator's key)."""
    admin = load_private_key(coordinator_home / "coordinator" / "coordinator.key", kind="ed25519")
    keys = [load_private_key(path, kind="ed25519") for path in dict.fromkeys(operators)]
    with Client(url, verify=False) as client:
        for key in keys:
            client.deposit(key.key_id, amount, admin)
    for key in keys:
        with Client(url, key=key, verify=False) as client:
            client.stake(amount)
