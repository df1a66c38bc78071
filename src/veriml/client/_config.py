"""Where the SDK finds its coordinator and the log key it pins.

The coordinator URL comes from the caller, ``$VERIML_URL``, or ``HOME/network.json`` (written
by ``veriml up``; ``HOME`` is ``$VERIML_HOME`` or ``./.veriml``). The log key is pinned from
the caller, ``$VERIML_LOG_VKEY`` or that same file, and never learnt from the coordinator:
a client that asked the coordinator for the key would trust the coordinator for everything.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veriml.core.errors import FormatError, NotFound, VerificationError
from veriml.tlog.cosignature import CosignatureVerifier
from veriml.tlog.note import NoteVerifier
from veriml.verify.evidence import parse_log_key

__all__ = [
    "NETWORK_FILE",
    "NetworkFile",
    "cache_dir",
    "default_home",
    "pin_log_key",
    "read_network_file",
    "resolve_url",
    "write_network_file",
]

NETWORK_FILE = "network.json"
MAX_NETWORK_FILE = 1 << 20


def default_home() -> Path:
    """``$VERIML_HOME`` or ``./.veriml``."""
    return Path(os.environ.get("VERIML_HOME") or ".veriml")


def cache_dir() -> Path:
    """The SDK's cache folder in the user's cache directory: ``$VERIML_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/veriml``, else ``~/.cache/veriml`` (models pulled to check tolerance
    answers, the checkpoints each log was seen at)."""
    explicit = os.environ.get("VERIML_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "veriml"


@dataclass(frozen=True, slots=True)
class NetworkFile:
    """``HOME/network.json``: ``{"url", "log_vkey", "nodes": [{"id", "url", "pid"}]}``."""

    url: str
    log_vkey: str
    nodes: tuple[dict[str, Any], ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "log_vkey": self.log_vkey, "nodes": [dict(n) for n in self.nodes]}

    @classmethod
    def from_json(cls, obj: Any) -> NetworkFile:
        if (
            not isinstance(obj, dict)
            or not isinstance(obj.get("url"), str)
            or not isinstance(obj.get("log_vkey"), str)
        ):
            raise FormatError("network.json needs a url and a log_vkey string")
        nodes = obj.get("nodes", [])
        if not isinstance(nodes, list) or not all(isinstance(n, dict) for n in nodes):
            raise FormatError("network.json nodes must be a list of objects")
        return cls(obj["url"], obj["log_vkey"], tuple(nodes))


def read_network_file(home: Path | None = None) -> NetworkFile | None:
    """The local network's file, or ``None`` when there is none."""
    path = (home if home is not None else default_home()) / NETWORK_FILE
    try:
        if path.stat().st_size > MAX_NETWORK_FILE:
            raise FormatError("network.json is too large", path=str(path))
        data = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FormatError("cannot read network.json", path=str(path), reason=exc.strerror) from exc
    try:
        return NetworkFile.from_json(json.loads(data))
    except ValueError as exc:
        raise FormatError("network.json is not JSON", path=str(path)) from exc


def write_network_file(home: Path, network: NetworkFile) -> Path:
    """Write ``HOME/network.json`` atomically: readers see no file or the whole file."""
    path = home / NETWORK_FILE
    fd, tmp = tempfile.mkstemp(prefix=".network.", dir=home)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(network.to_json(), f, indent=2)
            f.write("\n")
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve_url(url: str | None, home: Path | None = None) -> str:
    """The coordinator URL: ``url``, ``$VERIML_URL``, or the local network's."""
    if url:
        return url.rstrip("/")
    env = os.environ.get("VERIML_URL")
    if env:
        return env.rstrip("/")
    network = read_network_file(home)
    if network is not None:
        return network.url.rstrip("/")
    raise NotFound(
        "no coordinator URL: pass one, set VERIML_URL, or start a local network (veriml up)",
        home=str(home if home is not None else default_home()),
    )


def pin_log_key(log_vkey: str | NoteVerifier | None, home: Path | None = None) -> NoteVerifier:
    """The pinned log key: ``log_vkey``, ``$VERIML_LOG_VKEY``, or the local network's."""
    if isinstance(log_vkey, NoteVerifier):
        return log_vkey
    text = log_vkey or os.environ.get("VERIML_LOG_VKEY")
    if not text:
        network = read_network_file(home)
        text = network.log_vkey if network is not None else None
    if not text:
        # Learning the key from the coordinator would make the coordinator the trust anchor.
        raise VerificationError(
            "no pinned log key: pass log_vkey, set VERIML_LOG_VKEY, or use a local network",
            check="log-key",
        )
    return parse_log_key(text)


def witness_verifiers(
    witnesses: tuple[str | CosignatureVerifier, ...],
) -> tuple[CosignatureVerifier, ...]:
    """Witness keys given as verifier objects or vkey strings."""
    return tuple(
        w if isinstance(w, CosignatureVerifier) else CosignatureVerifier.from_vkey(w)
        for w in witnesses
    )
