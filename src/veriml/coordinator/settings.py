"""Coordinator configuration: one frozen :class:`Settings`, from arguments or ``VERIML_*``.

Every field can be given to the constructor (the CLI does) or read from the environment with
:meth:`Settings.from_env`; explicit arguments win. Defaults put everything under ``home``::

    HOME/coordinator/coordinator.key       Ed25519, signs jobs (0600)
    HOME/coordinator/log.key{,.json}       the log's note key and its origin/vkey sidecar
    HOME/coordinator/veriml.db             SQLite: coordinator tables and the log's tables
    HOME/coordinator/blobs/                content-addressed blob store

Limits are checked when the settings are built, so a coordinator never starts with a limit of
zero or a placeholder secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any

from limits import RateLimitItem, parse_many

from veriml.core.errors import FormatError
from veriml.ledger.rules import Rules
from veriml.tlog.cosignature import CosignatureVerifier

__all__ = ["DEFAULT_LOG_ORIGIN", "ENV_PREFIX", "RATE_LIMIT_FAMILIES", "Settings"]

ENV_PREFIX = "VERIML_"
DEFAULT_LOG_ORIGIN = "veriml.local/coordinator"
_PLACEHOLDERS = frozenset({"changeme", "changethis", "secret", "password", "placeholder", "xxx"})
RATE_LIMIT_FAMILIES = ("register", "heartbeat", "publish", "inference", "dispute", "ledger")
"""The route families with a rate limit each (``rate_limit_<family>``)."""
_OFF = frozenset({"0", "off", "none", ""})
# The limits library's synchronous storages (the coordinator calls them from worker threads).
_LIMIT_STORAGES = frozenset(
    {"memory", "memcached", "mongodb", "mongodb+srv"}
    | {f"{db}{kind}" for db in ("redis", "valkey") for kind in ("", "s", "+unix", "+cluster")}
    | {"redis+sentinel", "valkey+sentinel"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """How one coordinator runs. ``Settings(home=Path(".veriml"))`` is a working local one.

    >>> s = Settings(home=Path("/tmp/x"))
    >>> s.db_url
    'sqlite:////tmp/x/coordinator/veriml.db'
    """

    home: Path = field(default_factory=lambda: Path(".veriml"))
    db_url: str = ""
    blobs_url: str = ""
    log_db_url: str = ""
    log_origin: str = DEFAULT_LOG_ORIGIN
    # Passphrase that encrypts the coordinator and log keys on disk (None: unencrypted, 0600).
    key_passphrase: str | None = field(default=None, repr=False)
    # Limits (bytes unless named otherwise).
    max_upload_bytes: int = 8 << 30
    max_files: int = 10_000
    max_path_depth: int = 32
    max_json_bytes: int = 64 << 20
    # Node liveness and jobs (seconds).
    heartbeat_interval: float = 5.0
    job_timeout: float = 60.0
    max_job_attempts: int = 3
    descriptor_max_age: float = 300.0
    # Seconds between the ": keep-alive" comments of an SSE stream while no token flows (a
    # quorum or prefill check running), under the idle timeouts of proxies on the way.
    sse_keepalive: float = 10.0
    # Publications must be requests signed by the publisher key itself (RFC 9421).
    require_signed_publish: bool = True
    # UNSAFE outside development: register model folders without model.sig as *unsigned*
    # models (no publisher, no name: reachable by digest only, marked wherever listed).
    allow_unsigned_publish: bool = False
    log_batch_interval: float = 0.01
    # Ledger rules (docs/ledger.md, "Rules"): integer amounts, fractions in [0, 1]. They are
    # logged in every state entry, so clients and auditors apply the ones in force.
    min_stake: int = 100
    unstake_delay: float = 3600.0
    slash_fraction: float = 0.5
    reward_fraction: float = 0.5
    challenge_bond: int = 10
    fee_per_job: int = 0
    min_reputation: int = -1000
    # Seconds an answer can be challenged (optimistic:W answers: W).
    challenge_window: float = 86_400.0
    # Seconds a dispute party has for each move.
    dispute_timeout: float = 60.0
    # External disputes open at once against one node; more are refused (429) before anything
    # is logged or bonded, so a griefer cannot queue unbounded work against a node.
    max_disputes_per_node: int = 4
    # Seconds each epoch of the randomness beacon lasts (docs/verification.md, "Randomness").
    beacon_interval: float = 600.0
    # Witnesses that cosign each checkpoint before it is published (C2SP tlog-witness), each
    # "VKEY=URL", and how many must cosign it (None: all of them). Without any, checkpoints
    # are published as the log signs them.
    witnesses: tuple[str, ...] = ()
    witness_quorum: int | None = None
    # Rate limits (docs/network.md, "Rate limits"), one per route family: the budget of each
    # client address and, apart, of each signing key, as "N/second|minute|hour|day" (several
    # joined by ";" must all have room); "0" or "off" turns a family's limits off. Past one,
    # the answer is 429 with Retry-After and the route never runs.
    rate_limit_register: str = "20/minute;120/hour"
    rate_limit_heartbeat: str = "3000/minute"
    rate_limit_publish: str = "30/minute"
    rate_limit_inference: str = "1200/minute"
    rate_limit_dispute: str = "120/minute"
    rate_limit_ledger: str = "60/minute"
    # Loopback clients and clients without an IP address (a Unix socket) are this machine's
    # own processes: their per-address budgets are this many times the others' (1: no
    # different from any address). A reverse proxy must forward the client's address
    # (uvicorn's --forwarded-allow-ips), or every client shares the proxy's budget.
    rate_limit_local_factor: int = 100
    # Networks (CIDR) whose addresses have no per-address budget at all (their keys still
    # do), e.g. "127.0.0.0/8" or a trusted gateway's. None by default: the operator's choice.
    rate_limit_exempt: tuple[str, ...] = ()
    # Where the counters live: "memory://" (each replica counts alone, so N replicas allow N
    # times a budget) or a redis://, memcached:// or mongodb:// URL all replicas share.
    rate_limit_storage: str = "memory://"

    def __post_init__(self) -> None:
        home = Path(self.home)
        object.__setattr__(self, "home", home)
        object.__setattr__(self, "witnesses", tuple(self.witnesses))
        self.witness_endpoints()  # every spec parses, or the settings are refused
        quorum = self.witness_quorum
        if quorum is not None and not 0 <= quorum <= len(self.witnesses):
            raise FormatError(
                "witness quorum must be between 0 and the number of witnesses",
                quorum=quorum,
                witnesses=len(self.witnesses),
            )
        base = home / "coordinator"
        if not self.db_url:
            object.__setattr__(self, "db_url", f"sqlite:///{base / 'veriml.db'}")
        if not self.blobs_url:
            object.__setattr__(self, "blobs_url", str(base / "blobs"))
        if not self.log_db_url:
            object.__setattr__(self, "log_db_url", self.db_url)
        positive = {
            "max_upload_bytes": self.max_upload_bytes,
            "max_files": self.max_files,
            "max_path_depth": self.max_path_depth,
            "max_json_bytes": self.max_json_bytes,
            "heartbeat_interval": self.heartbeat_interval,
            "job_timeout": self.job_timeout,
            "max_job_attempts": self.max_job_attempts,
            "descriptor_max_age": self.descriptor_max_age,
        }
        positive["dispute_timeout"] = self.dispute_timeout
        positive["max_disputes_per_node"] = self.max_disputes_per_node
        positive["beacon_interval"] = self.beacon_interval
        positive["sse_keepalive"] = self.sse_keepalive
        bad = {k: v for k, v in positive.items() if not v > 0}
        if bad:
            raise FormatError("coordinator limits must be positive", **bad)
        amounts = {
            "min_stake": self.min_stake,
            "challenge_bond": self.challenge_bond,
            "fee_per_job": self.fee_per_job,
            "unstake_delay": self.unstake_delay,
            "challenge_window": self.challenge_window,
        }
        negative = {k: v for k, v in amounts.items() if v < 0}
        if negative:
            raise FormatError("ledger amounts and delays must be ≥ 0", **negative)
        fractions = {"slash_fraction": self.slash_fraction, "reward_fraction": self.reward_fraction}
        outside = {k: v for k, v in fractions.items() if not 0 <= v <= 1}
        if outside:
            raise FormatError("ledger fractions must be within [0, 1]", **outside)
        object.__setattr__(self, "rate_limit_exempt", tuple(self.rate_limit_exempt))
        self.rate_limits()  # every limit parses, or the settings are refused
        self.rate_limit_networks()
        if self.rate_limit_local_factor < 1:
            raise FormatError(
                "the local rate limit factor must be at least 1",
                got=self.rate_limit_local_factor,
            )
        scheme = self.rate_limit_storage.partition("://")[0]
        if scheme not in _LIMIT_STORAGES:
            raise FormatError(
                "rate limit storage must be a memory://, redis://, memcached:// or mongodb:// URL",
                got=scheme[:40],
            )
        if self.log_batch_interval < 0:
            raise FormatError("log batch interval must be ≥ 0", got=self.log_batch_interval)
        if self.key_passphrase is not None and (
            len(self.key_passphrase) < 8 or self.key_passphrase.lower() in _PLACEHOLDERS
        ):
            raise FormatError(
                "refusing a placeholder or short key passphrase (VERIML_KEY_PASSPHRASE)"
            )

    @property
    def data_dir(self) -> Path:
        """``HOME/coordinator``: keys, the SQLite file and (by default) the blobs."""
        return self.home / "coordinator"

    def rules(self, admin: str) -> Rules:
        """The ledger rules these settings give, with ``admin`` (the coordinator key's id) as
        the account whose signed deposits mint."""
        return Rules.from_fractions(
            admin=admin,
            min_stake=self.min_stake,
            min_reputation=self.min_reputation,
            unstake_delay=self.unstake_delay,
            slash_fraction=self.slash_fraction,
            reward_fraction=self.reward_fraction,
            challenge_bond=self.challenge_bond,
            fee_per_job=self.fee_per_job,
            challenge_window=self.challenge_window,
            dispute_timeout=self.dispute_timeout,
        )

    def witness_endpoints(self) -> tuple[tuple[CosignatureVerifier, str], ...]:
        """Each witness's cosignature key and submission URL, from ``VKEY=URL``."""
        endpoints = []
        for spec in self.witnesses:
            vkey, sep, url = str(spec).partition("=")
            if not sep or not url.startswith(("http://", "https://")):
                raise FormatError("a witness is VKEY=URL (http or https)", got=str(spec)[:80])
            try:
                endpoints.append((CosignatureVerifier.from_vkey(vkey.strip()), url.strip()))
            except FormatError as exc:
                raise FormatError(
                    "a witness key is not a cosignature/v1 verifier key",
                    got=vkey[:80],
                    reason=exc.message,
                ) from exc
        return tuple(endpoints)

    def rate_limits(self) -> dict[str, tuple[RateLimitItem, ...]]:
        """Each route family's limits (an empty tuple: the family is not limited)."""
        out: dict[str, tuple[RateLimitItem, ...]] = {}
        for family in RATE_LIMIT_FAMILIES:
            text = str(getattr(self, f"rate_limit_{family}")).strip()
            if text.lower() in _OFF:
                out[family] = ()
                continue
            try:
                items = tuple(parse_many(text))
            except ValueError as exc:
                raise FormatError(
                    "a rate limit is N/second|minute|hour|day (several joined by ';'), or 0",
                    setting=f"rate_limit_{family}",
                    got=text[:80],
                ) from exc
            if not all(item.amount >= 1 for item in items):
                raise FormatError(
                    "a rate limit allows at least one request (0 turns it off)",
                    setting=f"rate_limit_{family}",
                    got=text[:80],
                )
            out[family] = items
        return out

    def rate_limit_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        """The networks in ``rate_limit_exempt``."""
        try:
            return tuple(ip_network(net, strict=False) for net in self.rate_limit_exempt)
        except ValueError as exc:
            raise FormatError(
                "rate_limit_exempt lists networks (CIDR, as 10.0.0.0/8 or fd00::/8)",
                got=", ".join(self.rate_limit_exempt)[:80],
            ) from exc

    @property
    def required_cosignatures(self) -> int:
        """How many witnesses must cosign a checkpoint before it is published."""
        if self.witness_quorum is None:
            return len(self.witnesses)
        return self.witness_quorum

    @property
    def live_after(self) -> float:
        """A node is live if its last heartbeat is at most this many seconds old."""
        return 3 * self.heartbeat_interval

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``VERIML_<FIELD>`` variables (``VERIML_DB_URL``, ...), then ``overrides``.

        ``VERIML_HOME`` sets ``home``. Overrides that are ``None`` are ignored, so CLI options
        left unset fall back to the environment.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, raw, _CONVERTERS.get(f.name, str))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _words(raw: str) -> tuple[str, ...]:
    """A list in one variable: items separated by commas or white space."""
    return tuple(item for item in re.split(r"[,\s]+", raw) if item)


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "home": Path,
    "max_upload_bytes": int,
    "max_files": int,
    "max_path_depth": int,
    "max_json_bytes": int,
    "heartbeat_interval": float,
    "job_timeout": float,
    "max_job_attempts": int,
    "descriptor_max_age": float,
    "sse_keepalive": float,
    "require_signed_publish": _bool,
    "allow_unsigned_publish": _bool,
    "log_batch_interval": float,
    "min_stake": int,
    "unstake_delay": float,
    "slash_fraction": float,
    "reward_fraction": float,
    "challenge_bond": int,
    "fee_per_job": int,
    "min_reputation": int,
    "dispute_timeout": float,
    "max_disputes_per_node": int,
    "challenge_window": float,
    "beacon_interval": float,
    "witnesses": _words,
    "witness_quorum": int,
    "rate_limit_local_factor": int,
    "rate_limit_exempt": _words,
}


def _convert(name: str, raw: str, convert: Callable[[str], Any]) -> Any:
    try:
        return convert(raw)
    except ValueError as exc:
        raise FormatError(
            "bad value in the environment", variable=ENV_PREFIX + name.upper(), got=raw[:40]
        ) from exc
