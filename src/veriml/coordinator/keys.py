"""The coordinator's keys on disk, created on first start.

``HOME/coordinator/coordinator.key`` is the Ed25519 key that signs jobs. ``log.key`` is the
log's Ed25519 note key with the sidecar ``log.key.json`` = ``{"origin", "vkey"}``, the same
files ``veriml log new`` writes, so the log can also be served or audited with ``veriml log``.
Private keys are written with mode 0600 (never readable by others, even briefly) and never
printed; only key ids and the log's verifier key are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from veriml.core.errors import KeyFileError
from veriml.core.keys import SigningKey, generate_key, load_private_key
from veriml.tlog.note import NoteSigner

__all__ = ["CoordinatorKeys", "load_or_create_keys"]

COORDINATOR_KEY = "coordinator.key"
LOG_KEY = "log.key"


@dataclass(frozen=True, slots=True)
class CoordinatorKeys:
    """The job-signing key and the log's note signer."""

    coordinator: SigningKey
    log: NoteSigner


def _load_or_create(path: Path, passphrase: bytes | None) -> tuple[SigningKey, bool]:
    if path.exists():
        return load_private_key(path, passphrase=passphrase, kind="ed25519"), False
    key = generate_key("ed25519")
    key.save(path, passphrase=passphrase)
    return key, True


def load_or_create_keys(
    directory: Path, *, origin: str, passphrase: bytes | None = None
) -> CoordinatorKeys:
    """Load ``coordinator.key`` and ``log.key`` from ``directory``, creating absent ones.

    An existing log key keeps the origin of its sidecar: a log's origin never changes, so a
    different ``origin`` argument is refused rather than silently ignored.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError("cannot create the key folder", path=str(directory)) from exc
    coordinator, _ = _load_or_create(directory / COORDINATOR_KEY, passphrase)
    log_path = directory / LOG_KEY
    sidecar = log_path.with_name(LOG_KEY + ".json")
    log_key, created = _load_or_create(log_path, passphrase)
    if created or not sidecar.exists():
        signer = NoteSigner(origin, log_key)
        sidecar.write_text(json.dumps({"origin": origin, "vkey": signer.vkey}, indent=2) + "\n")
        return CoordinatorKeys(coordinator, signer)
    try:
        recorded = str(json.loads(sidecar.read_text())["origin"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise KeyFileError("unreadable log key sidecar", path=str(sidecar)) from exc
    if recorded != origin:
        raise KeyFileError(
            "the log key belongs to another origin",
            path=str(sidecar),
            origin=recorded,
            given=origin,
        )
    return CoordinatorKeys(coordinator, NoteSigner(recorded, log_key))
