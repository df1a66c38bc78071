"""The keys a local network makes once under its home (docs/sdk.md, "The local network"): the
log key (what ``veriml log new`` writes), a key per witness (what ``veriml witness new``
writes), a key per node operator, and the coordinator's public key the nodes pin from disk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from veriml.client._children import Child
from veriml.core.errors import NodeUnavailableError

__all__ = [
    "LOG_ORIGIN",
    "WITNESS_NAME",
    "log_key",
    "operator_keys",
    "read_log_key",
    "witness_key",
    "write_coordinator_pub",
]

LOG_ORIGIN = "veriml.local/coordinator"
"""The local log's origin (the coordinator's default) unless ``$VERIML_LOG_ORIGIN`` sets one."""
WITNESS_NAME = "veriml.local/witness-{}"


def log_key(data: Path, env: Mapping[str, str]) -> tuple[str, str]:
    """The log's origin and verifier key, from the coordinator's key sidecar in ``data``; the
    key is made first if absent (the files ``veriml log new`` writes), so the witnesses can
    trust the log before the coordinator starts."""
    from veriml.core.keys import generate_key
    from veriml.tlog.note import NoteSigner

    if not (data / "log.key.json").exists():
        data.mkdir(parents=True, exist_ok=True)
        origin = env.get("VERIML_LOG_ORIGIN") or LOG_ORIGIN
        secret = env.get("VERIML_KEY_PASSPHRASE")
        key = generate_key("ed25519")
        key.save(data / "log.key", passphrase=secret.encode() if secret else None)
        signer = NoteSigner(origin, key)
        body = {"origin": origin, "vkey": signer.vkey}
        (data / "log.key.json").write_text(json.dumps(body, indent=2) + "\n")
    return read_log_key(data)


def read_log_key(data: Path) -> tuple[str, str]:
    """The log's origin and verifier key from the coordinator's own key sidecar on this disk,
    not from what it serves: the log key is pinned from a source the coordinator process
    cannot rewrite later."""
    sidecar = data / "log.key.json"
    try:
        meta = json.loads(sidecar.read_text())
        return str(meta["origin"]), str(meta["vkey"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NodeUnavailableError("unreadable log key sidecar", path=str(sidecar)) from exc


def witness_key(folder: Path, j: int) -> tuple[Path, str]:
    """Witness ``j``'s key file and verifier key, made once (what ``veriml witness new``
    writes: the key, mode 0600, ``.pub`` and ``.vkey``)."""
    from veriml.core.keys import generate_key, load_private_key
    from veriml.tlog.cosignature import CosignatureSigner

    path = folder / f"witness-{j}.key"
    if path.exists():
        key = load_private_key(path, kind="ed25519")
    else:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = generate_key("ed25519")
        key.save(path)
    vkey = CosignatureSigner(WITNESS_NAME.format(j), key).vkey
    path.with_name(path.name + ".vkey").write_text(vkey + "\n")
    return path, vkey


def operator_keys(nodes: Sequence[Child]) -> None:
    """An Ed25519 key per operator account, made once (mode 0600)."""
    from veriml.core.keys import generate_key

    for node in nodes:
        path = node.operator_key
        if path is not None and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            generate_key("ed25519").save(path)


def write_coordinator_pub(data: Path) -> None:
    """``coordinator.pub`` beside the coordinator's key in ``data``: the nodes pin the
    coordinator's job-signing key from this disk (no trust on first use)."""
    from veriml.core.keys import load_private_key

    key = load_private_key(data / "coordinator.key", kind="ed25519")
    (data / "coordinator.pub").write_bytes(key.public.to_pem())
