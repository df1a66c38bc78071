"""Where the SDK finds its settings, its coordinator, the log key it pins and the witnesses it
requires.

Settings (:class:`ClientSettings`: ``home``, ``url``, ``log_vkey``, ``cache_dir``) are read by
``pydantic-settings`` from, first to last: ``VERIML_<KEY>`` environment variables, a ``.env``
file, a secrets directory (``$VERIML_SECRETS_DIR``, one file per key), and the TOML config
file (:func:`config_file`, written by ``veriml config set``). They live in the user's
directories (``platformdirs``), never in the working directory, so the pinned log key does not
depend on where you stand (docs/sdk.md, "Configuration").

The coordinator URL comes from the caller, the ``url`` setting, or ``HOME/network.json``
(written by ``veriml up``; ``HOME`` is :func:`default_home`). The log key is pinned from
the caller, the ``log_vkey`` setting or that same file, and never learnt from the coordinator:
a client that asked the coordinator for the key would trust the coordinator for everything.
A key pinned from the file comes with the file's witnesses and quorum (the local network's
witness), unless the caller names witnesses itself.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs

from veriml.core.errors import Check, FormatError, NotFoundError, VerificationError
from veriml.tlog.cosignature import CosignatureVerifier
from veriml.tlog.note import NoteVerifier
from veriml.verify.evidence import parse_log_key

if TYPE_CHECKING:
    from veriml.client._settings import ClientSettings

__all__ = [
    "NETWORK_FILE",
    "SETTINGS_KEYS",
    "NetworkFile",
    "cache_dir",
    "client_settings",
    "config_file",
    "default_home",
    "pin_log_key",
    "pin_witnesses",
    "read_network_file",
    "resolve_url",
    "write_network_file",
]

NETWORK_FILE = "network.json"
MAX_NETWORK_FILE = 1 << 20


APP_NAME = "veriml"
SETTINGS_KEYS = ("home", "url", "log_vkey", "cache_dir")
"""The settings' names: keys of the config file, ``VERIML_<KEY>`` in the environment."""


def config_file() -> Path:
    """The TOML config file: ``$VERIML_CONFIG``, else ``config.toml`` in the user's config
    directory (``~/.config/veriml/config.toml`` on Linux, ``~/Library/Application
    Support/veriml/config.toml`` on macOS)."""
    explicit = os.environ.get("VERIML_CONFIG")
    if explicit:
        return Path(explicit)
    return platformdirs.user_config_path(APP_NAME) / "config.toml"


def client_settings() -> ClientSettings:
    """The settings as they stand now (read afresh on every call: cheap, and never stale)."""
    # Imported here: pydantic-settings costs more to import than the rest of the SDK's
    # start-up, and only a caller that leaves a setting to the defaults needs it.
    from veriml.client._settings import ClientSettings

    secrets = os.environ.get("VERIML_SECRETS_DIR") or None
    return ClientSettings(_secrets_dir=secrets)  # type: ignore[call-arg]


def default_home() -> Path:
    """The local network's folder: the ``home`` setting (``$VERIML_HOME``, the config file's
    ``home``), else ``veriml`` in the user's data directory (``~/.local/share/veriml``)."""
    return client_settings().home or platformdirs.user_data_path(APP_NAME)


def cache_dir() -> Path:
    """The SDK's cache folder (models pulled to check tolerance answers, the checkpoints each
    log was seen at): the ``cache_dir`` setting (``$VERIML_CACHE_DIR``), else ``veriml`` in
    the user's cache directory (``$XDG_CACHE_HOME/veriml`` or ``~/.cache/veriml`` on Linux)."""
    return client_settings().cache_dir or platformdirs.user_cache_path(APP_NAME)


@dataclass(frozen=True, slots=True)
class NetworkFile:
    """``HOME/network.json``: ``{"url", "log_vkey", "nodes": [{"id", "url", "pid"}],
    "witnesses": ["<cosignature/v1 vkey>", ...], "witness_quorum": K}``.

    ``witnesses`` are the keys of the witnesses that cosign the log's checkpoints and
    ``witness_quorum`` how many cosignatures a client requires (both optional when read: a
    file written before them has none)."""

    url: str
    log_vkey: str
    nodes: tuple[dict[str, Any], ...] = field(default=())
    witnesses: tuple[str, ...] = field(default=())
    witness_quorum: int = 0

    def __post_init__(self) -> None:
        quorum = self.witness_quorum
        if isinstance(quorum, bool) or not isinstance(quorum, int):
            raise FormatError("network.json witness_quorum must be an integer")
        if not 0 <= quorum <= len(self.witnesses):
            raise FormatError(
                "network.json witness_quorum must be between 0 and the number of witnesses",
                quorum=quorum,
                witnesses=len(self.witnesses),
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "log_vkey": self.log_vkey,
            "nodes": [dict(n) for n in self.nodes],
            "witnesses": list(self.witnesses),
            "witness_quorum": self.witness_quorum,
        }

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
        witnesses = obj.get("witnesses", [])
        if not isinstance(witnesses, list) or not all(isinstance(w, str) for w in witnesses):
            raise FormatError("network.json witnesses must be a list of verifier keys")
        quorum = obj.get("witness_quorum", 0)
        return cls(obj["url"], obj["log_vkey"], tuple(nodes), tuple(witnesses), quorum)


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
    """The coordinator URL: ``url``, the ``url`` setting (``$VERIML_URL``), or the local
    network's."""
    if url:
        return url.rstrip("/")
    configured = client_settings().url
    if configured:
        return configured.rstrip("/")
    network = read_network_file(home)
    if network is not None:
        return network.url.rstrip("/")
    raise NotFoundError(
        "no coordinator URL: pass one, set VERIML_URL or the url setting (veriml config set), "
        "or start a local network (veriml up)",
        home=str(home if home is not None else default_home()),
    )


def pin_log_key(log_vkey: str | NoteVerifier | None, home: Path | None = None) -> NoteVerifier:
    """The pinned log key: ``log_vkey``, the ``log_vkey`` setting (``$VERIML_LOG_VKEY``), or
    the local network's."""
    if isinstance(log_vkey, NoteVerifier):
        return log_vkey
    text = log_vkey or client_settings().log_vkey
    if not text:
        network = read_network_file(home)
        text = network.log_vkey if network is not None else None
    if not text:
        # Learning the key from the coordinator would make the coordinator the trust anchor.
        raise VerificationError(
            "no pinned log key: pass log_vkey, set VERIML_LOG_VKEY, or use a local network",
            check=Check.LOG_KEY,
        )
    return parse_log_key(text)


def pin_witnesses(
    log_vkey: str | NoteVerifier | None,
    witnesses: tuple[str | CosignatureVerifier, ...] = (),
    quorum: int = 0,
    home: Path | None = None,
) -> tuple[tuple[CosignatureVerifier, ...], int]:
    """The witnesses whose cosignatures a client requires, and how many.

    ``witnesses`` when the caller names any. Otherwise, when the log key itself comes from the
    local network's file (no ``log_vkey``, no ``log_vkey`` setting), the file's witnesses and
    ``witness_quorum`` (``quorum`` when the caller gives one): a client of ``veriml up``
    requires its witness by default. Else none.
    """
    if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 0:
        raise FormatError("quorum is a non-negative integer", got=str(quorum)[:40])
    if witnesses or log_vkey or client_settings().log_vkey:
        return witness_verifiers(witnesses), quorum
    network = read_network_file(home)
    if network is None or not network.witnesses:
        return (), quorum
    try:
        chosen = witness_verifiers(network.witnesses)
    except FormatError as exc:
        raise FormatError(
            "network.json lists a witness key that does not parse", reason=exc.message
        ) from exc
    return chosen, quorum or network.witness_quorum


def witness_verifiers(
    witnesses: tuple[str | CosignatureVerifier, ...],
) -> tuple[CosignatureVerifier, ...]:
    """Witness keys given as verifier objects or vkey strings."""
    return tuple(
        w if isinstance(w, CosignatureVerifier) else CosignatureVerifier.from_vkey(w)
        for w in witnesses
    )
